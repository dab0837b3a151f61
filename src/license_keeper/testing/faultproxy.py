"""An HTTPS fault proxy between one client (a keeper replica) and the real API server, for tests.

(Over 400 lines on purpose: one thread with its own event loop that owns the rules and every open
connection; the forwarding, the fault modes and the cuts act on the same connections and are read
together. Its HTTP/1.1 parsing is the minimum a forwarder needs.)

The house rule is "no fake Kubernetes API": faults go *between* the keeper and the real API server. The
proxy terminates TLS on loopback with its own certificate, forwards every request (Authorization header
included) to the API server, and streams the answer back, so watches (long chunked responses) work. At
any moment, from any thread, it can be switched to a fault mode, for every request or only for requests
that match a method, a path pattern, or watch/non-watch::

    with FaultProxy(cp.server, cp.ca_file, tls_dir=tmp / "proxy-tls") as proxy:
        proxy.write_kubeconfig(path, token=sa.token, user="keeper-0", namespace=ns)
        proxy.set_mode("cut_after", bytes=0, watch=True)   # every watch breaks right after its headers
        proxy.cut()                                         # cut every open connection now
        proxy.set_mode("503", methods={"POST"}, path="/events")
        proxy.set_mode("pass")

From the shell: ``python -m license_keeper.testing.faultproxy --help`` (with an HTTP control port).

It speaks HTTP/1.1 only (ALPN offers nothing else), which every Kubernetes client falls back to.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import socket
import ssl
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import yarl
from aiohttp import web

from .control import control_app, serve_until_stopped, stop_on_signals
from .controlplane import write_kubeconfig
from .tls import TLSMaterial

__all__ = ["FaultProxy", "Rule"]

MODES: dict[str, str] = {
    "pass": "forward the request and stream the answer back",
    "delay": "wait `seconds` before forwarding each request",
    "stall": "accept the request and never answer (until cut() or stop)",
    "cut_after": "forward, then cut the connection after `bytes` bytes of the answer's body (0: after the headers)",
    "reset": "cut the connection as the request arrives, without an answer",
    "503": "answer 503 with an empty body",
    "502": "answer 502 with an HTML body (what a load balancer sends)",
    "429": "answer 429 with Retry-After: `retry_after` and a Status body (what API priority and fairness sends)",
    "html": "answer `status` with an HTML page labelled `content_type` ('' sends no Content-Type): a proxy's page",
    "nested": "answer `status` with a JSON object nested `depth` levels deep (one line, so a watch reads it too)",
    "partition": "cut every open connection and refuse new ones (stop listening); with a filter: like reset",
}

# Hop-by-hop headers (RFC 9110 §7.6.1) are the proxy's own business on each side; never forwarded.
_HOP = {
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
    "host",
    "content-length",
}
_MAX_HEAD = 64 * 1024
_MAX_BODY = 16 * 1024 * 1024
_REASONS = {
    200: "OK",
    201: "Created",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    429: "Too Many Requests",
    502: "Bad Gateway",
    503: "Service Unavailable",
}


@dataclass(frozen=True)
class Rule:
    """A fault mode and the requests it applies to (None: any)."""

    mode: str
    methods: frozenset[str] | None = None  # HTTP methods, e.g. {"POST"}
    path: str | None = None  # a regular expression searched in the request path (without the query)
    watch: bool | None = None  # True: only watch requests; False: only the others
    seconds: float = 1.0  # delay
    bytes: int = 0  # cut_after
    retry_after: int = 1  # 429
    status: int = 403  # html, nested
    content_type: str = "text/html"  # html
    depth: int = 100_000  # nested

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; modes: {', '.join(MODES)}")

    @property
    def unfiltered(self) -> bool:
        return self.methods is None and self.path is None and self.watch is None

    def matches(self, method: str, path: str, watch: bool) -> bool:
        return (
            (self.methods is None or method in self.methods)
            and (self.path is None or re.search(self.path, path) is not None)
            and (self.watch is None or self.watch == watch)
        )


def make_rule(
    mode: str,
    *,
    methods: Iterable[str] | None = None,
    path: str | None = None,
    watch: bool | None = None,
    **params: Any,
) -> Rule:
    upper = frozenset(m.upper() for m in methods) if methods is not None else None
    return Rule(mode, upper, path, watch, **params)


def is_watch(path: str, query: str) -> bool:
    """``?watch=true`` (what clients send today) or the old ``/watch/`` path form."""
    return "/watch/" in path or any(v.lower() in ("true", "1") for v in parse_qs(query).get("watch", []))


@dataclass
class _Request:
    method: str
    target: str
    path: str
    watch: bool
    headers: list[tuple[str, str]]
    body: bytes
    keep_alive: bool


@dataclass(eq=False)
class _Conn:
    writer: asyncio.StreamWriter
    reader: asyncio.StreamReader
    cut_event: asyncio.Event = field(default_factory=asyncio.Event)

    def cut(self) -> None:
        """Reset the connection (RST, not FIN): the client sees a broken connection, mid-answer if any."""
        if self.cut_event.is_set():
            return
        self.cut_event.set()
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()

    @property
    def gone(self) -> bool:
        return self.cut_event.is_set() or self.reader.at_eof() or self.writer.transport.is_closing()


class _Malformed(Exception):
    pass


async def _read_request(reader: asyncio.StreamReader) -> _Request | None:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            return None
        raise _Malformed("truncated request head") from None
    except asyncio.LimitOverrunError:
        raise _Malformed("request head too large") from None
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, version = lines[0].split(" ", 2)
    except ValueError:
        raise _Malformed("bad request line") from None
    headers: list[tuple[str, str]] = []
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers.append((name.strip(), value.strip()))
    lower = {k.lower(): v for k, v in headers}
    if "chunked" in lower.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        length = int(lower.get("content-length", "0") or 0)
        if length > _MAX_BODY:
            raise _Malformed("request body too large")
        body = await reader.readexactly(length) if length else b""
    connection = lower.get("connection", "").lower()
    keep = "close" not in connection and (version == "HTTP/1.1" or "keep-alive" in connection)
    parts = urlsplit(target)
    return _Request(method.upper(), target, parts.path, is_watch(parts.path, parts.query), headers, body, keep)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    out = bytearray()
    while True:
        size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":  # trailers
                pass
            return bytes(out)
        out += await reader.readexactly(size)
        await reader.readexactly(2)
        if len(out) > _MAX_BODY:
            raise _Malformed("request body too large")


def _head(status: int, reason: str, headers: Iterable[tuple[str, str]]) -> bytes:
    lines = [f"HTTP/1.1 {status} {reason}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class FaultProxy:
    """One proxy (one per keeper replica), serving on 127.0.0.1 in its own thread and event loop.

    Every public method is safe to call from any thread, including from code running in another event
    loop (the calls that touch connections hop onto the proxy's loop and wait briefly).
    """

    def __init__(
        self,
        upstream: str,
        upstream_ca: Path | str,
        *,
        tls_dir: Path | str,
        port: int = 0,
        name: str = "faultproxy",
    ) -> None:
        self.upstream = upstream.rstrip("/")
        self.upstream_ca = Path(upstream_ca)
        self.tls = TLSMaterial.load_or_create(Path(tls_dir))
        self.port = port
        self.name = name
        self._rules: tuple[Rule, ...] = ()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: asyncio.Server | None = None
        self._session: aiohttp.ClientSession | None = None
        self._conns: set[_Conn] = set()
        self._started = threading.Event()
        self._start_error: BaseException | None = None
        self._lock = threading.Lock()
        self.connections = 0
        self.cuts = 0
        self.requests: Counter[str] = Counter()  # by mode applied
        self.recent: deque[tuple[float, str, str, str]] = deque(maxlen=200)  # (time, method, path, mode)

    # --- lifecycle ------------------------------------------------------------------------------------

    @property
    def address(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca_file(self) -> Path:
        """The CA a client must trust to talk to the proxy (not the API server's)."""
        return self.tls.ca_file

    def start(self, timeout: float = 10.0) -> FaultProxy:
        if self._thread is not None:
            return self
        self._thread = threading.Thread(target=self._run, name=f"faultproxy-{self.name}", daemon=True)
        self._thread.start()
        if not self._started.wait(timeout):
            raise RuntimeError(f"fault proxy {self.name} did not start within {timeout:.0f} s")
        if self._start_error is not None:
            raise RuntimeError(f"fault proxy {self.name} failed to start: {self._start_error}")
        return self

    def stop(self) -> None:
        loop, thread = self._loop, self._thread
        if loop is None or thread is None:
            return
        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        self._thread = self._loop = None

    def __enter__(self) -> FaultProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._setup())
        except BaseException as e:  # reported by start()
            self._start_error = e
            self._started.set()
            loop.close()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()

    async def _setup(self) -> None:
        upstream_ctx = ssl.create_default_context(cafile=str(self.upstream_ca))
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=upstream_ctx, limit=0),
            auto_decompress=False,  # pass the bytes through as the API server sent them
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
        )
        await self._listen()

    async def _listen(self) -> None:
        # TLS is set up by the server (StreamWriter.start_tls after accept can lose a ClientHello that
        # arrived before it, and the handshake then hangs).
        self._server = await asyncio.start_server(
            self._on_client,
            "127.0.0.1",
            self.port,
            limit=_MAX_HEAD,
            ssl=self._server_ctx(),
            ssl_handshake_timeout=10,
        )
        self.port = self._server.sockets[0].getsockname()[1]

    async def _apply_partition(self, partitioned: bool) -> int:
        """Partition: stop listening (new connections are refused) and cut every open one; heal: listen again."""
        if partitioned:
            if self._server is not None:
                self._server.close()
                self._server = None
            return await self._cut_all()
        if self._server is None:
            await self._listen()
        return 0

    async def _shutdown(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._conns):
            conn.cut()
        if self._session is not None:
            await self._session.close()
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def _server_ctx(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.load_cert_chain(self.tls.server_cert_file, self.tls.server_key_file)
        ctx.set_alpn_protocols(["http/1.1"])
        return ctx

    # --- control --------------------------------------------------------------------------------------

    def set_mode(
        self,
        mode: str,
        *,
        methods: Iterable[str] | None = None,
        path: str | None = None,
        watch: bool | None = None,
        **params: Any,
    ) -> None:
        """Replace every rule with one (``pass`` clears them). ``partition`` also cuts open connections."""
        rule = make_rule(mode, methods=methods, path=path, watch=watch, **params)
        self.set_rules([] if mode == "pass" and rule.unfiltered else [rule])

    def set_rules(self, rules: Iterable[Rule]) -> None:
        self._rules = tuple(rules)
        if self._loop is not None:
            fut = asyncio.run_coroutine_threadsafe(self._apply_partition(self._partitioned()), self._loop)
            fut.result(10)

    @property
    def rules(self) -> tuple[Rule, ...]:
        return self._rules

    @property
    def mode(self) -> str:
        """The mode of the first rule, "pass" when there is none (a summary for logs)."""
        return self._rules[0].mode if self._rules else "pass"

    def cut(self) -> int:
        """Cut every open connection now (mid-answer if one is streaming); returns how many."""
        if self._loop is None:
            return 0
        fut = asyncio.run_coroutine_threadsafe(self._cut_all(), self._loop)
        return fut.result(10)

    async def _cut_all(self) -> int:
        conns = list(self._conns)
        for conn in conns:
            conn.cut()
        with self._lock:
            self.cuts += len(conns)
        return len(conns)

    def open_connections(self) -> int:
        """Client connections not (yet) cut; a cut one leaves the set a moment later, on the proxy's loop."""
        return sum(1 for c in list(self._conns) if not c.cut_event.is_set())

    def stats(self) -> dict[str, Any]:
        with self._lock:
            return {
                "address": self.address,
                "mode": self.mode,
                "rules": [r.__dict__ | {"methods": sorted(r.methods) if r.methods else None} for r in self._rules],
                "connections": self.connections,
                "open_connections": self.open_connections(),
                "cuts": self.cuts,
                "requests": dict(self.requests),
            }

    def write_kubeconfig(self, path: Path, *, token: str, user: str, namespace: str = "default") -> Path:
        """A token kubeconfig that reaches the API server through this proxy."""
        return write_kubeconfig(
            path, server=self.address, ca_file=self.ca_file, token=token, user=user, namespace=namespace
        )

    # --- serving --------------------------------------------------------------------------------------

    def _match(self, req: _Request) -> Rule | None:
        for rule in self._rules:
            if rule.matches(req.method, req.path, req.watch):
                return rule
        return None

    def _partitioned(self) -> bool:
        return any(r.mode == "partition" and r.unfiltered for r in self._rules)

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        conn = _Conn(writer, reader)
        if self._partitioned():  # accepted just before the listener closed
            conn.cut()
            return
        with self._lock:
            self.connections += 1
        self._conns.add(conn)
        try:
            while not conn.gone:
                req = await _read_request(reader)
                if req is None or not await self._serve(conn, req):
                    break
        except (OSError, ssl.SSLError, TimeoutError, asyncio.IncompleteReadError, _Malformed, ValueError):
            pass
        except asyncio.CancelledError:
            pass  # the proxy is stopping; the connection is cut below
        finally:
            self._conns.discard(conn)
            if not conn.cut_event.is_set():
                writer.transport.abort()

    def _count(self, req: _Request, mode: str) -> None:
        with self._lock:
            self.requests[mode] += 1
            self.recent.append((time.time(), req.method, req.target, mode))

    async def _serve(self, conn: _Conn, req: _Request) -> bool:
        """Answer one request; False when the connection must end."""
        rule = self._match(req)
        mode = rule.mode if rule else "pass"
        self._count(req, mode)
        if rule is None or mode == "pass":
            return await self._forward(conn, req, None)
        if mode in ("reset", "partition"):
            conn.cut()
            return False
        if mode == "stall":
            await self._client_gone(conn)
            return False
        if mode == "503":
            return await self._answer(conn, req, 503, b"", "text/plain")
        if mode == "502":
            html = b"<html><head><title>502 Bad Gateway</title></head><body><h1>502 Bad Gateway</h1></body></html>"
            return await self._answer(conn, req, 502, html, "text/html")
        if mode == "html":
            page = f"<html><head><title>{rule.status}</title></head><body><h1>{rule.status}</h1></body></html>"
            return await self._answer(conn, req, rule.status, page.encode(), rule.content_type)
        if mode == "nested":
            body = b'{"a":' * rule.depth + b"null" + b"}" * rule.depth  # objects: typed decoders recurse too
            return await self._answer(conn, req, rule.status, body, "application/json")
        if mode == "429":
            status = {
                "kind": "Status",
                "apiVersion": "v1",
                "status": "Failure",
                "message": "Too many requests, please try again later.",
                "reason": "TooManyRequests",
                "details": {"retryAfterSeconds": rule.retry_after},
                "code": 429,
            }
            extra = [("Retry-After", str(rule.retry_after))]
            return await self._answer(conn, req, 429, json.dumps(status).encode(), "application/json", extra)
        if mode == "delay":
            await asyncio.sleep(rule.seconds)
            return await self._forward(conn, req, None)
        return await self._forward(conn, req, rule.bytes)  # cut_after

    async def _answer(
        self,
        conn: _Conn,
        req: _Request,
        status: int,
        body: bytes,
        content_type: str,
        extra: Iterable[tuple[str, str]] = (),
    ) -> bool:
        headers = [("Content-Type", content_type)] if content_type else []
        headers += [("Content-Length", str(len(body))), *extra]
        if not req.keep_alive:
            headers.append(("Connection", "close"))
        conn.writer.write(_head(status, _REASONS.get(status, ""), headers) + body)
        await conn.writer.drain()
        return req.keep_alive

    async def _forward(self, conn: _Conn, req: _Request, cut_after: int | None) -> bool:
        assert self._session is not None
        headers = [(k, v) for k, v in req.headers if k.lower() not in _HOP]
        url = yarl.URL(self.upstream + req.target, encoded=True)
        try:
            async with self._session.request(
                req.method,
                url,
                headers=headers,
                data=req.body or None,
                allow_redirects=False,
                skip_auto_headers={"Accept-Encoding", "User-Agent", "Content-Type"},
            ) as resp:
                return await self._relay(conn, req, resp, cut_after)
        except (aiohttp.ClientError, OSError, TimeoutError):
            # The API server is gone or broke the answer: the client sees its connection break, as it would
            # talking to the API server directly.
            conn.cut()
            return False

    async def _relay(self, conn: _Conn, req: _Request, resp: aiohttp.ClientResponse, cut_after: int | None) -> bool:
        length = resp.headers.get("Content-Length")
        headers = [(k, v) for k, v in resp.headers.items() if k.lower() not in _HOP]
        headers.append(("Content-Length", length) if length is not None else ("Transfer-Encoding", "chunked"))
        if not req.keep_alive:
            headers.append(("Connection", "close"))
        conn.writer.write(_head(resp.status, resp.reason or "", headers))
        if cut_after == 0:
            await conn.writer.drain()
            conn.cut()
            return False
        pump = asyncio.ensure_future(self._pump(conn, resp, length is None, cut_after))
        gone = asyncio.ensure_future(self._client_gone(conn))
        try:
            await asyncio.wait({pump, gone}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
            if not pump.done():
                pump.cancel()
            await asyncio.gather(pump, gone, return_exceptions=True)
        if pump.cancelled() or pump.exception() is not None:
            conn.cut()  # the client went away, or the API server broke the answer: break it for the client too
            return False
        if cut_after is not None and pump.result() >= cut_after:
            conn.cut()
            return False
        return req.keep_alive

    async def _pump(self, conn: _Conn, resp: aiohttp.ClientResponse, chunked: bool, cut_after: int | None) -> int:
        sent = 0
        async for chunk in resp.content.iter_any():
            if cut_after is not None and sent + len(chunk) >= cut_after:
                part = chunk[: cut_after - sent]
                if part:
                    conn.writer.write(b"%x\r\n%s\r\n" % (len(part), part) if chunked else part)
                    await conn.writer.drain()
                return cut_after
            conn.writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if chunked else chunk)
            await conn.writer.drain()
            sent += len(chunk)
        if chunked:
            conn.writer.write(b"0\r\n\r\n")
        await conn.writer.drain()
        return sent

    async def _client_gone(self, conn: _Conn) -> None:
        # A watch answer can be idle for minutes: notice a client that went away (killed replica) so the
        # upstream watch is closed too, instead of lingering until the next event.
        while not conn.gone:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(conn.cut_event.wait(), 0.5)


# --- command line ----------------------------------------------------------------------------------------


def _control_app(proxy: FaultProxy) -> web.Application:
    async def mode(body: Any) -> dict[str, Any]:
        rules = [make_rule(**r) for r in body["rules"]] if "rules" in body else [make_rule(**body)]
        await asyncio.to_thread(proxy.set_rules, [] if [r.mode for r in rules] == ["pass"] else rules)
        return proxy.stats()

    async def cut(_: Any) -> dict[str, Any]:
        return {"cut": await asyncio.to_thread(proxy.cut)}

    async def stats(_: Any) -> dict[str, Any]:
        return proxy.stats()

    return control_app({("POST", "/mode"): mode, ("POST", "/cut"): cut, ("GET", "/stats"): stats})


def _build_parser() -> argparse.ArgumentParser:
    modes = "\n".join(f"  {name:10} {text}" for name, text in MODES.items())
    parser = argparse.ArgumentParser(
        prog="python -m license_keeper.testing.faultproxy",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="An HTTPS proxy on 127.0.0.1 in front of a Kubernetes API server that injects faults.",
        epilog=f"""modes:
{modes}

control (plain HTTP on 127.0.0.1:CONTROL_PORT):
  POST /mode  {{"mode": "cut_after", "bytes": 0, "watch": true}}   one rule (filters: methods, path, watch)
  POST /mode  {{"rules": [{{"mode": "503", "methods": ["POST"], "path": "/events"}}]}}   several, first match wins
  POST /mode  {{"mode": "html", "status": 404, "content_type": "application/json", "watch": false}}
  POST /cut   cut every open connection now
  GET  /stats counters and rules""",
    )
    parser.add_argument("--upstream", required=True, help="the API server, e.g. https://127.0.0.1:6443")
    parser.add_argument("--upstream-ca", required=True, type=Path, help="CA file that signed the API server's cert")
    parser.add_argument("--dir", required=True, type=Path, help="directory for the proxy's own TLS material")
    parser.add_argument("--port", type=int, default=0, help="listen port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--control-port", type=int, default=0, help="control port on 127.0.0.1 (default: free)")
    parser.add_argument("--mode", default="pass", choices=sorted(MODES), help="initial mode for every request")
    parser.add_argument("--kubeconfig", type=Path, help="write a kubeconfig reaching the API server via the proxy")
    parser.add_argument("--token", help="bearer token for --kubeconfig")
    parser.add_argument("--user", default="user", help="user name in --kubeconfig")
    parser.add_argument("--namespace", default="default", help="namespace in --kubeconfig")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.kubeconfig and not args.token:
        print("error: --kubeconfig needs --token", file=sys.stderr)
        return 2
    proxy = FaultProxy(args.upstream, args.upstream_ca, tls_dir=args.dir, port=args.port).start()
    try:
        if args.mode != "pass":
            proxy.set_mode(args.mode)
        if args.kubeconfig:
            proxy.write_kubeconfig(args.kubeconfig, token=args.token, user=args.user, namespace=args.namespace)
            print(f"kubeconfig: {args.kubeconfig}")

        def announce(info: dict[str, Any]) -> None:
            print(f"fault proxy at {proxy.address} (CA {proxy.ca_file}); control at {info['control_url']}")
            print("Ctrl-C stops it.", flush=True)

        async def run() -> None:
            await serve_until_stopped(stop_on_signals(), {}, _control_app(proxy), args.control_port, announce=announce)

        asyncio.run(run())
    finally:
        proxy.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
