"""Hostile HTTP answers the handler sends itself, for the HTTP fault modes (faults.py): a
reset, a late answer, answers that drip one byte at a time, a gzip bomb, a 200 MB body, a body
that never ends, a 429, a 10 kB reason phrase. Only tests use them.
"""

from __future__ import annotations

import io
import socket
import struct
import threading
import zlib
from typing import Protocol

from .answers import EMPTY_ANSWER
from .server import Handler


class Hostile(Protocol):
    """What the hostile answers need of the simulator."""

    fault_delay: float
    drip_interval: float
    retry_after: int
    _stopping: threading.Event

    def _failure(self, code: str, detail: str) -> bytes: ...


BOMB_SIZE = 1 << 30
HUGE_BODY_SIZE = 200_000_000
_bomb_lock = threading.Lock()
_bomb: bytes | None = None


def gzip_bomb() -> bytes:
    """A gzip stream (about 1 MB) of an empty answer padded with 1 GiB of spaces; cached."""
    global _bomb
    with _bomb_lock:
        if _bomb is None:
            c = zlib.compressobj(9, zlib.DEFLATED, 31)
            parts = [c.compress(EMPTY_ANSWER[:-1])]
            block = b" " * (1 << 20)
            parts.extend(c.compress(block) for _ in range(BOMB_SIZE >> 20))
            parts.append(c.compress(b"}"))
            parts.append(c.flush())
            _bomb = b"".join(parts)
        return _bomb


def serve_hostile(sim: Hostile, handler: Handler, mode: str, body: bytes) -> None:
    """Answer (or not) a request of an HTTP fault mode; ``body`` is its page, if any."""
    handler.close_connection = True
    if mode == "reset":
        try:
            handler.connection.setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
            )
        except OSError:
            pass
        return
    if mode == "timeout":
        sim._stopping.wait(sim.fault_delay)
        try:
            handler._send(200, "application/json", sim._failure("0004", "late answer"))
        except OSError:
            pass
        return
    try:
        _hostile(sim, handler, mode, body)
    except OSError:  # the client gave up: that is the point
        handler.wfile = io.BytesIO()  # drop what is still buffered for it


def _drip(sim: Hostile, handler: Handler, data: bytes) -> None:
    for i in range(len(data)):
        if sim._stopping.wait(sim.drip_interval):
            return
        handler.wfile.write(data[i : i + 1])
        handler.wfile.flush()


def _hostile(sim: Hostile, handler: Handler, mode: str, body: bytes) -> None:
    """Send the answer of an HTTP fault mode but reset and timeout."""
    if mode == "drip_headers":
        head = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body)
        )
        _drip(sim, handler, head + body)
    elif mode == "long_reason":
        reason = "Bad Gateway \x1b[2J\x07" + "\x01\x7f" * 5000
        _short_answer(handler, 502, reason, {}, b"502")
    elif mode == "http_429":
        _short_answer(
            handler, 429, None, {"Retry-After": str(sim.retry_after)}, b"Too Many Requests\n"
        )
    else:
        _big_body(sim, handler, mode, body)


def _short_answer(
    handler: Handler, status: int, reason: str | None, headers: dict[str, str], body: bytes
) -> None:
    handler.send_response(status, reason)
    for name, value in headers.items():
        handler.send_header(name, value)
    handler.send_header("Content-Type", "text/plain")
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)


def _big_body(sim: Hostile, handler: Handler, mode: str, body: bytes) -> None:
    """A 200 answer whose body drips, inflates to 1 GiB, is 200 MB or never ends."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    if mode == "drip":
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        _drip(sim, handler, body)
    elif mode == "gzip_bomb":
        bomb = gzip_bomb()
        handler.send_header("Content-Encoding", "gzip")
        handler.send_header("Content-Length", str(len(bomb)))
        handler.end_headers()
        handler.wfile.write(bomb)
    elif mode == "huge_body":
        handler.send_header("Content-Length", str(HUGE_BODY_SIZE))
        handler.end_headers()
        block = b" " * (1 << 20)
        left = HUGE_BODY_SIZE - len(EMPTY_ANSWER)
        while left > 0 and not sim._stopping.is_set():
            handler.wfile.write(block[: min(left, len(block))])
            left -= len(block)
        handler.wfile.write(EMPTY_ANSWER)
    elif mode == "endless_body":
        handler.send_header("Transfer-Encoding", "chunked")
        handler.end_headers()
        chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
        while not sim._stopping.is_set():
            handler.wfile.write(chunk)
