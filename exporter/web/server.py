"""A small HTTP/1.1 server on one asyncio event loop in one thread: an idle or slow connection
costs a few kilobytes and a file descriptor, not a thread. It knows nothing of what it serves:
each request goes to a handler (a callable taking the connection and the request), which
answers with ``conn.send``.

Limits kept here, each against a kind of hostile client (connection.py and sending.py keep
the others; see the README's security section):

* a TLS handshake must end within HEAD_TIMEOUT (from the connection's start);
* with TLS on, plain HTTP sent to the port is answered ``400`` as Go's servers answer it;
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
_ACCEPT_BATCH = 64  # connections accepted per wakeup of the listening socket
_TLS_RECORD = 0x16  # the first byte of a TLS handshake record (a ClientHello)
# the first 5 bytes Go's net/http takes for HTTP on a TLS port, and what it answers
_HTTP_STARTS = (b"GET /", b"HEAD ", b"POST ", b"PUT /", b"OPTIO")
PLAIN_HTTP_ANSWER = (
    b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
)

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
        server: asyncio.AbstractServer | None = None
        if self.ssl_context is None:
            server = await self.loop.create_server(
                lambda: Connection(self), sock=self.socket, backlog=1024
            )
        else:
            self.sniffer = _Sniffer(self)
        sweeper = asyncio.create_task(self._sweep())
        self._ready.set()
        await self._stop.wait()
        if server is not None:
            server.close()
        else:
            self.sniffer.close()
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
            if self.ssl_context is not None:
                self.sniffer.sweep(now)
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


class _Sniffer:
    """With TLS on, connections are accepted here, without TLS, and their first bytes looked
    at (peeked, not read) before TLS sees any: a TLS handshake record goes on to the TLS
    handshake (which must end within HEAD_TIMEOUT of the connection's start); plain HTTP is
    answered ``400`` as Go's servers answer it, and closed; anything else is closed. A
    connection that says nothing conclusive within HEAD_TIMEOUT is closed by the sweep."""

    def __init__(self, server: HTTPServer) -> None:
        self.server = server
        self.loop = server.loop
        self.listening = server.socket
        self.pending: dict[socket.socket, float] = {}  # socket -> its deadline
        self.heard: dict[socket.socket, bytes] = {}  # the first bytes of plain connections
        self.lingering: dict[socket.socket, int] = {}  # answered: bytes still to drop
        self.handshakes: set[asyncio.Task[None]] = set()
        self.closed = False
        self.accept_failures = 0
        self.loop.add_reader(self.listening.fileno(), self._accept)

    def _accept(self) -> None:
        for _ in range(_ACCEPT_BATCH):
            try:
                sock, _addr = self.listening.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as err:  # out of descriptors: try again a little later
                self.accept_failures += 1
                if log_count(self.accept_failures):
                    log.warning(
                        "cannot accept a connection",
                        extra={"err": err, "failures": self.accept_failures},
                    )
                self.loop.remove_reader(self.listening.fileno())
                self.loop.call_later(0.1, self._resume_accepting)
                return
            sock.setblocking(False)
            self.pending[sock] = time.monotonic() + connection.HEAD_TIMEOUT
            self.loop.add_reader(sock.fileno(), self._sniff, sock)

    def _resume_accepting(self) -> None:
        if not self.closed:
            self.loop.add_reader(self.listening.fileno(), self._accept)

    def _sniff(self, sock: socket.socket) -> None:
        """A TLS record is only peeked at (TLS reads it); anything else is read here: it never
        goes to TLS, and a level-triggered reader would spin on bytes left unread."""
        heard = self.heard.get(sock, b"")
        try:
            if not heard and sock.recv(1, socket.MSG_PEEK) == bytes([_TLS_RECORD]):
                self._to_tls(sock)
                return
            more = sock.recv(5 - len(heard))
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            more = b""
        heard += more
        self.heard[sock] = heard
        if len(heard) == 5 and heard in _HTTP_STARTS:
            self._answer_plain_http(sock)
        elif not more or not any(start.startswith(heard) for start in _HTTP_STARTS):
            self._drop(sock)
        # else the beginning of one of _HTTP_STARTS: wait for the rest (the sweep's deadline)

    def _to_tls(self, sock: socket.socket) -> None:
        deadline = self.pending.pop(sock)
        self.loop.remove_reader(sock.fileno())
        task = self.loop.create_task(self._handshake(sock, deadline))
        self.handshakes.add(task)
        task.add_done_callback(self.handshakes.discard)

    async def _handshake(self, sock: socket.socket, deadline: float) -> None:
        server = self.server
        try:
            await self.loop.connect_accepted_socket(
                lambda: Connection(server),
                sock,
                ssl=server.ssl_context,
                ssl_handshake_timeout=max(0.1, deadline - time.monotonic()),
            )
        except OSError as err:  # timeouts and TLS errors too; the transport closes the socket
            log.debug("TLS handshake failed", extra={"err": err})

    def _answer_plain_http(self, sock: socket.socket) -> None:
        """Go's answer; then the request is read and dropped for up to LINGER_SECONDS, so that
        closing with it unread does not reset the connection before the client reads the
        answer."""
        del self.pending[sock]
        del self.heard[sock]
        try:
            sock.send(PLAIN_HTTP_ANSWER)
            sock.shutdown(socket.SHUT_WR)
        except OSError:
            self._drop(sock)
            return
        self.pending[sock] = time.monotonic() + connection.LINGER_SECONDS
        self.lingering[sock] = connection.LINGER_BYTES
        self.loop.remove_reader(sock.fileno())
        self.loop.add_reader(sock.fileno(), self._linger, sock)

    def _linger(self, sock: socket.socket) -> None:
        try:
            data = sock.recv(65536)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            data = b""
        self.lingering[sock] -= len(data)
        if not data or self.lingering[sock] <= 0:
            self._drop(sock)

    def _drop(self, sock: socket.socket) -> None:
        self.pending.pop(sock, None)
        self.heard.pop(sock, None)
        self.lingering.pop(sock, None)
        self.loop.remove_reader(sock.fileno())
        sock.close()

    def sweep(self, now: float) -> None:
        for sock in [s for s, deadline in self.pending.items() if deadline < now]:
            self._drop(sock)

    def close(self) -> None:
        self.closed = True
        self.loop.remove_reader(self.listening.fileno())
        for sock in list(self.pending):
            self._drop(sock)
        for task in self.handshakes:
            task.cancel()


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
