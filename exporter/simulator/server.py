"""The simulator's HTTP server: a ThreadingHTTPServer on loopback, its handler, start/stop.

``POST /stable/`` (or ``/dev/``) with a form holding the ``json`` field is answered by the
simulator's ``_answer``; anything else is refused as a web server would. HTTPS when started
with an ``ssl.SSLContext``. Answers are gzipped when ``gzip_answers`` is set and the client
accepts it (as nginx may). Fault modes the handler answers itself are served by the
simulator's ``_serve_fault`` hook (see faults.py); here it answers none.
"""

from __future__ import annotations

import socket
import ssl
import sys
import threading
import urllib.parse
import zlib
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Protocol, Self

from .checks import Reject, form_json
from .data import SimClock


class Served(Protocol):
    """What the handler needs of the simulator it serves."""

    clock: SimClock
    gzip_answers: bool

    def _answer(self, text: str) -> tuple[int, str, bytes, str | None]: ...
    def _failure(self, code: str, detail: str) -> bytes: ...
    def _log(self, entry: dict[str, Any]) -> None: ...
    def _serve_fault(self, handler: Handler, mode: str, body: bytes) -> bool: ...


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: Served

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.open_connections: set[socket.socket] = set()
        self._conn_lock = threading.Lock()
        self.ssl_context: ssl.SSLContext | None = None
        super().__init__(*args, **kwargs)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        with self._conn_lock:
            self.open_connections.add(request)
        conn = request
        try:
            if self.ssl_context is not None:
                # the handshake in the connection's thread: a client that refuses the
                # certificate only ends its own connection
                request.settimeout(10)
                try:
                    conn = self.ssl_context.wrap_socket(request, server_side=True)
                except OSError:
                    self.shutdown_request(request)
                    return
                conn.settimeout(None)
                with self._conn_lock:
                    self.open_connections.add(conn)
            super().process_request_thread(conn, client_address)
        finally:
            with self._conn_lock:
                self.open_connections.discard(request)
                self.open_connections.discard(conn)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that hung up is no error worth a traceback; anything else still is."""
        if isinstance(sys.exc_info()[1], ConnectionError):
            return
        super().handle_error(request, client_address)

    def close_connections(self) -> None:
        """Close kept-alive client connections too: a stopped API answers nothing."""
        with self._conn_lock:
            conns = list(self.open_connections)
        for conn in conns:
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one write (no Nagle/delayed-ACK stall)
    server: Server

    def setup(self) -> None:
        super().setup()
        try:
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass

    server_version = "ScaleEngineSimulator/1.0"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass

    def _send(self, status: int, ctype: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        accept = self.headers.get("Accept-Encoding", "") if self.headers else ""
        if self.server.sim.gzip_answers and "gzip" in accept.lower():
            c = zlib.compressobj(6, zlib.DEFLATED, 31)
            body = c.compress(body) + c.flush()
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:  # noqa: N802
        self._send(405, "text/plain", b"use POST\n")

    def do_POST(self) -> None:  # noqa: N802
        sim = self.server.sim
        path = urllib.parse.urlsplit(self.path).path
        length = self.headers.get("Content-Length")
        try:
            n = int(length) if length is not None else -1
        except ValueError:
            n = -1
        if n < 0 or n > 10_000_000:
            self.close_connection = True
            self._send(411, "text/plain", b"Content-Length required\n")
            return
        body = self.rfile.read(n)
        if path not in ("/stable/", "/dev/"):
            self._send(404, "text/html", b"<html><body><h1>404 Not Found</h1></body></html>")
            return
        try:
            text = form_json(self.headers.get("Content-Type", ""), body)
        except Reject as rej:
            sim._log(
                {"app": None, "day": None, "offset": None, "limit": None,
                 "timestamp": sim.clock.now(), "outcome": "failure", "code": rej.code,
                 "detail": rej.detail}
            )  # fmt: skip
            self._send(200, "application/json", sim._failure(rej.code, rej.detail))
            return
        status, ctype, out, mode = sim._answer(text)
        if mode is not None and sim._serve_fault(self, mode, out):
            return
        self._send(status, ctype, out)


class Serving:
    """The serving part of :class:`~exporter.simulator.Simulator` (a mixin)."""

    def _init_server(self) -> None:
        self.gzip_answers = False  # gzip answers when the client accepts it (as nginx may)
        self._server: Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    def _serve_fault(self, handler: Handler, mode: str, body: bytes) -> bool:
        """Fault hook: answer a request from the handler itself; here never (see faults.py)."""
        return False

    def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0: any free port); HTTPS with ``ssl_context``."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        server = Server((host, port), Handler)
        server.sim = self  # type: ignore[assignment]  # a Simulator: a Serving and Answers
        server.ssl_context = ssl_context
        self._server = server
        self._thread = threading.Thread(
            target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True,
            name="scaleengine-simulator",
        )  # fmt: skip
        self._thread.start()
        return self.url

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.server_close()
        server.close_connections()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("simulator not started")
        host, port = self._server.server_address[:2]
        scheme = "http" if self._server.ssl_context is None else "https"
        return f"{scheme}://{host}:{port}/stable/"

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
