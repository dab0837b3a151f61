"""A fault-injecting stand-in for a Kong Gateway Enterprise Admin API (the license parts), for tests.

In-process::

    async with KongStandIn(tls_dir=tmp_path, token="s3cret") as kong:
        kong.address                      # https://127.0.0.1:PORT, server cert from kong.tls.ca_file
                                          # (host="10.255.255.7": listens there, the cert covers it)
        kong.node.env_license = doc       # KONG_LICENSE_DATA: hides /licenses rows
        await kong.set_mode("stall")

    cp = KongStandIn(tls=tls, role="control_plane"); dp = KongStandIn(tls=tls, role="data_plane", database="off")
    cp.attach(dp)                         # dp runs the newest of the rows the CP has (hybrid mode)

In another process::

    python -m license_keeper.testing.kong serve --dir DIR --control-port 0 [--host 10.255.255.7]

Serves over HTTPS on 127.0.0.1 (or ``host``): ``GET /``, ``GET /license/report``, ``GET /metrics`` and
``/licenses`` CRUD with Kong's status codes and error bodies (see kong_model). A client certificate is optional unless
``require_client_cert``; with ``token`` set, requests need ``Kong-Admin-Token`` (else 401, like Kong RBAC).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from license_keeper.testing.control import control_app, serve_until_stopped, stop_on_signals
from license_keeper.testing.kong_model import BAD_JSON, ApiAnswer, KongNode
from license_keeper.testing.konnect_tls import TLSFront, check_mode, follow_mode, https_url, shut_down
from license_keeper.testing.tls import TLSMaterial

__all__ = ["KongStandIn"]

MODES: dict[str, str] = {
    "normal": "behave like Kong",
    "html": "answer 200 text/html (a login page of a proxy in front of Kong)",
    "server_error": "answer 500 with Kong's error body",
    "bad_gateway": "answer 502 text/html (a proxy whose upstream is down)",
    "unauthorized": "answer 401 as Kong RBAC does without valid credentials",
    "forbidden": "answer 403 as Kong RBAC does for a token without permission",
    "stall": "accept the request and never answer",
    "slow": "answer normally after slow_seconds",
    "closed": "stop listening (connection refused); listens again on the same port in another mode",
    "tls_untrusted": "serve a certificate from a CA the client does not trust",
}


class KongStandIn:
    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        tls: TLSMaterial | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        token: str | None = None,
        require_client_cert: bool = False,
        role: str = "traditional",
        database: str = "postgres",
        mode: str = "normal",
        slow_seconds: float = 2.0,
        clock: Callable[[], float] = time.time,
        address_in_cert: bool = True,
    ) -> None:
        self.host = host
        # address_in_cert=False: a gateway pod's certificate names its Service, not the pod's address (the
        # client verifies it against that name), so material that does not cover ``host`` is fine then.
        self.tls = TLSMaterial.given(tls, tls_dir, "KongStandIn", host if address_in_cert else "127.0.0.1")
        self.token = token
        self.require_client_cert = require_client_cert
        self.node = KongNode(role=role, database=database)
        self._check_mode(mode)
        self.mode = mode
        self.slow_seconds = slow_seconds
        self.clock = clock
        self.port = port
        self.requests: list[tuple[str, str]] = []  # (method, path) in arrival order
        self.statuses: Counter[int] = Counter()
        self.tokens_seen: list[str | None] = []
        self.data_planes: list[KongStandIn] = []
        self.propagation_paused = False
        self._runner: web.AppRunner | None = None
        self._front: TLSFront | None = None
        self._release = asyncio.Event()
        self._untrusted: TLSMaterial | None = None

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return https_url(self.host, self.port)

    async def __aenter__(self) -> KongStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def _ssl_context(self) -> ssl.SSLContext:
        ctx = self.tls.server_ssl_context()
        if not self.require_client_cert:
            ctx.verify_mode = ssl.CERT_OPTIONAL
        if self.mode == "tls_untrusted":
            if self._untrusted is None:
                # same host, other CA: the client must fail on trust, not on the name
                self._untrusted = TLSMaterial.create(self.tls.directory / "untrusted", [self.host])
            ctx.load_cert_chain(self._untrusted.server_cert_file, self._untrusted.server_key_file)
        return ctx

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        self._front = TLSFront(self._ssl_context(), self._runner.addresses[0][1], self.port, self.host)
        if self.mode != "closed":
            await asyncio.to_thread(self._front.listen)
            self.port = self._front.port

    async def stop(self) -> None:
        self._release.set()
        await shut_down(self._front, self._runner)
        self._runner = None

    # --- control ---------------------------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: str) -> None:
        check_mode(mode, MODES)

    async def set_mode(self, mode: str) -> None:
        self._check_mode(mode)
        old, self.mode = self.mode, mode
        if self._front is None:
            return
        self._front._ctx = self._ssl_context()  # new connections only
        self._front.drop_connections()
        self.port = await follow_mode(self._front, old, mode) or self.port
        if old == "stall":
            self._release.set()
            self._release = asyncio.Event()

    def attach(self, data_plane: KongStandIn) -> None:
        """Hybrid mode: ``data_plane`` receives this control plane's /licenses rows (now and on every change)."""
        if self.node.role != "control_plane" or data_plane.node.role != "data_plane":
            raise ValueError("attach a role=data_plane stand-in to a role=control_plane stand-in")
        self.data_planes.append(data_plane)
        self.propagate()

    def propagate(self) -> None:
        """Send the rows to the data planes, as the CP does on each config push (unless paused)."""
        if self.propagation_paused:
            return
        for dp in self.data_planes:
            dp.node.rows = {k: type(v)(**vars(v)) for k, v in self.node.rows.items()}

    def writes(self) -> list[tuple[str, str]]:
        return [(m, p) for m, p in self.requests if m in ("POST", "PUT", "PATCH", "DELETE")]

    def stats(self) -> dict[str, Any]:
        source, _ = self.node.active()
        lic = self.node.active_license()
        return {
            "mode": self.mode,
            "requests": len(self.requests),
            "writes": len(self.writes()),
            "rows": len(self.node.rows),
            "active_source": source,
            "active_expiration_date": lic.expiration_date.isoformat() if lic else None,
        }

    # --- serving ---------------------------------------------------------------------------------------

    def _authorized(self, request: web.Request) -> bool:
        supplied = request.headers.get("Kong-Admin-Token")
        self.tokens_seen.append(supplied)
        return self.token is None or supplied == self.token

    async def _fault(self, request: web.Request) -> web.StreamResponse | None:
        mode = self.mode
        if mode == "html":
            return web.Response(status=200, text="<html><body>Sign in</body></html>", content_type="text/html")
        if mode == "server_error":
            return web.json_response({"message": "An unexpected error occurred"}, status=500)
        if mode == "bad_gateway":
            return web.Response(status=502, text="<html>502 Bad Gateway</html>", content_type="text/html")
        if mode == "unauthorized":
            return web.json_response({"message": "Invalid credentials. Token or User credentials required"}, status=401)
        if mode == "forbidden":
            return web.json_response(
                {
                    "message": f"{request.headers.get('Kong-Admin-User', 'user')}, you do not have permissions "
                    f"to {request.method.lower()} this resource"
                },
                status=403,
            )
        if mode in ("stall", "closed"):
            await self._release.wait()
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if mode == "slow":
            await asyncio.sleep(self.slow_seconds)
        return None

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((request.method, request.path))
        response = await self._fault(request)
        if response is None:
            response = (
                await self._serve(request)
                if self._authorized(request)
                else web.json_response(
                    {"message": "Invalid credentials. Token or User credentials required"}, status=401
                )
            )
        self.statuses[response.status] += 1
        return response

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        node, now, path, method = self.node, int(self.clock()), request.path.rstrip("/") or "/", request.method
        if path == "/" and method == "GET":
            return web.json_response(node.root("kong-stand-in"))
        if path == "/license/report" and method == "GET":
            return web.json_response(node.report(now))
        if path == "/metrics" and method == "GET":
            return web.Response(text=node.metrics(), content_type="text/plain")
        parts = path.strip("/").split("/")
        if parts[0] != "licenses" or len(parts) > 2:
            return web.json_response({"message": "Not found"}, status=404)
        answer = await self._licenses(request, method, parts[1] if len(parts) == 2 else None, now)
        if answer.status in (200, 201, 204) and method != "GET" and node.role == "control_plane":
            self.propagate()
        if answer.body is None:
            return web.Response(status=answer.status)
        return web.json_response(answer.body, status=answer.status)

    async def _licenses(self, request: web.Request, method: str, row_id: str | None, now: int) -> ApiAnswer:
        body: Any = None
        if method in ("POST", "PUT", "PATCH"):
            try:
                body = await request.json()
            except ValueError:
                return BAD_JSON
        return self.node.licenses_call(method, row_id, body, now, dict(request.query))


# --- another process ----------------------------------------------------------------------------------------


def _control_app(kong: KongStandIn) -> web.Application:
    async def set_mode(body: Any) -> dict[str, Any]:
        await kong.set_mode(str(body["mode"]))
        return kong.stats()

    async def set_env_license(body: Any) -> dict[str, Any]:
        kong.node.env_license = body.get("document") if isinstance(body, dict) else None
        return kong.stats()

    async def stats(_: Any) -> dict[str, Any]:
        return kong.stats()

    return control_app(
        {("POST", "/mode"): set_mode, ("PUT", "/env-license"): set_env_license, ("GET", "/stats"): stats}
    )


async def _serve(args: argparse.Namespace, token: str | None, env_license: str | None) -> int:
    kong = KongStandIn(
        tls_dir=Path(args.dir),
        port=args.port,
        host=args.host,
        token=token,
        require_client_cert=args.require_client_cert,
        database=args.database,
        mode=args.mode,
    )
    kong.node.env_license = env_license
    stop = stop_on_signals()
    async with kong:
        info: dict[str, Any] = {"address": kong.address, **kong.tls.paths()}
        await serve_until_stopped(stop, info, _control_app(kong), args.control_port)
    return 0


def _build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {name:<15} {text}" for name, text in MODES.items())
    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.kong",
        description="A fault-injecting stand-in for the Kong Gateway Enterprise Admin API (licenses), for tests.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "Endpoints: GET /, GET /license/report, GET /metrics, GET|POST /licenses,\n"
            "GET|PUT|PATCH|DELETE /licenses/{id} (Kong's status codes and error bodies).\n"
            "Active license: --env-license-file (KONG_LICENSE_DATA) > newest /licenses row.\n\n"
            "Control endpoint (plain HTTP on 127.0.0.1:--control-port; 0 picks a free port):\n"
            '  POST /mode {"mode": MODE}          switch behaviour\n'
            '  PUT  /env-license {"document": D}  set (or with null clear) KONG_LICENSE_DATA\n'
            "  GET  /stats\n\n"
            f"Modes:\n{modes}"
        ),
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run until SIGINT/SIGTERM; prints one JSON line when ready")
    serve.add_argument("--dir", required=True, help="directory for the TLS files (created when missing)")
    serve.add_argument("--port", type=int, default=0)
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (the server certificate covers it; default 127.0.0.1)"
    )
    serve.add_argument("--token-file", default=None, help="require this Kong-Admin-Token")
    serve.add_argument("--require-client-cert", action="store_true")
    serve.add_argument("--database", default="postgres", choices=["postgres", "off"], help="off = DB-less (405)")
    serve.add_argument("--env-license-file", default=None, help="a license served as KONG_LICENSE_DATA")
    serve.add_argument("--mode", default="normal", choices=list(MODES))
    serve.add_argument("--control-port", type=int, default=None)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    token = Path(args.token_file).read_text().strip() if args.token_file else None
    env_license = Path(args.env_license_file).read_text() if args.env_license_file else None
    return asyncio.run(_serve(args, token, env_license))


if __name__ == "__main__":
    sys.exit(main())
