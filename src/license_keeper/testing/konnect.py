"""A fault-injecting stand-in for the Konnect license API, for tests (yours too).

In-process::

    async with KonnectStandIn(tls_dir=tmp_path) as konnect:
        client = KonnectClient(konnect.address, konnect.control_plane_id,
                               konnect.tls.client_cert_file, konnect.tls.client_key_file,
                               ca_file=konnect.tls.ca_file)
        konnect.set_mode("blackhole")

In another process::

    python -m license_keeper.testing.konnect serve --dir DIR --control-port 0

It is a real HTTPS server on 127.0.0.1 that requires and verifies a client certificate, and serves only
``GET /kic/api/control-planes/{id}/v1/licenses`` (everything else is 404).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import json
import select
import signal
import socket
import ssl
import sys
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from license_keeper.konnect import licenses_path
from license_keeper.license import LicenseRecord
from license_keeper.testing.licenses import make_document, make_record
from license_keeper.testing.tls import TLSMaterial

__all__ = ["MODES", "KonnectStandIn", "StandInControl", "main"]

MODES: dict[str, str] = {
    "license": "serve the current license (404 when none is set)",
    "not_found": "answer 404 (Konnect: this control plane has no license)",
    "server_error": "answer 500",
    "unauthorized": "answer 401",
    "unexpected_status": "answer 418",
    "closed": "stop listening; the same port listens again when switched to another mode",
    "blackhole": "accept the connection and the request, never answer",
    "slow": "answer with the license after slow_seconds",
    "garbage": "answer 200 with a body that is not JSON",
    "oversized": "answer 200 with a valid-JSON body larger than 64 KiB",
    "missing_fields": "answer 200 with items[0] lacking id and updated_at",
}

_KEEP = object()


class _TLSFront:
    """Terminates mutual TLS on blocking sockets in threads and relays plain bytes to the HTTP backend.

    Why not asyncio's TLS: when an asyncio server rejects a client certificate it drops the connection
    without flushing the TLS alert, so the client only sees a reset. Real servers send the alert
    ("certificate required", "unknown ca"), and the client must be tested against that.
    """

    def __init__(self, ctx: ssl.SSLContext, backend_port: int, port: int) -> None:
        self._ctx = ctx
        self._backend_port = backend_port
        self.port = port
        self._listener: socket.socket | None = None
        self._accepting: threading.Thread | None = None
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.client_serials: list[str] = []
        self.handshake_failures = 0

    def listen(self) -> None:
        if self._listener is not None:
            return
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.1)
        self.port = sock.getsockname()[1]
        self._listener = sock
        stop = threading.Event()
        self._accepting = threading.Thread(
            target=self._accept_loop, args=(sock, stop), name="konnect-standin-accept", daemon=True
        )
        self._accepting_stop = stop
        self._accepting.start()

    def unlisten(self) -> None:
        sock, self._listener = self._listener, None
        if sock is None:
            return
        self._accepting_stop.set()
        if self._accepting is not None:
            self._accepting.join(timeout=2)
        sock.close()
        self.drop_connections()

    def drop_connections(self) -> None:
        with self._lock:
            conns = list(self._conns)
            self._conns.clear()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                conn.close()

    def close(self) -> None:
        self._stopping.set()
        self.unlisten()
        self.drop_connections()

    def _track(self, *socks: socket.socket) -> None:
        with self._lock:
            self._conns.update(socks)

    def _accept_loop(self, sock: socket.socket, stop: threading.Event) -> None:
        while not stop.is_set():
            try:
                conn, _ = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self._track(conn)
            threading.Thread(target=self._serve_conn, args=(conn,), name="konnect-standin-conn", daemon=True).start()

    def _serve_conn(self, raw: socket.socket) -> None:
        raw.settimeout(10)
        try:
            tls = self._ctx.wrap_socket(raw, server_side=True, do_handshake_on_connect=False)
        except (OSError, ssl.SSLError):
            with contextlib.suppress(OSError):
                raw.close()
            return
        try:
            tls.do_handshake()  # blocking: on failure OpenSSL has already written the TLS alert
            tls.settimeout(None)
        except (OSError, ssl.SSLError):
            self.handshake_failures += 1
            self._linger_close(tls)
            return
        peer = tls.getpeercert() or {}
        self.client_serials.append(str(peer.get("serialNumber", "")))
        try:
            backend = socket.create_connection(("127.0.0.1", self._backend_port), timeout=5)
            backend.settimeout(None)
        except OSError:
            tls.close()
            return
        self._track(tls, backend)
        try:
            self._relay(tls, backend)
        finally:
            for s in (tls, backend):
                with contextlib.suppress(OSError):
                    s.close()
            with self._lock:
                self._conns.difference_update((raw, tls, backend))

    @staticmethod
    def _linger_close(sock: socket.socket) -> None:
        # Half-close, then read what the client already sent (in TLS 1.3 its request follows its
        # certificate). Closing with unread data would make the kernel send a reset that can overtake
        # the alert, and the client would see "connection reset" instead of the certificate rejection.
        with contextlib.suppress(OSError, ValueError):
            sock.shutdown(socket.SHUT_WR)
            sock.settimeout(1.0)
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline and socket.socket.recv(sock, 65536):
                pass
        with contextlib.suppress(OSError):
            sock.close()

    def _relay(self, tls: ssl.SSLSocket, backend: socket.socket) -> None:
        socks: list[socket.socket] = [tls, backend]
        while not self._stopping.is_set():
            try:
                readable, _, _ = select.select(socks, [], [], 0.2)
                for s in readable:
                    data = s.recv(65536)
                    if s is tls:
                        while data and tls.pending():
                            data += tls.recv(tls.pending())
                    if not data:
                        return
                    (backend if s is tls else tls).sendall(data)
            except (OSError, ValueError):
                return


class KonnectStandIn:
    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        tls: TLSMaterial | None = None,
        port: int = 0,
        control_plane_id: str | None = None,
        record: LicenseRecord | object | None = _KEEP,
        mode: str = "license",
        slow_seconds: float = 2.0,
        oversized_bytes: int = 65536 + 4096,
    ) -> None:
        if tls is None:
            if tls_dir is None:
                raise TypeError("KonnectStandIn needs tls_dir or tls")
            tls = TLSMaterial.load_or_create(Path(tls_dir))
        self.tls = tls
        self.control_plane_id = control_plane_id or str(uuid.uuid4())
        self.record: LicenseRecord | None = (
            make_record(updated_at=int(time.time())) if record is _KEEP else record  # type: ignore[assignment]
        )
        self._check_mode(mode)
        self.mode = mode
        self.slow_seconds = slow_seconds
        self.oversized_bytes = oversized_bytes
        self.port = port
        self.requests = 0
        self.requests_by_path: Counter[str] = Counter()
        self.requests_by_mode: Counter[str] = Counter()
        self.user_agents: list[str] = []
        self._runner: web.AppRunner | None = None
        self._front: _TLSFront | None = None
        self._release = asyncio.Event()
        self._hanging: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def path(self) -> str:
        return licenses_path(self.control_plane_id)

    async def __aenter__(self) -> KonnectStandIn:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", self._handle)
        self._release = asyncio.Event()
        self._runner = web.AppRunner(app, shutdown_timeout=0.5, access_log=None)
        await self._runner.setup()
        # plain HTTP backend on a free loopback port; clients reach it only through the TLS front
        await web.TCPSite(self._runner, "127.0.0.1", 0).start()
        backend_port = self._runner.addresses[0][1]
        self._front = _TLSFront(self.tls.server_ssl_context(), backend_port, self.port)
        if self.mode != "closed":
            await asyncio.to_thread(self._front.listen)
            self.port = self._front.port

    async def stop(self) -> None:
        self._release.set()  # wake blackholed and slow handlers
        for task in list(self._hanging):
            task.cancel()
        if self._front is not None:
            await asyncio.to_thread(self._front.close)
        if self._runner is not None:
            await self._runner.cleanup()
        self._runner = None

    @property
    def client_serials(self) -> list[str]:
        """Serial numbers of the client certificates of accepted TLS connections, oldest first."""
        return self._front.client_serials if self._front else []

    @property
    def handshake_failures(self) -> int:
        """TLS handshakes the stand-in rejected (e.g. a client certificate from an untrusted CA)."""
        return self._front.handshake_failures if self._front else 0

    # --- control ---------------------------------------------------------------------------------------

    @staticmethod
    def _check_mode(mode: str) -> None:
        if mode not in MODES:
            raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(MODES)}")

    async def set_mode(self, mode: str) -> None:
        self._check_mode(mode)
        old, self.mode = self.mode, mode
        if self._front is None:
            return
        if mode == "closed" and old != "closed":
            await asyncio.to_thread(self._front.unlisten)
        elif mode != "closed":
            await asyncio.to_thread(self._front.listen)
            self.port = self._front.port

    def serve(self, record: LicenseRecord | None) -> None:
        """The license served in "license" and "slow" modes; None means 404."""
        self.record = record

    def rotate(self, *, days: int = 365) -> LicenseRecord:
        """Serve a freshly generated license, newer (updated_at) than the current one."""
        newest = max(int(time.time()), (self.record.updated_at + 1) if self.record else 0)
        today = datetime.datetime.now(datetime.UTC).date()
        self.record = make_record(updated_at=newest, expiration_date=today + datetime.timedelta(days=days))
        return self.record

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "mode": self.mode,
            "by_path": dict(self.requests_by_path),
            "by_mode": dict(self.requests_by_mode),
            "license_id": self.record.id if self.record else None,
            "updated_at": self.record.updated_at if self.record else None,
        }

    # --- serving ---------------------------------------------------------------------------------------

    def _license_body(self, record: LicenseRecord) -> dict[str, Any]:
        return {"items": [{"payload": record.document, "updated_at": record.updated_at, "id": record.id}]}

    async def _hang(self, seconds: float | None) -> bool:
        """Wait ``seconds`` (None: until shutdown). True if released by shutdown."""
        task = asyncio.current_task()
        if task is not None:
            self._hanging.add(task)
        try:
            await asyncio.wait_for(self._release.wait(), seconds)
            return True
        except TimeoutError:
            return False
        finally:
            if task is not None:
                self._hanging.discard(task)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        mode = self.mode
        self.requests += 1
        self.requests_by_path[request.path] += 1
        self.requests_by_mode[mode] += 1
        self.user_agents.append(request.headers.get("User-Agent", ""))
        if request.method != "GET" or request.path != self.path:
            raise web.HTTPNotFound()
        if mode == "closed":  # a request that raced the switch
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if mode == "blackhole":
            await self._hang(None)
            if request.transport is not None:
                request.transport.abort()
            raise web.HTTPServiceUnavailable()
        if mode == "not_found":
            raise web.HTTPNotFound()
        if mode == "server_error":
            return web.Response(status=500, text="internal error")
        if mode == "unauthorized":
            return web.Response(status=401, text="unauthorized")
        if mode == "unexpected_status":
            return web.Response(status=418, text="teapot")
        if mode == "garbage":
            return web.Response(status=200, text="<html>definitely not json", content_type="text/html")
        if mode == "missing_fields":
            record = self.record or make_record(updated_at=1)
            return web.json_response({"items": [{"payload": record.document}]})
        if mode == "oversized":
            body = self._license_body(self.record or make_record(updated_at=1))
            body["padding"] = "x" * self.oversized_bytes
            return web.json_response(body)
        if mode == "slow" and await self._hang(self.slow_seconds):
            raise web.HTTPServiceUnavailable()
        if self.record is None:
            raise web.HTTPNotFound()
        return web.json_response(self._license_body(self.record))


# --- driving a stand-in in another process ---------------------------------------------------------------


class StandInControl:
    """Async client for the control endpoint of ``python -m license_keeper.testing.konnect serve``."""

    def __init__(self, url: str) -> None:
        self.url = url.rstrip("/")
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> StandInControl:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _call(self, method: str, path: str, body: Any = None) -> dict[str, Any]:
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10))
        async with self._session.request(method, self.url + path, json=body) as resp:
            data = await resp.json()
            if resp.status >= 400:
                raise RuntimeError(f"stand-in control {method} {path}: HTTP {resp.status}: {data.get('error')}")
            return data

    async def set_mode(self, mode: str) -> dict[str, Any]:
        return await self._call("POST", "/mode", {"mode": mode})

    async def rotate(self) -> dict[str, Any]:
        return await self._call("POST", "/license/rotate")

    async def put_license(self, document: str, id: str, updated_at: int) -> dict[str, Any]:
        return await self._call("PUT", "/license", {"document": document, "id": id, "updated_at": updated_at})

    async def stats(self) -> dict[str, Any]:
        return await self._call("GET", "/stats")


def _control_app(standin: KonnectStandIn) -> web.Application:
    async def set_mode(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            await standin.set_mode(str(body["mode"]))
        except (ValueError, KeyError, TypeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(standin.stats())

    async def put_license(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            if body is None or body.get("document") is None:
                standin.serve(None)
            else:
                updated_at = body["updated_at"]
                if isinstance(updated_at, bool) or not isinstance(updated_at, int):
                    raise TypeError("updated_at must be an integer")
                standin.serve(LicenseRecord(document=str(body["document"]), id=str(body["id"]), updated_at=updated_at))
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(standin.stats())

    async def rotate(request: web.Request) -> web.Response:
        standin.rotate()
        return web.json_response(standin.stats())

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(standin.stats())

    app = web.Application()
    app.router.add_post("/mode", set_mode)
    app.router.add_put("/license", put_license)
    app.router.add_post("/license/rotate", rotate)
    app.router.add_get("/stats", stats)
    return app


async def _serve(args: argparse.Namespace) -> int:
    standin = KonnectStandIn(
        tls_dir=Path(args.dir),
        port=args.port,
        control_plane_id=args.control_plane_id,
        mode=args.mode,
        slow_seconds=args.slow_seconds,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    control_runner: web.AppRunner | None = None
    async with standin:
        info: dict[str, Any] = {
            "address": standin.address,
            "control_plane_id": standin.control_plane_id,
            "path": standin.path,
            **standin.tls.paths(),
        }
        if args.control_port is not None:
            control_runner = web.AppRunner(_control_app(standin), access_log=None)
            await control_runner.setup()
            await web.TCPSite(control_runner, "127.0.0.1", args.control_port).start()
            info["control_url"] = f"http://127.0.0.1:{control_runner.addresses[0][1]}"
        print(json.dumps(info), flush=True)
        try:
            await stop.wait()
        finally:
            if control_runner is not None:
                await control_runner.cleanup()
    return 0


def _build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {name:<18} {text}" for name, text in MODES.items())
    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.konnect",
        description="A fault-injecting stand-in for the Konnect license API (mutual TLS), for tests.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser(
        "serve",
        help="run the stand-in until SIGINT/SIGTERM",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description=(
            "Serve GET /kic/api/control-planes/{ID}/v1/licenses over HTTPS on 127.0.0.1, requiring a client\n"
            "certificate issued by DIR/ca.pem. Writes ca.pem, server.pem, server-key.pem, client.pem and\n"
            "client-key.pem into DIR (or uses the ones there), serves a generated license, and prints one\n"
            "JSON line when ready: address, control_plane_id, path, the file paths, and control_url.\n\n"
            "Control endpoint (plain HTTP on 127.0.0.1:--control-port; 0 picks a free port):\n"
            '  POST /mode {"mode": MODE}                              switch behaviour\n'
            '  PUT  /license {"document": ..., "id": ..., "updated_at": N}  serve this license\n'
            "  PUT  /license null                                     serve no license (404)\n"
            "  POST /license/rotate                                   serve a fresh, newer license\n"
            '  GET  /stats   -> {"requests": N, "mode": ..., ...}\n\n'
            f"Modes:\n{modes}"
        ),
    )
    serve.add_argument("--dir", required=True, help="directory for the TLS files")
    serve.add_argument("--port", type=int, default=0, help="HTTPS port (default: a free port)")
    serve.add_argument("--control-plane-id", default=None, help="control plane id (default: a random UUID)")
    serve.add_argument("--control-port", type=int, default=None, help="port of the control endpoint (0: free)")
    serve.add_argument("--mode", default="license", choices=list(MODES), help="initial mode")
    serve.add_argument("--slow-seconds", type=float, default=2.0, help="delay of the slow mode")
    make = sub.add_parser("make-license", help="print a generated (unsigned, test-only) license document")
    make.add_argument("--customer", default="Example Company, Inc")
    make.add_argument("--product", default="Konnect Enterprise")
    make.add_argument("--created", type=datetime.date.fromisoformat, default=None, help="YYYY-MM-DD")
    make.add_argument("--expires", type=datetime.date.fromisoformat, default=None, help="YYYY-MM-DD")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "make-license":
        print(
            make_document(
                customer=args.customer,
                product=args.product,
                creation_date=args.created,
                expiration_date=args.expires,
            )
        )
        return 0
    return asyncio.run(_serve(args))


if __name__ == "__main__":
    sys.exit(main())
