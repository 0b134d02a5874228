"""A small HTTP/1.1 server on one asyncio event loop in one thread: an idle or slow connection
costs a few kilobytes and a file descriptor, not a thread. It knows nothing of what it serves:
each request goes to a handler (a callable taking the connection and the request), which
answers with ``conn.send``.

Limits kept here, each against a kind of hostile client (connection.py and sending.py keep
the others; see the README's security section):

* a TLS handshake must end within HEAD_TIMEOUT;
* the soft open-files limit is raised to the hard one at start and the connection cap is sized
  to it (minus a reserve for the process's own files);
* near the cap, the idle keep-alive connection idle longest gives way to a new connection;
* the deadlines of every connection are kept by one sweep, every _SWEEP_INTERVAL.
"""

from __future__ import annotations

import asyncio
import email.utils
import logging
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from . import connection
from .common import REASONS, log_count
from .connection import Connection, Outcome, Request
from .sending import Sender

log = logging.getLogger("exporter.web")

FD_RESERVE = 128  # descriptors kept for the process itself (stored files, logs, the worker)
TRIM_AFTER_BYTES = 8 * 1024 * 1024  # piecewise answers of this many bytes in all: trim memory
_SWEEP_INTERVAL = 0.5

Handler = Callable[[Connection, Request], Outcome]


def parse_listen_address(address: str) -> tuple[str, int]:
    """ ":8491" -> ("", 8491); "127.0.0.1:0"; "[::1]:8491" -> ("::1", 8491)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {address!r} (use host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def raise_open_files_limit() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit (as Go's runtime does); the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError) as err:
            log.warning("cannot raise the open files limit", extra={"err": err})
    return soft if soft != resource.RLIM_INFINITY else 1 << 20


def new_event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop where it is installed (Linux, macOS): it halves the fixed cost of
    an answer (bench/RESULTS.md); asyncio's own loop otherwise."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        return asyncio.new_event_loop()
    return uvloop.new_event_loop()


class HTTPServer:
    """The asyncio server, run by its own thread (``serve_forever``); ``shutdown`` and
    ``server_close`` stop it. ``headers`` go out with every answer; ``client_allowed`` is
    asked about each TLS client's certificate after the handshake; ``trim_memory`` is called
    once answers sent in pieces (TRIM_AFTER_BYTES of them) are over."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: Handler,
        ssl_context: ssl.SSLContext | None = None,
        *,
        server_name: str = "python",
        headers: Mapping[str, str] | None = None,
        client_allowed: Callable[[dict[str, Any]], bool] | None = None,
        trim_memory: Callable[[], None] | None = None,
    ) -> None:
        self.handler = handler
        self.ssl_context = ssl_context
        self.server_name = server_name
        self.headers = dict(headers or {})
        self._client_allowed = client_allowed
        self._trim_memory = trim_memory
        self.max_connections = max(64, raise_open_files_limit() - FD_RESERVE)
        self.open: set[Connection] = set()
        self.idle: dict[Connection, None] = {}  # answered keep-alive ones, longest idle first
        self.sender = Sender(tls=ssl_context is not None)
        self.refused = 0
        self.evicted = 0  # idle connections closed for a new one at the cap
        self.socket = _listen(address)
        self.server_address = self.socket.getsockname()
        self.loop = new_event_loop()
        self._ready = threading.Event()
        self._stopped = threading.Event()
        self._date = (0, "")

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("::", "0.0.0.0"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{port}"

    @property
    def stalled_closed(self) -> int:
        return self.sender.stalled_closed

    # -- lifecycle ----------------------------------------------------------------------------
    def serve_forever(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._main())
        finally:
            self.loop.close()
            self._stopped.set()

    async def _main(self) -> None:
        self._stop = asyncio.Event()
        server = await self.loop.create_server(
            lambda: Connection(self),
            sock=self.socket,
            ssl=self.ssl_context,
            ssl_handshake_timeout=connection.HEAD_TIMEOUT if self.ssl_context else None,
            backlog=1024,
        )
        sweeper = asyncio.create_task(self._sweep())
        self._ready.set()
        await self._stop.wait()
        server.close()
        sweeper.cancel()
        for conn in list(self.open):
            conn.transport.abort()
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    def shutdown(self) -> None:
        """Stop serving and close every connection (from any thread)."""
        if not self._stopped.is_set():
            self._ready.wait(10)
            self.loop.call_soon_threadsafe(self._stop.set)
            self._stopped.wait(10)

    def server_close(self) -> None:
        self.socket.close()

    async def _sweep(self) -> None:
        """Close connections past their deadline: one timer for all, none per read. Once the
        piecewise answers are over, hand what they used back to the OS (glibc keeps it)."""
        sender = self.sender
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in [c for c in self.open if c.deadline < now]:
                conn.transport.abort()
            if sender.sent_pieces >= TRIM_AFTER_BYTES and not sender.sending:
                sender.sent_pieces = 0
                if self._trim_memory is not None:
                    self._trim_memory()

    def make_room(self) -> bool:
        """At the connection cap: close the keep-alive connection idle longest to let a new
        one in. False when every connection is in the middle of a request."""
        conn = next(iter(self.idle), None)
        if conn is None:
            return False
        del self.idle[conn]
        self.open.discard(conn)
        # abort, not close: a TLS close would wait up to 30 s for the client's close_notify,
        # holding the descriptor the new connection needs (an idle one has nothing unread)
        conn.transport.abort()
        self.evicted += 1
        if log_count(self.evicted):
            log.warning(
                "connection cap reached: closed the connection idle longest",
                extra={"closed": self.evicted},
            )
        return True

    # -- what connections ask -----------------------------------------------------------------
    def client_allowed(self, peercert: dict[str, Any]) -> bool:
        return self._client_allowed is None or self._client_allowed(peercert)

    def respond(self, conn: Connection, request: Request) -> Outcome:
        return self.handler(conn, request)

    def head(
        self,
        status: int,
        content_type: str,
        length: int,
        close: bool,
        extra: Mapping[str, str] | None = None,
    ) -> bytes:
        """An answer's status line and headers."""
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        lines = [
            f"HTTP/1.1 {status} {REASONS[status]}",
            f"Server: {self.server_name}",
            f"Date: {self._date[1]}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        lines += [f"{k}: {v}" for k, v in self.headers.items()]
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {length}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def _listen(address: tuple[str, int]) -> socket.socket:
    host, port = address
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    if host == "":
        # ":port" listens on every address, IPv6 and IPv4 where the machine has both
        try:
            socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
            family, host = socket.AF_INET6, "::"
        except OSError:
            host = "0.0.0.0"
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            try:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        sock.bind((host, port))
        sock.listen(1024)
        sock.setblocking(False)
    except OSError:
        sock.close()
        raise
    return sock
