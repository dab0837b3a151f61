"""The HTTP app of the Konnect stand-in: the licenses endpoint, its fault modes, and its statistics.

``KonnectStandIn`` puts it behind the TLS front (``konnect_tls.TLSFront``) on 127.0.0.1, or on ``host``
(for example a node address that pods can reach); its server certificate then covers that host too.
"""

from __future__ import annotations

import asyncio
import datetime
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

from aiohttp import web

from license_keeper.konnect import licenses_path
from license_keeper.license import LicenseRecord
from license_keeper.testing.konnect_tls import TLSFront, check_mode, follow_mode, https_url, shut_down
from license_keeper.testing.licenses import make_record
from license_keeper.testing.tls import TLSMaterial

__all__ = ["MODES", "KonnectStandIn"]

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


class KonnectStandIn:
    def __init__(
        self,
        *,
        tls_dir: Path | None = None,
        tls: TLSMaterial | None = None,
        port: int = 0,
        host: str = "127.0.0.1",
        control_plane_id: str | None = None,
        record: LicenseRecord | object | None = _KEEP,
        mode: str = "license",
        slow_seconds: float = 2.0,
        oversized_bytes: int = 65536 + 4096,
    ) -> None:
        self.host = host
        self.tls = TLSMaterial.given(tls, tls_dir, "KonnectStandIn", host)
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
        self._front: TLSFront | None = None
        self._release = asyncio.Event()
        self._hanging: set[asyncio.Task[Any]] = set()

    # --- lifecycle -------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return https_url(self.host, self.port)

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
        self._front = TLSFront(self.tls.server_ssl_context(), backend_port, self.port, self.host)
        if self.mode != "closed":
            await asyncio.to_thread(self._front.listen)
            self.port = self._front.port

    async def stop(self) -> None:
        self._release.set()  # wake blackholed and slow handlers
        for task in list(self._hanging):
            task.cancel()
        await shut_down(self._front, self._runner)
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
        check_mode(mode, MODES)

    async def set_mode(self, mode: str) -> None:
        self._check_mode(mode)
        old, self.mode = self.mode, mode
        self.port = await follow_mode(self._front, old, mode) or self.port

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
