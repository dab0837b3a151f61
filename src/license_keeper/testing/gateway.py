"""A gateway that behaves like Kong Gateway 3.15 about its license, to run in a pod as Kong's chart runs Kong.

    python -m license_keeper.testing.gateway [--listen 0.0.0.0:8001] [--notice-interval 86400]

Like Kong in DB-less mode (the Kubernetes default):
- reads ``KONG_LICENSE_DATA`` once, at start (the text, or its base64 as Kong also accepts); a changed Secret
  reaches it only through a restart. Nothing else (no license.json, no KONG_LICENSE_PATH) is read;
- without a valid license (missing, unreadable, or expired past the 30-day grace period) its Admin API is
  read-only: writes answer 403 ``{"message":"Enterprise license missing or expired"}``, except to
  ``/licenses`` and ``/keyring/recover|import|import/raw`` (kong_model has the rules);
- logs Kong's expiry lines (WARN < 90 days, ERR < 30, CRIT in the grace period and after it) at start and
  every ``--notice-interval`` seconds, in nginx's error-log form on stderr. Never the license text, key or
  signature: only the expiry date and a 16-hex fingerprint (sha256 of the document).

Plain HTTP on ``--listen`` (default: the first non-TLS address of ``KONG_ADMIN_LISTEN``, else 0.0.0.0:8001),
as the chart's Admin API is reached inside the pod network. Endpoints:
``GET /`` and ``GET /status`` (``/status/ready``) for probes, ``GET /license/report`` (license_key,
license_expiration_date, deployment_info dbless, kong_version, system_info.hostname), ``GET /metrics``, and
``/licenses`` CRUD with Kong's codes and bodies. It stores no other entities: a permitted write elsewhere
answers POST 201 / PUT and PATCH 200 with the request body plus ``id``, ``created_at`` and ``updated_at``,
DELETE 204; ``GET /<collection>`` is an empty list and anything deeper 404.

Unlike DB-less Kong, which answers 405 on ``/licenses`` (its licenses come through ``/config``), this gateway
takes ``/licenses`` writes into memory, and the newest runs in place of KONG_LICENSE_DATA until restart, as a
license pushed through DB-less ``/config`` does: that is how a test shows Kong 3.15's "uploading a valid license
restores full read-write access". ``/config`` itself is an ordinary write here (not interpreted).

Prints one JSON line on stdout when listening (``address``, ``hostname``, ``kong_version``), then one access
log line per request. SIGTERM or SIGINT: stops at once, exit 0.

Runtime dependencies only (aiohttp and the standard library): it runs in the keeper's image
(tools/image/Containerfile.gateway), where trustme, cryptography and PyYAML are absent.
"""

from __future__ import annotations

import argparse
import asyncio
import binascii
import hashlib
import json
import logging
import os
import socket
import ssl
import sys
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any, TextIO

from aiohttp import web

from license_keeper.license import LicenseError, parse_license
from license_keeper.testing.control import stop_on_signals
from license_keeper.testing.kong_model import (
    BAD_JSON,
    WRITE_METHODS,
    ApiAnswer,
    KongNode,
    added_license_warning,
    license_notice,
    validate_payload,
)

__all__ = ["Gateway", "admin_listen", "read_license_env"]

KONG_VERSION = "3.15.0.0-enterprise-edition"
DEFAULT_LISTEN = "0.0.0.0:8001"
DAY_SECONDS = 86400.0
ACCESS_FORMAT = '%a - - %t "%r" %s %b "%{User-Agent}i"'


def read_license_env(environ: Mapping[str, str]) -> str | None:
    """KONG_LICENSE_DATA as Kong reads it: its base64 decoding when it is base64 (standard or URL-safe),
    else the text itself; None when unset or empty."""
    raw = environ.get("KONG_LICENSE_DATA")
    if not raw:
        return None
    for decode in (binascii.a2b_base64, _urlsafe_b64):
        try:
            return decode(raw.encode("ascii"), strict_mode=True).decode("utf-8")
        except (ValueError, UnicodeError):  # binascii.Error is a ValueError
            continue
    return raw


def _urlsafe_b64(data: bytes, strict_mode: bool) -> bytes:
    return binascii.a2b_base64(data.replace(b"-", b"+").replace(b"_", b"/"), strict_mode=strict_mode)


def admin_listen(environ: Mapping[str, str]) -> str:
    """The first plain-HTTP address of KONG_ADMIN_LISTEN ("0.0.0.0:8001 reuseport, 0.0.0.0:8444 ssl"), else
    0.0.0.0:8001: the chart configures Kong's Admin API through that variable."""
    for entry in environ.get("KONG_ADMIN_LISTEN", "").split(","):
        address, *flags = entry.split() or ["off"]
        if address != "off" and "ssl" not in flags:
            return address
    return DEFAULT_LISTEN


def split_listen(listen: str) -> tuple[str, int]:
    """``host:port`` (IPv6 in brackets) as (host, port)."""
    host, sep, port = listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ValueError(f"--listen wants HOST:PORT, not {listen!r}")
    return host.strip("[]") or "0.0.0.0", int(port)


def fingerprint(document: str) -> str:
    """The first 16 hex characters of sha256 over the document, as license.License.fingerprint."""
    return hashlib.sha256(document.encode("utf-8", "surrogatepass")).hexdigest()[:16]


class NginxLog:
    """Kong's error log: ``2026/12/01 10:00:00 [warn] 1#0: message`` lines on a stream (stderr)."""

    def __init__(self, stream: TextIO | None = None, clock: Callable[[], float] = time.time) -> None:
        self.stream = stream
        self.clock = clock

    def __call__(self, level: str, message: str) -> None:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S", time.gmtime(self.clock()))
        stream = self.stream or sys.stderr
        stream.write(f"{stamp} [{level}] {os.getpid()}#0: {message}\n")
        stream.flush()


class Gateway:
    """The gateway's state and Admin API. ``env_license`` is KONG_LICENSE_DATA as read at start."""

    def __init__(
        self,
        env_license: str | None,
        *,
        hostname: str | None = None,
        log: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.node = KongNode(database="off", env_license=env_license, version=KONG_VERSION, in_memory_licenses=True)
        self.hostname = hostname or socket.gethostname()
        self.log = log or NginxLog(clock=clock)
        self.clock = clock
        self.requests = 0
        self._runner: web.AppRunner | None = None
        self.address: str | None = None

    # --- what it logs ------------------------------------------------------------------------------------

    def describe_license(self) -> str:
        """The running license for a log line: source, fingerprint, expiry or problem; never its content."""
        source, doc = self.node.active()
        if doc is None:
            return "no license (KONG_LICENSE_DATA not set)"
        origin = "KONG_LICENSE_DATA" if source == "env" else "/licenses (in memory until restart)"
        lic = self.node.active_license()
        problem = validate_payload(doc, self.node.rejected_signatures)
        if lic is None or problem is not None:
            return f"an invalid license from {origin} (sha256 {fingerprint(doc)}: {problem})"
        return f"license {lic.fingerprint} from {origin}, expires {lic.expiration_date.isoformat()}"

    def log_license(self) -> None:
        """The start-up (or after-change) line, then Kong's expiry notice if one is due."""
        now = self.clock()
        state = self.node.license_state(now)
        mode = "read-write" if state in ("valid", "grace") else "read-only (Enterprise license missing or expired)"
        self.log("notice", f"[gateway] running {self.describe_license()}; license {state}; Admin API {mode}")
        if state == "missing":
            # Kong's own line when it finds no license at all
            self.log("notice", "[license-helpers] could not decode license JSON: No license found")
        self.log_notice()

    def log_notice(self) -> None:
        """Kong's daily line (license_helpers.lua: log_license_state), when the license asks for one."""
        now = self.clock()
        lic = self.node.active_license()
        if lic is None or self.node.license_state(now) == "invalid":
            return  # Kong keeps no license it could not validate, so it has no expiry to speak of
        notice = license_notice(lic, now)
        if notice is not None:
            level, message = notice
            self.log(level, f"[lua] license_helpers.lua: log_license_state(): {message}, context: ngx.timer")

    async def notify(self, interval: float) -> None:
        """Repeat Kong's expiry line every ``interval`` seconds (a day in Kong) while running."""
        while True:
            await asyncio.sleep(interval)
            self.log_notice()

    # --- serving -----------------------------------------------------------------------------------------

    async def start(
        self, host: str, port: int, access_log: logging.Logger | None = None, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Listen on host:port (plain HTTP, as Kong's chart serves the admin port in the pod network; with
        ``ssl_context``, HTTPS, as a benchmark of many pods behind an admin-tls port needs)."""
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._runner = web.AppRunner(app, shutdown_timeout=0.2, access_log=access_log, access_log_format=ACCESS_FORMAT)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, ssl_context=ssl_context).start()
        bound = self._runner.addresses[0]
        shown = f"[{bound[0]}]" if ":" in bound[0] else bound[0]
        self.address = f"{'https' if ssl_context else 'http'}://{shown}:{bound[1]}"
        return self.address

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Gateway:
        await self.start("127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        if request.method == "GET" and request.path == "/metrics":
            return web.Response(text=self.node.metrics(), content_type="text/plain")
        answer = await self._answer(request)
        if answer.body is None:
            return web.Response(status=answer.status)
        return web.json_response(answer.body, status=answer.status)

    async def _answer(self, request: web.Request) -> ApiAnswer:
        method, path, now = request.method, request.path.rstrip("/") or "/", int(self.clock())
        if method not in WRITE_METHODS:
            return self._read(path, now, dict(request.query))
        refused = self.node.refuse_unlicensed(method, path, now)
        if refused is not None:
            return refused
        body: Any = None
        if method != "DELETE" and request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return BAD_JSON
        if path == "/licenses" or path.startswith("/licenses/"):
            return self._write_license(method, path, body, now)
        return _stored_nowhere(method, path, body, now)

    def _read(self, path: str, now: int, query: dict[str, str]) -> ApiAnswer:
        node = self.node
        if path == "/":
            return ApiAnswer(200, node.root(self.hostname))
        if path in ("/status", "/status/ready"):
            return ApiAnswer(200, self._status())
        if path == "/license/report":
            return ApiAnswer(200, node.report(now, self.hostname))
        parts = path.strip("/").split("/")
        if parts[0] == "licenses" and len(parts) <= 2:
            return node.licenses_call("GET", parts[1] if len(parts) == 2 else None, None, now, query)
        if len(parts) == 1:
            return ApiAnswer(200, {"data": [], "next": None})  # no entities are stored
        return ApiAnswer(404, {"message": "Not found"})

    def _status(self) -> dict[str, Any]:
        return {
            "database": {"reachable": True},
            "server": {"total_requests": self.requests, "connections_active": 1, "connections_accepted": self.requests},
            "configuration_hash": "00000000000000000000000000000000",  # Kong's value before any /config
        }

    def _write_license(self, method: str, path: str, body: Any, now: int) -> ApiAnswer:
        parts = path.strip("/").split("/")
        if len(parts) > 2:
            return ApiAnswer(404, {"message": "Not found"})
        before = self.node.active()
        answer = self.node.licenses_call(method, parts[1] if len(parts) == 2 else None, body, now)
        if answer.status in (200, 201) and isinstance(answer.body, dict):
            self._warn_if_expired(str(answer.body.get("payload", "")), now)
        if self.node.active() != before:
            self.log_license()
        return answer

    def _warn_if_expired(self, document: str, now: int) -> None:
        try:
            warning = added_license_warning(parse_license(document), now)
        except LicenseError:
            return
        if warning is not None:
            self.log("warn", f"[license-helpers] {warning}")


def _stored_nowhere(method: str, path: str, body: Any, now: int) -> ApiAnswer:
    """A permitted write to an entity the gateway does not keep: Kong's status and a plausible entity."""
    if method == "DELETE":
        return ApiAnswer(204, None)
    entity = dict(body) if isinstance(body, dict) else {}
    last = path.strip("/").split("/")[-1]
    entity.setdefault("id", last if method != "POST" and _is_uuid(last) else str(uuid.uuid4()))
    entity.setdefault("created_at", now)
    entity["updated_at"] = now
    return ApiAnswer(201 if method == "POST" else 200, entity)


def _is_uuid(value: str) -> bool:
    try:
        uuid.UUID(value)
    except ValueError:
        return False
    return True


# --- the command ----------------------------------------------------------------------------------------------


def _access_logger() -> logging.Logger:
    """One access line per request on stdout, as Kong's chart sends the admin access log to /dev/stdout."""
    logger = logging.getLogger("license_keeper.testing.gateway.access")
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(logging.Formatter("%(message)s"))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger


async def serve(args: argparse.Namespace, env_license: str | None) -> int:
    gateway = Gateway(env_license)
    stop = stop_on_signals()
    host, port = split_listen(args.listen)
    address = await gateway.start(host, port, _access_logger())
    print(json.dumps({"address": address, "hostname": gateway.hostname, "kong_version": KONG_VERSION}), flush=True)
    gateway.log_license()
    notices = asyncio.create_task(gateway.notify(args.notice_interval))
    try:
        await stop.wait()
    finally:
        notices.cancel()
        await gateway.stop()
    return 0


def _build_parser(environ: Mapping[str, str]) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.gateway",
        description=(
            "A gateway that behaves like Kong Gateway 3.15 (DB-less) about its license: KONG_LICENSE_DATA read "
            "once at start; without a valid license every Admin API write but /licenses answers 403. "
            "Plain HTTP. For tests; see the module's documentation."
        ),
    )
    parser.add_argument(
        "--listen",
        default=admin_listen(environ),
        help="HOST:PORT of the Admin API (default: first plain address of KONG_ADMIN_LISTEN, else 0.0.0.0:8001)",
    )
    parser.add_argument(
        "--notice-interval",
        type=float,
        default=DAY_SECONDS,
        help="seconds between Kong's license expiry log lines (default: a day, as Kong)",
    )
    return parser


def main(argv: list[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    environ = os.environ if environ is None else environ
    args = _build_parser(environ).parse_args(argv)
    split_listen(args.listen)  # a bad address fails here, before anything listens
    # Read once, as Kong does: nothing later looks at the environment again.
    return asyncio.run(serve(args, read_license_env(environ)))


if __name__ == "__main__":
    sys.exit(main())
