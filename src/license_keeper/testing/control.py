"""The plain-HTTP control surface the stand-ins and the fault proxy share when run as their own process.

Each route takes the request's JSON body (None when there is none) and answers JSON; a body the handler
cannot use (``ValueError``, ``KeyError``, ``TypeError``, ``AttributeError``) is a 400 with the reason.
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

__all__ = ["control_app", "serve_until_stopped", "stop_on_signals"]

Handler = Callable[[Any], Awaitable[Any]]


def control_app(routes: Mapping[tuple[str, str], Handler]) -> web.Application:
    """An application with one JSON handler per (method, path)."""
    app = web.Application()
    for (method, path), handler in routes.items():
        app.router.add_route(method, path, _json_route(handler))
    return app


def _json_route(handler: Handler) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def route(request: web.Request) -> web.Response:
        try:
            body = await request.json() if request.can_read_body else None
            answer = await handler(body)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            return web.json_response({"error": str(exc)}, status=400)
        return web.json_response(answer)

    return route


def stop_on_signals() -> asyncio.Event:
    """An event set by SIGINT or SIGTERM (call inside the running loop)."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    return stop


def _print_json(info: dict[str, Any]) -> None:
    print(json.dumps(info), flush=True)


async def serve_until_stopped(
    stop: asyncio.Event,
    info: dict[str, Any],
    app: web.Application,
    control_port: int | None,
    *,
    announce: Callable[[dict[str, Any]], None] = _print_json,
) -> None:
    """Serve ``app`` on 127.0.0.1:``control_port`` (None: no control surface; 0: a free port), announce
    ``info`` (with ``control_url``) once ready, and wait for ``stop``."""
    runner: web.AppRunner | None = None
    if control_port is not None:
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", control_port).start()
        info["control_url"] = f"http://127.0.0.1:{runner.addresses[0][1]}"
    announce(info)
    try:
        await stop.wait()
    finally:
        if runner is not None:
            await runner.cleanup()
