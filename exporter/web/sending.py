"""Sending answers: at once by writev and sendfile when the socket takes them, else in
SEND_PIECE pieces, each once the client has read the one before, with at most MAX_SENDING
such answers under way (past that, the one whose client has not read for STALL_GRACE is
closed). A body is bytes or a file (an object with ``fd``, ``size`` and ``read()``)."""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Coroutine
from typing import Any, Protocol

from .common import log_count

log = logging.getLogger("exporter.web")

SMALL_FILE = 64 * 1024  # a stored file this small is read into the writev, not sendfile'd
SEND_PIECE = 64 * 1024  # what sendfile did not send at once (and every TLS answer), in pieces
MAX_SENDING = 256  # answers sent in pieces at once (each holds about two pieces in memory)
STALL_GRACE = 2.0  # past MAX_SENDING, an answer unread this long is closed for a new one


class FileBody(Protocol):
    """Bytes held in a file, sent with sendfile (exporter.metrics.StoredFile is one)."""

    fd: int
    size: int

    def __len__(self) -> int: ...

    def read(self) -> bytes: ...


Part = bytes | FileBody


class Writer(Protocol):
    """What a connection offers the sender."""

    transport: Any
    stalled_since: float | None  # when the socket last stopped taking bytes

    async def drain(self) -> None: ...


class Sender:
    """Writes answers for every connection of one server; counts what was sent in pieces."""

    def __init__(self, tls: bool) -> None:
        self.tls = tls
        self.sending: set[Any] = set()  # connections with an answer under way in pieces
        self.sent_pieces = 0  # bytes sent in pieces since the last malloc_trim
        self.stalled_closed = 0  # piecewise answers closed for a new one past MAX_SENDING

    def send(
        self, conn: Writer, parts: list[Part], close: bool
    ) -> bool | Coroutine[Any, Any, bool]:
        """Write one answer, at once when the socket takes it; else a coroutine for the rest."""
        transport = conn.transport
        rest: list[Any] = parts
        if self.tls:  # no sendfile through TLS: small answers at once, the others in pieces
            if sum(len(p) for p in parts) <= SEND_PIECE:
                transport.write(b"".join(p if isinstance(p, bytes) else p.read() for p in parts))
                rest = []
        elif not transport.get_write_buffer_size():
            sock = transport.get_extra_info("socket")
            if sock is not None:
                rest = send_now(sock, parts)
        if rest or transport.get_write_buffer_size():
            return self._send_rest(conn, rest, close)
        return not close

    async def _send_rest(self, conn: Writer, rest: list[Any], close: bool) -> bool:
        """What the socket did not take at once, in SEND_PIECE pieces, each once the client
        has read the one before: a client that does not read holds two pieces or so, never
        the answer (through TLS, the whole answer goes this way; the loop's own sendfile is
        asyncio's only). At most MAX_SENDING answers go this way at once."""
        if rest:
            await self._sending_place(conn)
        try:
            for part in rest:
                if not isinstance(part, (bytes, tuple)):
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

    async def _write_piece(self, conn: Writer, piece: bytes | memoryview) -> None:
        await conn.drain()
        conn.transport.write(piece)
        self.sent_pieces += len(piece)

    async def _sending_place(self, conn: Writer) -> None:
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
                if log_count(self.stalled_closed):
                    log.warning(
                        "too many answers under way: closed the one not read for longest",
                        extra={"closed": self.stalled_closed},
                    )
                continue
            await asyncio.sleep(0.1)
        self.sending.add(conn)


def send_now(sock: Any, parts: list[Part]) -> list[Any]:
    """Send what the non-blocking socket takes now, without a trip through the event loop:
    bytes by writev, files by sendfile. Returns the rest: bytes, a file, or (file, offset,
    size) for part of one.

    Not corked: with TCP_CORK, a gzip answer sent right after the client had paused (to
    decode the previous one) stalled for about 90 ms on loopback, about 1 in 10 scrapes."""
    fd = sock.fileno()
    # a small stored file costs less read into the one writev than sent by sendfile
    rest: list[Any] = [
        p if isinstance(p, bytes) or p.size > SMALL_FILE else p.read() for p in parts
    ]
    try:
        while rest:
            part = rest[0]
            if not isinstance(part, (bytes, tuple)):
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
