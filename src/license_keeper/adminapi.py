"""The Kong Admin API client: the one door to every Kong Admin API the keeper talks to (an I/O edge).

What it promises, so the targets in ``targets.py`` never handle HTTP themselves:

* **One parsed URL decides TLS** (``delivery.AdminUrl``): ``HTTPS://`` is ``https://``. A pod reached at its
  address is verified against a DNS name its certificate holds (the Service's), never with verification off.
* **No credentials in clear**: a Kong-Admin-Token or client certificate never goes to a plain ``http://``
  Admin API unless the options say the network is trusted.
* **Credentials off the event loop, once per configuration**: the files are read in a worker thread at most
  once a second (so a rotated token, certificate or CA is picked up by the next round), and one TLS context
  is built per content of the CA / certificate / key files, in a worker thread, shared by every target and
  every pod that uses the same options. (Parsing the system trust store takes ~25 ms: once per target per
  round, on the loop, froze it for seconds with 100 targets.)
* **Bounded answers**: at most ``MAX_ANSWER_BYTES`` per answer and ``MAX_JSON_CONTAINERS`` objects and arrays
  in it (counted before parsing: 8 MiB of ``{},`` parse into 2.8 million dicts), at most
  ``MAX_LICENSES_BYTES`` of ``/licenses`` pages and ``MAX_ROWS`` rows per round, each row trimmed to the
  fields decisions need.
* **Failures are values**: ``TargetFailure(state, reason)`` with the HTTP status or the kind of failure,
  never a body, a token or license text.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import aiohttp

from .delivery import DEFAULT_GRACE_SECONDS, AdminUrl, DeliveryState, ReportedLicense, shown

__all__ = [
    "IN_CLEAR",
    "MAX_ANSWER_BYTES",
    "MAX_JSON_CONTAINERS",
    "MAX_LICENSES_BYTES",
    "MAX_ROWS",
    "AdminApiOptions",
    "AdminSession",
    "CredentialCache",
    "Credentials",
    "TargetFailure",
    "sends_in_clear",
]

log = logging.getLogger("license_keeper.deliver")

MAX_ANSWER_BYTES = 1024 * 1024  # one answer: a page of 100 rows is ~200 KiB, a report a few KiB
MAX_REPORT_BYTES = 256 * 1024  # /license/report, asked of every pod at once (bounded concurrency)
MAX_JSON_CONTAINERS = 10_000  # '{' and '[' in one answer (strings' own braces count too: an upper bound)
MAX_LICENSES_BYTES = 8 * 1024 * 1024  # all /licenses pages of one round
MAX_ROWS = 2000  # /licenses rows kept per round (a real cluster has a handful)
MAX_PAYLOAD_CHARS = 64 * 1024  # a license document is ~1 KiB; a longer payload is kept as "" (never ours)
PAGE_SIZE = 100  # Kong's default page size
CREDENTIALS_REREAD_SECONDS = 1.0  # files are re-read at most this often (every round, in practice)
USER_AGENT = "license-keeper"


class TargetFailure(Exception):
    """A target could not be asked or written; ``reason`` is fit for logs (no body, no license text)."""

    def __init__(self, state: DeliveryState, reason: str) -> None:
        super().__init__(reason)
        self.state = state
        self.reason = reason


@dataclass(frozen=True)
class AdminApiOptions:
    token_file: Path | None = None
    client_cert_file: Path | None = None
    client_key_file: Path | None = None
    ca_file: Path | None = None
    timeout: float = 10.0
    grace: float = DEFAULT_GRACE_SECONDS  # a write not shown by then is drift
    trusted_network: bool = False  # the token / client certificate may go to a plain http:// Admin API
    # The name a pod's certificate is verified against when a pod is reached at its address (admin-svc);
    # "" means the Service's own DNS name, <service>.<namespace>.svc.
    server_name: str = ""
    # Shared by every target built with these options: one TLS context per configuration.
    credentials: CredentialCache = field(default_factory=lambda: CredentialCache(), compare=False, repr=False)

    @property
    def has_credentials(self) -> bool:
        return self.token_file is not None or self.client_cert_file is not None


IN_CLEAR = (
    "refusing to send the Kong-Admin-Token or client certificate in clear to a plain http:// Admin API "
    "(use https://, or --deliver-admin-trusted-network if the network to the gateways is trusted)"
)


def sends_in_clear(options: AdminApiOptions, tls: bool) -> bool:
    return not tls and options.has_credentials and not options.trusted_network


# --- credentials ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Credentials:
    token: str | None
    context: ssl.SSLContext | None  # None until a TLS address asked for one


@dataclass(frozen=True)
class _Files:
    token: str | None
    tls_key: str  # sha256 over the CA, certificate and key files' content: the TLS configuration


def _read_files(options: AdminApiOptions) -> _Files:
    """Read the credential files (in a worker thread). Raises OSError / ValueError."""
    token = options.token_file.read_text().strip() if options.token_file is not None else None
    digest = hashlib.sha256()
    for path in (options.ca_file, options.client_cert_file, options.client_key_file):
        digest.update(b"\0" if path is None else b"\1" + path.read_bytes())
    return _Files(token, digest.hexdigest())


def _build_context(options: AdminApiOptions) -> ssl.SSLContext:
    """The TLS context for these options (in a worker thread): verification always on."""
    ctx = ssl.create_default_context(cafile=str(options.ca_file) if options.ca_file else None)
    if options.client_cert_file is not None:
        ctx.load_cert_chain(options.client_cert_file, options.client_key_file)
    return ctx


class CredentialCache:
    """The token and one TLS context per configuration, loaded off the event loop and shared."""

    def __init__(self, clock: Any = time.monotonic) -> None:
        self._clock = clock
        self._lock: asyncio.Lock | None = None
        self._files: _Files | None = None
        self._failure: str | None = None
        self._read_at: float | None = None
        self._context: tuple[str, ssl.SSLContext] | None = None  # (tls_key, context)
        self.contexts_built = 0

    async def load(self, options: AdminApiOptions, *, tls: bool) -> Credentials:
        if self._lock is None:
            self._lock = asyncio.Lock()
        async with self._lock:
            files = await self._fresh_files(options)
            context = None
            if tls:
                if self._context is None or self._context[0] != files.tls_key:
                    try:
                        built = await asyncio.to_thread(_build_context, options)
                    except (OSError, ssl.SSLError, ValueError) as exc:
                        raise _credentials_failure(exc) from None
                    self.contexts_built += 1
                    self._context = (files.tls_key, built)
                context = self._context[1]
            return Credentials(files.token, context)

    async def _fresh_files(self, options: AdminApiOptions) -> _Files:
        now = self._clock()
        if self._read_at is None or now - self._read_at >= CREDENTIALS_REREAD_SECONDS:
            try:
                self._files, self._failure = await asyncio.to_thread(_read_files, options), None
            except (OSError, ValueError) as exc:
                self._files, self._failure = None, _credentials_failure(exc).reason
            self._read_at = now
        if self._files is None:
            raise TargetFailure(DeliveryState.ERROR, self._failure or "cannot load Admin API credentials")
        return self._files


def _credentials_failure(exc: BaseException) -> TargetFailure:
    return TargetFailure(DeliveryState.ERROR, f"cannot load Admin API credentials: {type(exc).__name__}")


# --- one round's session ------------------------------------------------------------------------------------


def _trim_row(row: dict[str, Any]) -> dict[str, Any]:
    """Only what decisions read: id, payload (long ones dropped), created_at, updated_at."""
    payload = row.get("payload")
    return {
        "id": row.get("id") if isinstance(row.get("id"), str | int) else None,
        "payload": payload if isinstance(payload, str) and len(payload) <= MAX_PAYLOAD_CHARS else "",
        "created_at": row.get("created_at"),
        "updated_at": row.get("updated_at"),
    }


def _deployment(info: Any) -> str:
    """``deployment_info`` of /license/report ({"type": "dbless"} or a plain string); "" when absent."""
    value = info.get("type") if isinstance(info, dict) else info
    return value if value in ("traditional", "hybrid", "dbless") else ""


class AdminSession:
    """One round's HTTP session to one or many Admin APIs that share options (an admin Service's pods).

    ``async with AdminSession(options, credentials):`` then ``rows``, ``put``, ``report``, ``role`` on any
    ``AdminUrl``; ``server_hostname`` verifies a pod reached at its address against another name.
    """

    def __init__(
        self, options: AdminApiOptions, credentials: Credentials, *, connections: int = 32, keep_alive: bool = True
    ) -> None:
        self.options = options
        self.credentials = credentials
        # Many pods (keep_alive=False): each connection is closed after its answer. Kept alive, every pod's
        # connection would stay open until the round ends, each TLS one with asyncio's 256 KiB buffer: 300 pods
        # held ~80 MiB, and the allocator kept it.
        self._session = aiohttp.ClientSession(
            headers={"Accept": "application/json", "User-Agent": USER_AGENT},
            timeout=aiohttp.ClientTimeout(total=options.timeout),
            connector=aiohttp.TCPConnector(limit=connections, force_close=not keep_alive),
            trust_env=False,
        )
        self.requests = 0

    async def __aenter__(self) -> AdminSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self._session.close()

    def _headers(self, url: AdminUrl) -> dict[str, str]:
        if sends_in_clear(self.options, url.tls):
            raise TargetFailure(DeliveryState.ERROR, IN_CLEAR)
        token = self.credentials.token
        return {"Kong-Admin-Token": token} if token else {}

    def _tls(self, url: AdminUrl) -> ssl.SSLContext | bool:
        if not url.tls:
            return False
        if self.credentials.context is None:  # a programming error: the caller loaded no TLS context
            raise RuntimeError("an https Admin API needs credentials loaded with tls=True")
        return self.credentials.context

    async def call(
        self,
        url: AdminUrl,
        method: str,
        path: str,
        body: Any = None,
        *,
        server_hostname: str | None = None,
        limit: int = MAX_ANSWER_BYTES,
    ) -> tuple[int, Any, int]:
        """(status, JSON body or None, bytes read). Raises TargetFailure for anything that is not Kong's."""
        what = f"{method} {path.split('?')[0]}"
        headers = self._headers(url)
        self.requests += 1
        extra: dict[str, Any] = {"server_hostname": server_hostname} if url.tls and server_hostname else {}
        try:
            async with self._session.request(
                method, url.join(path), json=body, headers=headers, ssl=self._tls(url), allow_redirects=False, **extra
            ) as resp:
                raw = await _read_capped(resp, limit)
                status, ctype = resp.status, resp.headers.get("Content-Type", "")
        except TimeoutError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: timed out after {self.options.timeout:g} s") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: TLS: {_certificate_problem(exc)}") from None
        except aiohttp.ClientSSLError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: TLS handshake failed") from None
        except aiohttp.ClientConnectorError:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: unreachable (cannot connect)") from None
        except (aiohttp.ClientError, OSError) as exc:
            raise TargetFailure(DeliveryState.ERROR, f"{what}: transport error ({type(exc).__name__})") from None
        return status, _check_answer(what, status, ctype, raw, limit), len(raw)

    async def rows(self, url: AdminUrl, *, server_hostname: str | None = None) -> list[dict[str, Any]]:
        """Every /licenses row (all pages), trimmed; bounded in rows and bytes per round."""
        rows: list[dict[str, Any]] = []
        read = 0
        path: str | None = f"/licenses?size={PAGE_SIZE}"
        while path is not None:
            status, body, size = await self.call(url, "GET", path, server_hostname=server_hostname)
            read += size
            if status != 200 or not isinstance(body, dict) or not isinstance(body.get("data"), list):
                raise TargetFailure(DeliveryState.ERROR, f"GET /licenses: unexpected answer (HTTP {status})")
            rows += [_trim_row(r) for r in body["data"] if isinstance(r, dict)]
            if len(rows) > MAX_ROWS:
                raise TargetFailure(DeliveryState.ERROR, f"GET /licenses: more than {MAX_ROWS} rows")
            if read > MAX_LICENSES_BYTES:
                raise TargetFailure(DeliveryState.ERROR, f"GET /licenses: more than {MAX_LICENSES_BYTES} bytes")
            nxt = body.get("next")
            path = nxt if isinstance(nxt, str) and nxt.startswith("/licenses") else None
        return rows

    async def put(
        self, url: AdminUrl, row_id: str, document: str, label: str, *, server_hostname: str | None = None
    ) -> None:
        from urllib.parse import quote

        status, _, _ = await self.call(
            url, "PUT", f"/licenses/{quote(row_id)}", {"payload": document}, server_hostname=server_hostname
        )
        if status in (200, 201):
            log.info("delivered the license to %s (PUT /licenses/%s)", label, row_id)
            return
        if status == 405:
            raise TargetFailure(
                DeliveryState.UNSUPPORTED,
                "Kong refuses /licenses writes (405: DB-less or data plane); deliver with konglicense or restart",
            )
        if status == 400:
            raise TargetFailure(
                DeliveryState.ERROR, "PUT /licenses: Kong refused the license (HTTP 400 schema violation)"
            )
        if status == 409:
            raise TargetFailure(DeliveryState.PENDING, "PUT /licenses: another row took the license meanwhile (409)")
        raise TargetFailure(DeliveryState.ERROR, f"PUT /licenses: unexpected HTTP {status}")

    async def report(self, url: AdminUrl, *, server_hostname: str | None = None) -> ReportedLicense:
        status, body, _ = await self.call(
            url, "GET", "/license/report", server_hostname=server_hostname, limit=MAX_REPORT_BYTES
        )
        lic = body.get("license") if isinstance(body, dict) else None
        if status != 200 or not isinstance(body, dict) or not isinstance(lic, dict):
            raise TargetFailure(
                DeliveryState.ERROR, f"GET /license/report: unexpected answer (HTTP {status}; Kong Enterprise?)"
            )
        system = body.get("system_info")
        return ReportedLicense(
            _text(lic.get("license_key")),
            _text(lic.get("license_expiration_date")),
            deployment=_deployment(body.get("deployment_info")),
            hostname=shown(system.get("hostname")) if isinstance(system, dict) else "",
        )

    async def role(self, url: AdminUrl, *, server_hostname: str | None = None) -> tuple[str, str]:
        """(database, role) from ``GET /``'s configuration: ("off", ...) is DB-less, role "data_plane" a DP."""
        status, body, _ = await self.call(url, "GET", "/", server_hostname=server_hostname)
        conf = body.get("configuration") if isinstance(body, dict) else None
        if status != 200 or not isinstance(conf, dict):
            raise TargetFailure(DeliveryState.ERROR, f"GET /: unexpected answer (HTTP {status})")
        return shown(conf.get("database")), shown(conf.get("role"))


def _text(value: Any) -> str:
    """A report field as text; a value too long to be a license key or date is cut (compared only)."""
    return value[:256] if isinstance(value, str) else ""


def _certificate_problem(exc: aiohttp.ClientConnectorCertificateError) -> str:
    """Untrusted issuer or a name the certificate does not hold (never the certificate's own text)."""
    cause = getattr(exc, "certificate_error", None)
    code = getattr(cause, "verify_code", None)
    if code == 62:  # X509_V_ERR_HOSTNAME_MISMATCH (62) / IP address mismatch (64)
        return "server certificate does not hold the expected name"
    if code == 64:
        return "server certificate does not hold the address"
    return "server certificate not trusted"


async def _read_capped(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The body, but no more than ``limit`` + 1 bytes (a proxy could stream forever)."""
    raw = bytearray()
    while chunk := await resp.content.read(65536):
        raw += chunk
        if len(raw) > limit:
            break
    return bytes(raw)


def _check_answer(what: str, status: int, ctype: str, raw: bytes, limit: int = MAX_ANSWER_BYTES) -> Any:
    """The JSON body, or a failure for answers that are not Kong's (never quoting the body)."""
    if status in (401, 403):
        raise TargetFailure(
            DeliveryState.ERROR, f"{what}: HTTP {status} (check the Kong-Admin-Token and its RBAC role)"
        )
    if status >= 500 or status == 429:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} from the Admin API")
    if 300 <= status < 400:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} redirect (not followed)")
    if len(raw) > limit:
        raise TargetFailure(DeliveryState.ERROR, f"{what}: answer larger than {limit} bytes")
    if status == 204 or not raw:
        return None
    if "json" not in ctype.lower():
        kind = shown(ctype.split(";")[0].strip()) or "no content type"
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} answer is not JSON ({kind})")
    if raw.count(b"{") + raw.count(b"[") > MAX_JSON_CONTAINERS:
        raise TargetFailure(
            DeliveryState.ERROR, f"{what}: HTTP {status} answer has more than {MAX_JSON_CONTAINERS} objects"
        )
    try:
        return json.loads(raw)
    except (ValueError, RecursionError):
        raise TargetFailure(DeliveryState.ERROR, f"{what}: HTTP {status} answer is not valid JSON") from None
