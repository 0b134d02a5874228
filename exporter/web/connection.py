"""One client connection: h11 parses requests (and only requests: a body is framed by it, read
and thrown away, never parsed as a request), each is handed to the server's handler, and the
limits against hostile clients are kept per connection:

* a request head must arrive whole within HEAD_TIMEOUT of its first byte (a total deadline,
  not one per read) and fit in MAX_HEAD_BYTES (431 beyond); an idle keep-alive connection is
  closed after IDLE_TIMEOUT; an answer the client does not read within SEND_TIMEOUT closes it;
* a request body is read and discarded up to MAX_BODY_BYTES (413 and close beyond);
* at most PIPELINE_BATCH pipelined requests are answered before other connections' turn.

The deadlines are kept by the server's sweep (one timer for all, none per read).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import h11

from .common import REASONS, TEXT, log_count
from .sending import SEND_PIECE, Part, Sender

log = logging.getLogger("exporter.web")

HEAD_TIMEOUT = 5.0  # a whole request head (and body), or a TLS handshake, from its first byte
IDLE_TIMEOUT = 60.0  # a keep-alive connection with no request under way
SEND_TIMEOUT = 30.0  # an answer the client does not read
PIPELINE_BATCH = 4  # pipelined requests answered in a row before other connections' turn
MAX_HEAD_BYTES = 16 * 1024
MAX_BODY_BYTES = 64 * 1024
LINGER_SECONDS = 1.0
LINGER_BYTES = 1024 * 1024

Outcome = bool | Coroutine[Any, Any, bool]  # keep the connection open, or a coroutine that tells


@dataclass(frozen=True, slots=True)
class Request:
    """A request as a handler sees it, its body already read and dropped."""

    method: bytes
    target: str  # the path, without the query
    headers: dict[bytes, bytes]  # lower-case names; repeated ones joined with ", "
    close: bool  # the client asked to close after the answer (or speaks HTTP/1.0)


def request_of(event: h11.Request) -> Request:
    keep = event.http_version == b"1.1"
    headers: dict[bytes, bytes] = {}
    for name, value in event.headers:
        if name in headers:
            headers[name] += b", " + value
        else:
            headers[name] = value
        if name == b"connection" and b"close" in value.lower():
            keep = False
    target = event.target.split(b"?", 1)[0].decode("latin-1")
    return Request(event.method, target, headers, not keep)


class Host(Protocol):
    """What a connection needs of its server (server.HTTPServer is one)."""

    loop: asyncio.AbstractEventLoop
    ssl_context: ssl.SSLContext | None
    sender: Sender
    open: set[Connection]
    idle: dict[Connection, None]
    max_connections: int
    refused: int

    def make_room(self) -> bool: ...

    def client_allowed(self, peercert: dict[str, Any]) -> bool: ...

    def respond(self, conn: Connection, request: Request) -> Outcome: ...

    def head(
        self, status: int, content_type: str, length: int, close: bool,
        extra: Mapping[str, str] | None = None,
    ) -> bytes: ...  # fmt: skip


class Connection(asyncio.Protocol):
    """Requests are parsed and answered in data_received, without a task or a future per
    request; a task is made only for what must wait (an answer the socket did not take at
    once, or whatever the handler waits for), with reading paused."""

    def __init__(self, server: Host) -> None:
        self.server = server
        self.transport: Any = None
        # a new connection owes its first request head within HEAD_TIMEOUT; only a kept-alive
        # connection that has been answered may then wait IDLE_TIMEOUT for the next one
        self.deadline = time.monotonic() + HEAD_TIMEOUT
        self.task: asyncio.Task[None] | None = None
        self.lingering: int | None = None  # bytes dropped after an error answer
        self._drained: asyncio.Future[None] | None = None
        self.stalled_since: float | None = None  # when the socket last stopped taking bytes
        self.peer = ""  # the client's address
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

    # -- answers ------------------------------------------------------------------------------
    def send(
        self,
        status: int,
        body: bytes | list[Part],
        content_type: str,
        head: bool,
        close: bool,
        extra: Mapping[str, str] | None = None,
    ) -> Outcome:
        """Write one answer (no body for HEAD), at once when the socket takes it; else a
        coroutine for the rest."""
        chunks = [body] if isinstance(body, bytes) else body
        length = sum(len(c) for c in chunks)
        parts: list[Part] = [self.server.head(status, content_type, length, close, extra)]
        if not head:
            parts += [c for c in chunks if len(c)]
        return self.server.sender.send(self, parts, close)

    # -- asyncio callbacks --------------------------------------------------------------------
    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        server = self.server
        if len(server.open) >= server.max_connections and not server.make_room():
            server.refused += 1
            if log_count(server.refused):
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
            if not server.client_allowed(cert or {}):
                log.debug("client certificate not allowed")
                transport.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.open.discard(self)
        self.server.idle.pop(self, None)
        self.server.sender.sending.discard(self)
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
        answered = 0
        while not self.transport.is_closing():
            if answered and (answered >= PIPELINE_BATCH or self._drained is not None):
                self._wait_for(self._pause())
                return
            try:
                event = self.parser.next_event()
            except h11.RemoteProtocolError as err:
                status = err.error_status_hint if err.error_status_hint in REASONS else 400
                self._fail(status)
                return
            if event is h11.NEED_DATA:
                return
            if isinstance(event, h11.Request):
                if not self._head_received(event):
                    return
            elif isinstance(event, h11.Data):
                self.body += len(event.data)
                if self.body > MAX_BODY_BYTES:
                    self._fail(413)
                    return
            elif isinstance(event, h11.EndOfMessage):
                answered += 1
                if not self._answer():
                    return
            else:  # ConnectionClosed, or PAUSED after a half-close
                self.transport.close()
                return

    def _head_received(self, event: h11.Request) -> bool:
        """Check a request head; False when it was refused (and the connection is ending)."""
        self.request = event
        names = {name for name, _ in event.headers}
        if b"content-length" in names and b"transfer-encoding" in names:
            # framed two ways: a proxy in front may frame it the other way (RFC 9112 6.1:
            # reject or close); refuse it and close
            self._fail(400)
            return False
        if self.parser.they_are_waiting_for_100_continue:
            self.transport.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        fed = self.fed  # a head that came whole in one read: h11 took it all
        if fed > MAX_HEAD_BYTES and fed - len(self.parser.trailing_data[0]) > MAX_HEAD_BYTES:
            self._fail(431)
            return False
        return True

    def _answer(self) -> bool:
        """Hand the request whose body has been read to the handler; whether to go on with
        the next one now (False: the answer waits, or the connection is closing)."""
        request = self.request
        assert request is not None
        self._reset(self.parser.trailing_data[0])
        self.deadline = time.monotonic() + SEND_TIMEOUT
        outcome = self.server.respond(self, request_of(request))
        if not isinstance(outcome, bool):
            self._wait_for(outcome)
            return False
        if not outcome:
            self.transport.close()
            return False
        if not self.head_started:
            self._idle()
        return True

    def _wait_for(self, outcome: Coroutine[Any, Any, bool]) -> None:
        self.transport.pause_reading()
        self.task = self.server.loop.create_task(self._finish(outcome))

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
        body = f"{REASONS[status]}\n".encode()
        self.transport.write(self.server.head(status, TEXT, len(body), True) + body)
        self.lingering = 0
        self.deadline = time.monotonic() + LINGER_SECONDS
        if self.transport.can_write_eof():
            self.transport.write_eof()
