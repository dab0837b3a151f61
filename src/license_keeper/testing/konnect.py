"""A fault-injecting stand-in for the Konnect license API, for tests (yours too).

In-process::

    async with KonnectStandIn(tls_dir=tmp_path) as konnect:
        client = KonnectClient(konnect.address, konnect.control_plane_id,
                               konnect.tls.client_cert_file, konnect.tls.client_key_file,
                               ca_file=konnect.tls.ca_file)
        konnect.set_mode("blackhole")

In another process::

    python -m license_keeper.testing.konnect serve --dir DIR --control-port 0 [--host 10.255.255.7]

It is a real HTTPS server on 127.0.0.1 (or ``host``, which its server certificate then covers too) that
requires and verifies a client certificate, and serves only ``GET /kic/api/control-planes/{id}/v1/licenses``
(everything else is 404).

The stand-in is split by concern: ``konnect_tls`` (the mutual-TLS front), ``konnect_app`` (the HTTP app,
its modes and statistics: ``KonnectStandIn``), and this module: driving a stand-in in another process
(``StandInControl`` and the control endpoint) and the command line.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from license_keeper.license import LicenseRecord
from license_keeper.testing.control import control_app, serve_until_stopped, stop_on_signals
from license_keeper.testing.konnect_app import MODES, KonnectStandIn
from license_keeper.testing.licenses import make_document

__all__ = ["KonnectStandIn", "StandInControl"]

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
    async def set_mode(body: Any) -> dict[str, Any]:
        await standin.set_mode(str(body["mode"]))
        return standin.stats()

    async def put_license(body: Any) -> dict[str, Any]:
        if body is None or body.get("document") is None:
            standin.serve(None)
        else:
            updated_at = body["updated_at"]
            if isinstance(updated_at, bool) or not isinstance(updated_at, int):
                raise TypeError("updated_at must be an integer")
            standin.serve(LicenseRecord(document=str(body["document"]), id=str(body["id"]), updated_at=updated_at))
        return standin.stats()

    async def rotate(_: Any) -> dict[str, Any]:
        standin.rotate()
        return standin.stats()

    async def stats(_: Any) -> dict[str, Any]:
        return standin.stats()

    return control_app(
        {
            ("POST", "/mode"): set_mode,
            ("PUT", "/license"): put_license,
            ("POST", "/license/rotate"): rotate,
            ("GET", "/stats"): stats,
        }
    )


async def _serve(args: argparse.Namespace) -> int:
    standin = KonnectStandIn(
        tls_dir=Path(args.dir),
        port=args.port,
        host=args.host,
        control_plane_id=args.control_plane_id,
        mode=args.mode,
        slow_seconds=args.slow_seconds,
    )
    stop = stop_on_signals()
    async with standin:
        info: dict[str, Any] = {
            "address": standin.address,
            "control_plane_id": standin.control_plane_id,
            "path": standin.path,
            **standin.tls.paths(),
        }
        await serve_until_stopped(stop, info, _control_app(standin), args.control_port)
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
            "Serve GET /kic/api/control-planes/{ID}/v1/licenses over HTTPS on --host (127.0.0.1), requiring a\n"
            "client certificate issued by DIR/ca.pem. Writes ca.pem, server.pem, server-key.pem, client.pem and\n"
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
    serve.add_argument(
        "--host", default="127.0.0.1", help="address to listen on; the server certificate covers it (default 127.0.0.1)"
    )
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
