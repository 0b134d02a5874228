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
* bcrypt runs in a small thread pool, never in the loop; the web config's rate_limit answers 429.
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
from collections.abc import Callable
from typing import Any

import h11

from . import __version__
from .landing import render_landing
from .metrics import Chunk, Exposition, StoredFile, negotiate
from .store import Store
from .webconfig import WebConfig

log = logging.getLogger(__name__)

HEAD_TIMEOUT = 5.0  # a whole request head (and body), or a TLS handshake, from its first byte
IDLE_TIMEOUT = 60.0  # a keep-alive connection with no request under way
SEND_TIMEOUT = 30.0  # an answer the client does not read
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
FD_RESERVE = 128  # descriptors kept for the process itself (stored files, logs, the worker)
_READ_SIZE = 64 * 1024
SMALL_FILE = 64 * 1024
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


class _Fd:
    """What loop.sendfile wants of a file: a descriptor; offsets are passed explicitly."""

    mode = "rb"

    def __init__(self, fd: int) -> None:
        self._fd = fd

    def fileno(self) -> int:
        return self._fd

    def seek(self, *_: Any) -> None:
        pass


class _Abort(Exception):
    """Close the connection without an answer (timed out, closed, or unusable)."""


class _Conn:
    """One client connection: its reader/writer and the deadline the sweeper enforces."""

    __slots__ = ("reader", "writer", "deadline")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer
        self.deadline = time.monotonic() + IDLE_TIMEOUT


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
        self.refused = 0
        self._auth_pool = concurrent.futures.ThreadPoolExecutor(2, thread_name_prefix="auth")
        self._limiter = None
        rate = app.web_config.rate_limit
        if rate is not None:
            self._limiter = RateLimiter(*rate)
        self.socket = _listen(address)
        self.server_address = self.socket.getsockname()
        self.loop = asyncio.new_event_loop()
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
        server = await asyncio.start_server(
            self._connection,
            sock=self.socket,
            ssl=self.ssl_context,
            ssl_handshake_timeout=HEAD_TIMEOUT if self.ssl_context else None,
            limit=_READ_SIZE,
            backlog=1024,
        )
        sweeper = asyncio.create_task(self._sweep())
        self._ready.set()
        await self._stop.wait()
        server.close()
        sweeper.cancel()
        for conn in list(self.open):
            conn.writer.transport.abort()
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
        """Close connections past their deadline: one timer for all, none per read."""
        while True:
            await asyncio.sleep(_SWEEP_INTERVAL)
            now = time.monotonic()
            for conn in [c for c in self.open if c.deadline < now]:
                conn.writer.transport.abort()

    # -- one connection -----------------------------------------------------------------------
    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if len(self.open) >= self.max_connections:
            self.refused += 1
            if self.refused in (1, 10, 100) or self.refused % 1000 == 0:
                log.warning("too many open connections, refusing", extra={"refused": self.refused})
            writer.transport.abort()
            return
        conn = _Conn(reader, writer)
        self.open.add(conn)
        try:
            sock = writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.ssl_context is not None:
                cert = writer.get_extra_info("peercert")
                if not self.app.web_config.client_allowed(cert or {}):
                    log.debug("client certificate not allowed")
                    return
            pending = b""
            while True:
                request, pending = await self._read_request(conn, pending)
                if request is None:
                    return
                if not await self._respond(conn, request):
                    return
                conn.deadline = time.monotonic() + IDLE_TIMEOUT
        except (_Abort, ConnectionError, OSError, ssl.SSLError, asyncio.IncompleteReadError):
            pass
        except Exception:  # a bug: this connection ends, the server goes on
            log.exception("serving a connection failed")
        finally:
            self.open.discard(conn)
            writer.transport.abort()

    async def _read_request(self, conn: _Conn, pending: bytes) -> tuple[h11.Request | None, bytes]:
        """The next request, its body read and dropped; (None, b"") when the connection ends.

        A fresh h11 state per request: h11 frames the head and the body; the answer is written
        here. The head's deadline starts with its first byte (or at once, when pipelined).
        """
        parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_BYTES)
        if pending:
            parser.receive_data(pending)
            conn.deadline = time.monotonic() + HEAD_TIMEOUT
        request: h11.Request | None = None
        body = 0
        fed = len(pending)
        while True:
            try:
                event = parser.next_event()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint
                if status not in _REASONS:
                    status = 400
                await self._send(conn, status, f"{_REASONS[status]}\n".encode(), _TEXT, False, True)
                await _linger(conn)
                return None, b""
            if event is h11.NEED_DATA:
                data = await conn.reader.read(_READ_SIZE)
                if request is None and not parser.trailing_data[0]:
                    conn.deadline = time.monotonic() + HEAD_TIMEOUT  # the head's first bytes
                parser.receive_data(data)
                fed += len(data)
                if not data and request is None:
                    return None, b""
                if not data:
                    raise _Abort
            elif isinstance(event, h11.Request):
                request = event
                if fed - len(parser.trailing_data[0]) > MAX_HEAD_BYTES:  # it came whole
                    await self._send(conn, 431, b"Request Header Fields Too Large\n", _TEXT,
                                     False, True)  # fmt: skip
                    await _linger(conn)
                    return None, b""
            elif isinstance(event, h11.Data):
                body += len(event.data)
                if body > MAX_BODY_BYTES:
                    await self._send(conn, 413, b"Content Too Large\n", _TEXT, False, True)
                    await _linger(conn)
                    return None, b""
            elif isinstance(event, h11.EndOfMessage):
                assert request is not None
                data, _ = parser.trailing_data
                return request, data
            else:  # ConnectionClosed
                return None, b""

    async def _respond(self, conn: _Conn, request: h11.Request) -> bool:
        """Answer one request; False when the connection must close afterwards."""
        keep = request.http_version == b"1.1"
        headers: dict[bytes, bytes] = {}
        for name, value in request.headers:
            if name in headers:
                headers[name] += b", " + value
            else:
                headers[name] = value
            if name == b"connection" and b"close" in value.lower():
                keep = False
        conn.deadline = time.monotonic() + SEND_TIMEOUT
        method = request.method
        target = request.target.split(b"?", 1)[0].decode("latin-1")
        app = self.app
        head = method == b"HEAD"
        if method not in (b"GET", b"HEAD", b"POST"):
            return await self._send(conn, 501, b"Not Implemented\n", _TEXT, head, not keep)
        if target == "/-/healthy" and method != b"POST":
            return await self._send(conn, 200, b"Healthy\n", _TEXT, head, not keep)
        if target == "/-/ready" and method != b"POST":
            if app.ready():
                return await self._send(conn, 200, b"Ready\n", _TEXT, head, not keep)
            return await self._send(
                conn, 503, b"Not ready: first polls running\n", "text/plain", head, not keep
            )
        if self._limiter is not None and not self._limiter.allow():
            return await self._send(conn, 429, b"Too Many Requests\n", _TEXT, head, not keep)
        if method == b"POST" and target != "/-/reload":
            return await self._send(conn, 405, b"Method Not Allowed\n", _TEXT, head, not keep)
        if not await self._authorized(headers.get(b"authorization")):
            extra = {"WWW-Authenticate": 'Basic realm="scaleengine-exporter"'}
            return await self._send(conn, 401, b"Unauthorized\n", _TEXT, head, not keep, extra)
        if method == b"POST":
            if app.reload is None:
                body = b"Lifecycle API is not enabled.\n"
                return await self._send(conn, 403, body, _TEXT, False, not keep)
            ok, message = await self.loop.run_in_executor(None, app.reload)
            body = (message.rstrip("\n") + "\n").encode()
            return await self._send(conn, 200 if ok else 500, body, _TEXT, False, not keep)
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
            return await self._send(conn, 200, chunks, content_type, head, not keep, extra)
        if target == "/":
            page = render_landing(app).encode()
            return await self._send(conn, 200, page, "text/html; charset=utf-8", head, not keep)
        return await self._send(conn, 404, b"Not Found\n", _TEXT, head, not keep)

    async def _authorized(self, header: bytes | None) -> bool:
        web = self.app.web_config
        if not web.auth_required:
            return True
        value = header.decode("latin-1") if header is not None else None
        if web.check_cached(value):
            return True
        # bcrypt takes tens of milliseconds: never in the loop
        return await self.loop.run_in_executor(self._auth_pool, web.check_basic_auth, value)

    def _http_date(self) -> str:
        now = int(time.time())
        if self._date[0] != now:
            self._date = (now, email.utils.formatdate(now, usegmt=True))
        return self._date[1]

    async def _send(
        self,
        conn: _Conn,
        status: int,
        body: bytes | list[Chunk],
        content_type: str,
        head: bool,
        close: bool,
        extra: dict[str, str] | None = None,
    ) -> bool:
        """Write one answer; returns whether the connection stays open."""
        chunks = [body] if isinstance(body, bytes) else body
        lines = [
            f"HTTP/1.1 {status} {_REASONS[status]}",
            f"Server: scaleengine-exporter/{__version__}",
            f"Date: {self._http_date()}",
        ]
        lines += [f"{k}: {v}" for k, v in (extra or {}).items()]
        lines += [f"{k}: {v}" for k, v in self.app.web_config.headers.items()]
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {sum(len(c) for c in chunks)}")
        if close:
            lines.append("Connection: close")
        parts: list[Chunk] = [("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")]
        if not head:
            parts += [c for c in chunks if len(c)]
        writer = conn.writer
        transport = writer.transport
        if self.ssl_context is not None:  # no sendfile through TLS
            writer.write(b"".join(c.read() if isinstance(c, StoredFile) else c for c in parts))
        else:
            sock = writer.get_extra_info("socket")
            if sock is not None and not transport.get_write_buffer_size():
                parts = _send_now(sock, parts)
            for part in parts:  # what the socket did not take at once
                if isinstance(part, StoredFile):
                    await self.loop.sendfile(transport, _Fd(part.fd), 0, part.size)  # type: ignore[arg-type]
                elif isinstance(part, tuple):
                    stored, offset, size = part
                    await self.loop.sendfile(transport, _Fd(stored.fd), offset, size)  # type: ignore[arg-type]
                else:
                    writer.write(part)
        if transport.get_write_buffer_size():
            await writer.drain()
        return not close


async def _linger(conn: _Conn) -> None:
    """After an error answer to a client still sending: stop writing, and read (and drop) a
    little more before closing, so that the close does not reset the connection before the
    client has read the answer. Bounded in time (LINGER_SECONDS) and bytes."""
    conn.deadline = min(conn.deadline, time.monotonic() + LINGER_SECONDS)
    try:
        if conn.writer.can_write_eof():
            conn.writer.write_eof()
        total = 0
        while total < LINGER_BYTES:
            data = await conn.reader.read(_READ_SIZE)
            if not data:
                break
            total += len(data)
    except (ConnectionError, OSError):
        pass


def _send_now(sock: Any, parts: list[Chunk]) -> list[Any]:
    """Send what the non-blocking socket takes now, without a trip through the event loop:
    bytes by writev, stored files by sendfile, corked so that the answer leaves in full
    segments and the client wakes once. Returns the rest: bytes, StoredFile, or
    (StoredFile, offset, size) for part of one."""
    fd = sock.fileno()
    # a small stored file costs less read into the one writev than sent by sendfile
    rest: list[Any] = [
        p.read() if isinstance(p, StoredFile) and p.size <= SMALL_FILE else p for p in parts
    ]
    cork = any(isinstance(p, StoredFile) for p in rest)
    if cork:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 1)
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
    finally:
        if cork:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_CORK, 0)
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
