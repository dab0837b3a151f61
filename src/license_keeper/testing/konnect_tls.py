"""The TLS front of the Konnect and Kong stand-ins: (mutual) TLS on blocking sockets, relayed to the HTTP app.

The front listens on ``host`` (127.0.0.1 unless a test needs another address, such as a node address pods
can reach); the HTTP app behind it stays on 127.0.0.1, since only the front talks to it.
"""

from __future__ import annotations

import asyncio
import contextlib
import select
import socket
import ssl
import threading
import time

from aiohttp import web

__all__ = ["TLSFront", "check_mode", "follow_mode", "https_url", "shut_down"]


def https_url(host: str, port: int) -> str:
    """``https://host:port``, with an IPv6 address in brackets."""
    return f"https://[{host}]:{port}" if ":" in host else f"https://{host}:{port}"


def check_mode(mode: str, modes: dict[str, str]) -> None:
    if mode not in modes:
        raise ValueError(f"unknown mode {mode!r}; modes: {', '.join(modes)}")


async def follow_mode(front: TLSFront | None, old: str, new: str) -> int | None:
    """Listen, or stop listening, as a stand-in's mode change asks ("closed": connections refused).
    Returns the port listened on (the same one again after "closed"), None without a front."""
    if front is None:
        return None
    if new == "closed" and old != "closed":
        await asyncio.to_thread(front.unlisten)
    elif new != "closed":
        await asyncio.to_thread(front.listen)
    return front.port


async def shut_down(front: TLSFront | None, runner: web.AppRunner | None) -> None:
    """Close the TLS front, then the HTTP app behind it."""
    if front is not None:
        await asyncio.to_thread(front.close)
    if runner is not None:
        await runner.cleanup()


class TLSFront:
    """Terminates mutual TLS on blocking sockets in threads and relays plain bytes to the HTTP backend.

    Why not asyncio's TLS: when an asyncio server rejects a client certificate it drops the connection
    without flushing the TLS alert, so the client only sees a reset. Real servers send the alert
    ("certificate required", "unknown ca"), and the client must be tested against that.
    """

    def __init__(self, ctx: ssl.SSLContext, backend_port: int, port: int, host: str = "127.0.0.1") -> None:
        self._ctx = ctx
        self._backend_port = backend_port
        self.host = host
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
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
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
