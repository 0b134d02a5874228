"""HTTP side: the telemetry path, a landing page, health and readiness, TLS and basic auth.

A scrape sends the exposition's stored bytes plus the live part; it never calls the API and never
waits for a poll. One asyncio event loop in one thread serves every connection: an idle or slow
connection costs a few kilobytes and a file descriptor, not a thread. h11 parses requests (and
only requests: a body is framed by it, read and thrown away, never parsed as a request).

Limits, each against a kind of hostile client (see the README's security section):

* a request head must arrive whole within HEAD_TIMEOUT of its first byte (a total deadline, not
  one per read) and fit in MAX_HEAD_BYTES (431 beyond); a TLS handshake must end within
  HEAD_TIMEOUT too; an idle keep-alive connection is closed after IDLE_TIMEOUT;
* a request body is read and discarded up to MAX_BODY_BYTES (413 and close beyond);
* an answer the client does not read within SEND_TIMEOUT closes the connection;
* the soft open-files limit is raised to the hard one at start and the connection cap is sized
  to it (minus a reserve for the process's own files);
* near the cap, the idle keep-alive connection idle longest gives way to a new connection;
* an answer the socket does not take at once (every big TLS answer) is sent in SEND_PIECE
  pieces, each once the client has read the one before; at most MAX_SENDING such answers are
  under way at once (beyond, the one whose client has not read for STALL_GRACE is closed);
* bcrypt runs in a small thread pool, never in the loop, with at most MAX_AUTH_PENDING checks
  pending (MAX_AUTH_PENDING_PER_CLIENT per client address; 429 beyond); the web config's
  rate_limit answers 429;
* POST /-/reload refuses what a browser sends cross-site (403);
* the landing page is rendered at most once per LANDING_TTL.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import email.utils
import logging
import os
import resource
import socket
import ssl
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

import h11

from .. import __version__
from ..metrics import Chunk, Exposition, StoredFile, negotiate
from ..store import Store
from ..worker import release_memory
from .landing import render_landing
from .webconfig import WebConfig

log = logging.getLogger("exporter.web")

HEAD_TIMEOUT = 5.0  # a whole request head (and body), or a TLS handshake, from its first byte
IDLE_TIMEOUT = 60.0  # a keep-alive connection with no request under way
SEND_TIMEOUT = 30.0  # an answer the client does not read
PIPELINE_BATCH = 4  # pipelined requests answered in a row before other connections' turn
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
FD_RESERVE = 128  # descriptors kept for the process itself (stored files, logs, the worker)
SMALL_FILE = 64 * 1024
SEND_PIECE = 64 * 1024  # what sendfile did not send at once (and every TLS answer), in pieces
MAX_SENDING = 256  # answers sent in pieces at once (each holds about two pieces in memory)
STALL_GRACE = 2.0  # past MAX_SENDING, an answer unread this long is closed for a new one
MAX_AUTH_PENDING = 8  # bcrypt checks queued or running in the pool (2 threads); 429 beyond
MAX_AUTH_PENDING_PER_CLIENT = 4  # of those, from one client address
LANDING_TTL = 1.0  # the landing page is rendered at most this often
LANDING_STALE = 5.0  # while a new one renders, the last page is served up to this age
TRIM_AFTER_BYTES = 8 * 1024 * 1024  # piecewise answers of this many bytes in all: malloc_trim
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024
_SWEEP_INTERVAL = 0.5
_TEXT = "text/plain; charset=utf-8"
_REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Content Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip


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


class RateLimiter:
    """exporter-toolkit's rate_limit: a token bucket, one token per interval, ``burst`` deep."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class WebApp:
    """What the handler serves; built by the CLI from the other stages."""

    def __init__(
        self,
        exposition: Exposition,
        store: Store,
        ready: Callable[[], bool],
        web_config: WebConfig | None = None,
        telemetry_path: str = "/metrics",
        reload: Callable[[], tuple[bool, str]] | None = None,
    ) -> None:
        self.exposition = exposition
        self.store = store
        self.ready = ready
        self.web_config = web_config or WebConfig()
        self.telemetry_path = telemetry_path
        # POST /-/reload calls this ((ok, message)); None: the lifecycle API is not enabled
        self.reload = reload
        self.started = time.time()
        # for the landing page (exporter/landing.py): budgets and intervals, the demo banner
        self.config: Any = None
        self.demo = False


class _Conn(asyncio.Protocol):
    """One client connection. Requests are parsed and answered in data_received, without a
    task or a future per request; a task is made only for what must wait (bcrypt in the
    pool, a reload, an answer the socket did not take at once), with reading paused."""

    def __init__(self, server: ExporterHTTPServer) -> None:
        self.server = server
        self.transport: Any = None
        # a new connection owes its first request head within HEAD_TIMEOUT; only a kept-alive
        # connection that has been answered may then wait IDLE_TIMEOUT for the next one
        self.deadline = time.monotonic() + HEAD_TIMEOUT
        self.task: asyncio.Task[None] | None = None
        self.lingering: int | None = None  # bytes dropped after an error answer
        self._drained: asyncio.Future[None] | None = None
        self.stalled_since: float | None = None  # when the socket last stopped taking bytes
        self.peer = ""  # the client's address (pending bcrypt checks are bounded per address)
        self._reset(b"")

    def _reset(self, pending: bytes) -> None:
        """A fresh h11 state per request; ``pending`` is what came after the last one."""
        self.parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        self.request: h11.Request | None = None
        self.body = 0
        self.fed = len(pending)
        self.head_started = bool(pending)
        if pending:
            self.parser.receive_data(pending)
            self.deadline = time.monotonic() + HEAD_TIMEOUT
            self.server.idle.pop(self, None)

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if len(server.open) >= server.max_connections and not server.make_room():
            server.refused += 1
            if _log_count(server.refused):
                log.warning(
                    "too many open connections, refusing", extra={"refused": server.refused}
                )
            transport.abort()
            return
        server.open.add(self)
        # a TLS transport encrypts what it is given at once: the pieces of an answer must
        # wait for the client (SEND_PIECE), not pile up in its buffer (512 KiB by default)
        transport.set_write_buffer_limits(high=SEND_PIECE)
        peer = transport.get_extra_info("peername")
        self.peer = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        if server.ssl_context is not None:
            cert = transport.get_extra_info("peercert")
            if not server.app.web_config.client_allowed(cert or {}):
                log.debug("client certificate not allowed")
                transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        self.server.idle.pop(self, None)
        self.server.sending.discard(self)
        if self.task is not None:
            self.task.cancel()
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)

    def pause_writing(self) -> None:
        self._drained = self.server.loop.create_future()
        self.stalled_since = time.monotonic()

    def resume_writing(self) -> None:
        if self._drained is not None and not self._drained.done():
            self._drained.set_result(None)
        self._drained = None
        self.stalled_since = None

    def _idle(self) -> None:
        """Answered, and waiting for the next request: it may wait IDLE_TIMEOUT, and gives way
        to a new connection near the cap (the longest idle first)."""
        self.deadline = time.monotonic() + IDLE_TIMEOUT
        self.server.idle.pop(self, None)
        self.server.idle[self] = None

    async def drain(self) -> None:
        if self._drained is not None:
            await self._drained
        if self.transport.is_closing():
            raise ConnectionResetError("connection closed")

    def data_received(self, data: bytes) -> None:
        if self.lingering is not None:
            self.lingering += len(data)
            if self.lingering > LINGER_BYTES:
                self.transport.abort()
            return
        if not self.head_started:
            self.head_started = True
            self.deadline = time.monotonic() + HEAD_TIMEOUT  # the head's first bytes
            self.server.idle.pop(self, None)
        self.parser.receive_data(data)
        self.fed += len(data)
        if self.task is None:
            self._process()
        else:  # an answer under way: the next request waits, and so does reading
            self.transport.pause_reading()

    def eof_received(self) -> bool:
        if self.lingering is not None:
            self.transport.abort()
            return True
        self.parser.receive_data(b"")
        if self.task is None:
            self._process()
        return self.server.ssl_context is None  # TLS transports close on EOF regardless

    # -- requests -----------------------------------------------------------------------------
    def _process(self) -> None:
        """Parse and answer what has arrived, request after request.

        At most PIPELINE_BATCH pipelined requests are answered before the loop serves other
        connections, and none while this client is not reading its answers: a client
        pipelining thousands of cheap requests can neither hold the loop nor fill memory.
        """
        server = self.server
        answered = 0
        while not self.transport.is_closing():
            if answered and (answered >= PIPELINE_BATCH or self._drained is not None):
                self.transport.pause_reading()
                self.task = server.loop.create_task(self._finish(self._pause()))
                return
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint if err.error_status_hint in _REASONS else 400
                self._fail(status)
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                self.request = event
                names = {name for name, _ in event.headers}
                if b"content-length" in names and b"transfer-encoding" in names:
                    # framed two ways: a proxy in front may frame it the other way (RFC 9112
                    # 6.1: reject or close); refuse it and close
                    self._fail(400)
                    return
                if self.parser.they_are_waiting_for_100_continue:
                    self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
                fed = self.fed  # a head that came whole in one read: h11 took it all
                if (
                    fed > MAX_HEAD_BYTES
                    and fed - len(self.parser.trailing_data[0]) > MAX_HEAD_BYTES
                ):
                    self._fail(431)
                    return
            elif isinstance(event, h11.Data):
                self.body += len(event.data)
                if self.body > MAX_BODY_BYTES:
                    self._fail(413)
                    return
            elif isinstance(event, h11.EndOfMessage):
                request = self.request
                assert request is not None
                self._reset(self.parser.trailing_data[0])
                self.deadline = time.monotonic() + SEND_TIMEOUT
                outcome = server.respond(self, request)
                answered += 1
                if not isinstance(outcome, bool):
                    self.transport.pause_reading()
                    self.task = server.loop.create_task(self._finish(outcome))
                    return
                if not outcome:
                    self.transport.close()
                    return
                if not self.head_started:
                    self._idle()
            else:  # ConnectionClosed, or PAUSED after a half-close
                self.transport.close()
                return

    async def _pause(self) -> bool:
        """Let other connections run, and wait until this client reads what it was sent."""
        await asyncio.sleep(0)
        await self.drain()
        return True

    async def _finish(self, outcome: Coroutine[Any, Any, bool]) -> None:
        try:
            keep = await outcome
        except (ConnectionError, OSError, ssl.SSLError):
            keep = False
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("serving a connection failed")
            keep = False
        self.task = None
        if not keep or self.transport.is_closing():
            self.transport.close()
            return
        if not self.head_started:
            self._idle()
        self.transport.resume_reading()
        self._process()

    def _fail(self, status: int) -> None:
        """An error answer to a client that may still be sending: answer, stop writing, and
        drop what still comes for a moment (LINGER_SECONDS, LINGER_BYTES) before closing, so
        the close does not reset the connection before the client has read the answer."""
        body = f"{_REASONS[status]}\n".encode()
        self.transport.write(self.server.head(status, _TEXT, len(body), True) + body)
        self.lingering = 0
        self.deadline = time.monotonic() + LINGER_SECONDS
        if self.transport.can_write_eof():
            self.transport.write_eof()


class ExporterHTTPServer:
    """The asyncio server, run by its own thread; ``shutdown``/``server_close`` stop it."""

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = app
        self.ssl_context = ssl_context
        self.max_connections = max(64, raise_open_files_limit() - FD_RESERVE)
        self.open: set[_Conn] = set()
        self.idle: dict[_Conn, None] = {}  # answered keep-alive connections, longest idle first
        self.sending: set[_Conn] = set()  # answers under way in pieces
        self.refused = 0
        self.evicted = 0  # idle connections closed for a new one at the cap
        self.stalled_closed = 0  # piecewise answers closed for a new one past MAX_SENDING
        self.auth_pending = 0
        self.auth_pending_by: dict[str, int] = {}
        self._landing: tuple[float, bytes] = (float("-inf"), b"")
        self._rendering: asyncio.Future[bytes] | None = None
        self.landing_renders = 0
        self._sent_pieces = 0  # bytes sent in pieces since the last malloc_trim
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="auth")
        self._limiter = None
        rate = app.web_config.rate_limit
        if rate is not None:
            self._limiter = RateLimiter(*rate)
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
            lambda: _Conn(self),
            sock=self.socket,
            ssl=self.ssl_context,
            ssl_handshake_timeout=HEAD_TIMEOUT if self.ssl_context else None,
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
        self._auth_pool.shutdown(wait=False)

    def server_close(self) -> None:
        self.socket.close()

    async def _sweep(self) -> None:
        """Close connections past their deadline: one timer for all, none per read. Once the
        piecewise answers are over, hand what they used back to the OS (glibc keeps it)."""
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in [c for c in self.open if c.deadline < now]:
                conn.transport.abort()
            if self._sent_pieces >= TRIM_AFTER_BYTES and not self.sending:
                self._sent_pieces = 0
                release_memory()

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
        if _log_count(self.evicted):
            log.warning(
                "connection cap reached: closed the connection idle longest",
                extra={"closed": self.evicted},
            )
        return True

    # -- answers ------------------------------------------------------------------------------
    def respond(self, conn: _Conn, request: h11.Request) -> bool | Coroutine[Any, Any, bool]:
        """Answer one request: whether the connection stays open, or a coroutine that tells
        when the answer has to wait (bcrypt, a reload, a socket that is full)."""
        keep = request.http_version == b"1.1"
        headers: dict[bytes, bytes] = {}
        for name, value in request.headers:
            if name in headers:
                headers[name] += b", " + value
            else:
                headers[name] = value
            if name == b"connection" and b"close" in value.lower():
                keep = False
        close = not keep
        method = request.method
        target = request.target.split(b"?", 1)[0].decode("latin-1")
        app = self.app
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD", b"POST"):
            return self.send(conn, 501, b"Not Implemented\n", _TEXT, head, close)
        if target == "/-/healthy" and method != b"POST":
            return self.send(conn, 200, b"Healthy\n", _TEXT, head, close)
        if target == "/-/ready" and method != b"POST":
            if app.ready():
                return self.send(conn, 200, b"Ready\n", _TEXT, head, close)
            body = b"Not ready: first polls running\n"
            return self.send(conn, 503, body, "text/plain", head, close)
        if self._limiter is not None and not self._limiter.allow():
            return self.send(conn, 429, b"Too Many Requests\n", _TEXT, head, close)
        if (method == b"POST") != (target == "/-/reload"):  # as Prometheus: 405 and Allow
            allow = {"Allow": "POST" if target == "/-/reload" else "GET, HEAD"}
            return self.send(conn, 405, b"Method Not Allowed\n", _TEXT, head, close, allow)
        if method == b"POST":
            refusal = cross_site(headers) if app.reload is not None else None
            if refusal is not None:
                body = f"Forbidden: {refusal}\n".encode()
                return self.send(conn, 403, body, _TEXT, False, close)
        web = app.web_config
        auth = headers.get(b"authorization")
        auth_text = auth.decode("latin-1") if auth is not None else None
        if web.auth_required and not web.check_cached(auth_text):
            if auth_text is None:  # nothing to check: no bcrypt, no place in its queue
                return self._unauthorized(conn, head, close)
            if not self._auth_admit(conn.peer):
                body = b"Too many password checks pending, retry later\n"
                extra = {"Retry-After": "1"}
                return self.send(conn, 429, body, _TEXT, head, close, extra)
            return self._respond_after_bcrypt(conn, auth_text, method, target, headers, close)
        return self._authorized(conn, method, target, headers, close)

    def _auth_admit(self, peer: str) -> bool:
        """A place for one more bcrypt check: at most MAX_AUTH_PENDING queued or running, and
        MAX_AUTH_PENDING_PER_CLIENT from one address, so a flood of wrong passwords cannot
        queue a correct one behind minutes of checks (it gets 429 at once instead)."""
        mine = self.auth_pending_by.get(peer, 0)
        if self.auth_pending >= MAX_AUTH_PENDING or mine >= MAX_AUTH_PENDING_PER_CLIENT:
            return False
        self.auth_pending += 1
        self.auth_pending_by[peer] = mine + 1
        return True

    def _auth_done(self, peer: str) -> None:
        self.auth_pending -= 1
        left = self.auth_pending_by[peer] - 1
        if left:
            self.auth_pending_by[peer] = left
        else:
            del self.auth_pending_by[peer]

    async def _respond_after_bcrypt(
        self,
        conn: _Conn,
        auth: str | None,
        method: bytes,
        target: str,
        headers: dict[bytes, bytes],
        close: bool,
    ) -> bool:
        # bcrypt takes tens of milliseconds: in the pool, never in the loop. Its place is
        # given back when the check ends, not when the client goes: a check that has started
        # runs on after a client hangs up (one not started yet is dropped from the queue)
        peer = conn.peer
        try:
            job = self._auth_pool.submit(self.app.web_config.check_basic_auth, auth)
        except RuntimeError:  # shutting down
            self._auth_done(peer)
            return False
        loop = self.loop

        def done(_job: concurrent.futures.Future[bool]) -> None:
            try:
                loop.call_soon_threadsafe(self._auth_done, peer)
            except RuntimeError:  # the loop is closed: the server has stopped
                pass

        job.add_done_callback(done)
        if await asyncio.wrap_future(job, loop=loop):
            outcome = self._authorized(conn, method, target, headers, close)
        else:
            outcome = self._unauthorized(conn, method == b"HEAD", close)
        return outcome if isinstance(outcome, bool) else await outcome

    def _unauthorized(
        self, conn: _Conn, head: bool, close: bool
    ) -> bool | Coroutine[Any, Any, bool]:
        extra = {"WWW-Authenticate": 'Basic realm="scaleengine-exporter"'}
        return self.send(conn, 401, b"Unauthorized\n", _TEXT, head, close, extra)

    def _authorized(
        self, conn: _Conn, method: bytes, target: str, headers: dict[bytes, bytes], close: bool
    ) -> bool | Coroutine[Any, Any, bool]:
        app = self.app
        head = method == b"HEAD"
        if method == b"POST":
            if app.reload is None:
                body = b"Lifecycle API is not enabled.\n"
                return self.send(conn, 403, body, _TEXT, False, close)
            return self._reload(conn, close)
        if target == app.telemetry_path:
            accept = headers.get(b"accept")
            encoding = headers.get(b"accept-encoding")
            openmetrics, gzip = negotiate(
                accept.decode("latin-1") if accept else None,
                encoding.decode("latin-1") if encoding else None,
            )
            chunks, content_type = app.exposition.payload(openmetrics, gzip)
            extra = {"Vary": "Accept, Accept-Encoding"}
            if gzip:
                extra = {"Content-Encoding": "gzip", **extra}
            return self.send(conn, 200, chunks, content_type, head, close, extra)
        if target == "/":
            page = self.landing()
            if isinstance(page, bytes):
                return self.send(conn, 200, page, "text/html; charset=utf-8", head, close)
            return self._landing_later(conn, page, head, close)
        return self.send(conn, 404, b"Not Found\n", _TEXT, head, close)

    def landing(self) -> bytes | asyncio.Future[bytes]:
        """The landing page, rendered at most once per LANDING_TTL and never in the loop (with
        5,000 apps a render takes about 90 ms, which a flood of "/" must not take from
        scrapes): while a newer one renders in a thread, the last one is served if it is
        younger than LANDING_STALE; else (after a quiet while) the render to wait for."""
        rendered, page = self._landing
        age = time.monotonic() - rendered
        rendering = self._rendering
        if rendering is None and age >= LANDING_TTL:
            rendering = self._rendering = self.loop.run_in_executor(None, self._render_landing)
            rendering.add_done_callback(self._rendered)
        if rendering is None or age < LANDING_STALE:
            return page
        return rendering

    def _render_landing(self) -> bytes:
        started = time.monotonic()
        page = render_landing(self.app).encode()
        self.landing_renders += 1
        self._landing = (started, page)
        return page

    def _rendered(self, _future: asyncio.Future[bytes]) -> None:
        self._rendering = None

    async def _landing_later(
        self, conn: _Conn, rendering: asyncio.Future[bytes], head: bool, close: bool
    ) -> bool:
        page = await asyncio.shield(rendering)
        outcome = self.send(conn, 200, page, "text/html; charset=utf-8", head, close)
        return outcome if isinstance(outcome, bool) else await outcome

    async def _reload(self, conn: _Conn, close: bool) -> bool:
        assert self.app.reload is not None
        ok, message = await self.loop.run_in_executor(None, self.app.reload)
        body = (message.rstrip("\n") + "\n").encode()
        outcome = self.send(conn, 200 if ok else 500, body, _TEXT, False, close)
        return outcome if isinstance(outcome, bool) else await outcome

    def head(
        self,
        status: int,
        content_type: str,
        length: int,
        close: bool,
        extra: dict[str, str] | None = None,
    ) -> bytes:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Server: scaleengine-exporter/{__version__}",
            f"Date: {self._date[1]}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        lines += [f"{k}: {v}" for k, v in self.app.web_config.headers.items()]
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {length}")
        if close:
            lines.append("Connection: close")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")

    def send(
        self,
        conn: _Conn,
        status: int,
        body: bytes | list[Chunk],
        content_type: str,
        head: bool,
        close: bool,
        extra: dict[str, str] | None = None,
    ) -> bool | Coroutine[Any, Any, bool]:
        """Write one answer, at once when the socket takes it; else a coroutine for the rest."""
        chunks = [body] if isinstance(body, bytes) else body
        length = sum(len(c) for c in chunks)
        parts: list[Chunk] = [self.head(status, content_type, length, close, extra)]
        if not head:
            parts += [c for c in chunks if len(c)]
        transport = conn.transport
        rest: list[Any] = parts
        if self.ssl_context is not None:  # no sendfile through TLS: small answers at once,
            if sum(len(p) for p in parts) <= SEND_PIECE:  # the others in pieces
                transport.write(
                    b"".join(c.read() if isinstance(c, StoredFile) else c for c in parts)
                )
                rest = []
        elif not transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                rest = _send_now(sock, parts)
        if rest or transport.get_write_buffer_size():
            return self._send_rest(conn, rest, close)
        return not close

    async def _send_rest(self, conn: _Conn, rest: list[Any], close: bool) -> bool:
        """What the socket did not take at once, in SEND_PIECE pieces, each once the client
        has read the one before: a client that does not read holds two pieces or so, never
        the answer (through TLS, the whole answer goes this way; the loop's own sendfile is
        asyncio's only). At most MAX_SENDING answers go this way at once."""
        if rest:
            await self._sending_place(conn)
        try:
            for part in rest:
                if isinstance(part, StoredFile):
                    part = (part, 0, part.size)
                if isinstance(part, tuple):
                    stored, offset, size = part
                    end = offset + size
                    while offset < end:
                        piece = os.pread(stored.fd, min(SEND_PIECE, end - offset), offset)
                        if not piece:
                            raise ConnectionResetError("stored file shorter than its size")
                        offset += len(piece)
                        await self._write_piece(conn, piece)
                else:
                    view = memoryview(part)
                    for start in range(0, len(view), SEND_PIECE):
                        await self._write_piece(conn, view[start : start + SEND_PIECE])
            await conn.drain()
        finally:
            self.sending.discard(conn)
        return not close

    async def _write_piece(self, conn: _Conn, piece: bytes | memoryview) -> None:
        await conn.drain()
        conn.transport.write(piece)
        self._sent_pieces += len(piece)

    async def _sending_place(self, conn: _Conn) -> None:
        """Wait for one of the MAX_SENDING places of piecewise answers. When they are all
        taken, the answer whose client has not read anything for STALL_GRACE or longer (the
        longest first) is closed to make room; else this one waits for a place."""
        while len(self.sending) >= MAX_SENDING:
            stalled = [c for c in self.sending if c.stalled_since is not None]
            victim = min(stalled, key=lambda c: c.stalled_since or 0.0, default=None)
            if victim is not None and time.monotonic() - (victim.stalled_since or 0) >= STALL_GRACE:
                self.sending.discard(victim)
                victim.transport.abort()
                self.stalled_closed += 1
                if _log_count(self.stalled_closed):
                    log.warning(
                        "too many answers under way: closed the one not read for longest",
                        extra={"closed": self.stalled_closed},
                    )
                continue
            await asyncio.sleep(0.1)
        self.sending.add(conn)


def _log_count(n: int) -> bool:
    """Whether the n-th occurrence of a repeated event is logged: 1, 10, 100, every 1000th."""
    return n in (1, 10, 100) or n % 1000 == 0


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def cross_site(headers: dict[bytes, bytes]) -> str | None:
    """Why a POST looks like a browser's cross-site request (a form or a fetch from another
    site's page), or None. As Go's http.CrossOriginProtection: ``Sec-Fetch-Site`` other than
    ``same-origin`` or ``none``, else an ``Origin`` that is not this host; and, for browsers
    older than both headers, the content types a cross-site form can send. ``curl -X POST``
    sends none of these."""
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {fetch_site[:20]})"
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if not fetch_site and origin:
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if origin.lower().partition("://")[2].rstrip("/") != host:
            return "cross-origin request (Origin is not this host)"
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    media = content_type.partition(";")[0].strip().lower()
    if media in _FORM_TYPES:
        return f"a form's content type ({media}), as a cross-site form sends"
    return None


def _send_now(sock: Any, parts: list[Chunk]) -> list[Any]:
    """Send what the non-blocking socket takes now, without a trip through the event loop:
    bytes by writev, stored files by sendfile. Returns the rest: bytes, StoredFile, or
    (StoredFile, offset, size) for part of one.

    Not corked: with TCP_CORK, a gzip answer sent right after the client had paused (to
    decode the previous one) stalled for about 90 ms on loopback, about 1 in 10 scrapes."""
    fd = sock.fileno()
    # a small stored file costs less read into the one writev than sent by sendfile
    rest: list[Any] = [
        p.read() if isinstance(p, StoredFile) and p.size <= SMALL_FILE else p for p in parts
    ]
    try:
        while rest:
            part = rest[0]
            if isinstance(part, StoredFile):
                part = (part, 0, part.size)
            if isinstance(part, tuple):
                stored, offset, size = part
                sent = os.sendfile(fd, stored.fd, offset, size)
                if sent == 0:
                    raise ConnectionResetError("sendfile sent nothing")
                if sent < size:
                    rest[0] = (stored, offset + sent, size - sent)
                else:
                    del rest[0]
                continue
            n = 1
            while n < len(rest) and isinstance(rest[n], bytes):
                n += 1
            views = rest[:n]
            sent = os.writev(fd, views)
            if sent < sum(len(v) for v in views):
                rest[:n] = [b"".join(views)[sent:]]
            else:
                del rest[:n]
    except BlockingIOError:
        pass
    return rest


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


def serve(
    address: str,
    app: WebApp,
    ssl_context: ssl.SSLContext | None = None,
) -> tuple[ExporterHTTPServer, threading.Thread]:
    """Bind and serve in a background thread; returns the server (for .url and shutdown)."""
    server = ExporterHTTPServer(parse_listen_address(address), app, ssl_context)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
