"""HTTP side: the telemetry path, a landing page, health and readiness, TLS and basic auth.

A scrape sends the exposition's stored bytes plus the live part; it never calls the API and never
waits for a poll. One thread per connection (so a slow client only holds its own thread), a
socket timeout for idle and slow connections, a cap on open connections, and the TLS handshake
done in the connection's thread rather than in the accept loop.
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from . import __version__
from .landing import render_landing
from .metrics import Chunk, Exposition, StoredFile, negotiate
from .store import Store
from .webconfig import WebConfig

log = logging.getLogger(__name__)

CONNECTION_TIMEOUT = 10.0
MAX_CONNECTIONS = 512
_SEND_TIMEOUT = struct.pack("ll", int(CONNECTION_TIMEOUT), 0)  # struct timeval


def parse_listen_address(address: str) -> tuple[str, int]:
    """ ":8491" -> ("", 8491); "127.0.0.1:0"; "[::1]:8491" -> ("::1", 8491)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"invalid listen address {address!r} (use host:port or :port)")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


class ExporterHTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 128

    def __init__(
        self,
        address: tuple[str, int],
        app: WebApp,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        if address[0] == "":
            # ":port" listens on every address, IPv6 and IPv4 where the machine has both
            try:
                socket.socket(socket.AF_INET6, socket.SOCK_STREAM).close()
                self.address_family = socket.AF_INET6
                address = ("::", address[1])
            except OSError:
                address = ("0.0.0.0", address[1])
        self.app = app
        self.ssl_context = ssl_context
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        super().__init__(address, Handler)

    def server_bind(self) -> None:
        if self.address_family == socket.AF_INET6:
            try:
                self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            except OSError:
                pass
        super().server_bind()

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            log.warning("too many open connections, refusing one", extra={"max": MAX_CONNECTIONS})
            self.shutdown_request(request)
            return
        super().process_request(request, client_address)

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            if self.ssl_context is not None:
                request.settimeout(CONNECTION_TIMEOUT)
                try:
                    request = self.ssl_context.wrap_socket(request, server_side=True)
                except (ssl.SSLError, OSError) as err:
                    log.debug("TLS handshake failed", extra={"peer": client_address[0], "err": err})
                    self.shutdown_request(request)
                    return
                if not self.app.web_config.client_allowed(request.getpeercert() or {}):
                    log.debug("client certificate not allowed", extra={"peer": client_address[0]})
                    self.shutdown_request(request)
                    return
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        if host in ("::", "0.0.0.0"):
            host = "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        scheme = "https" if self.ssl_context else "http"
        return f"{scheme}://{host}:{port}"


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


class Handler(BaseHTTPRequestHandler):
    server: ExporterHTTPServer
    protocol_version = "HTTP/1.1"
    server_version = f"scaleengine-exporter/{__version__}"
    sys_version = ""

    def version_string(self) -> str:
        return self.server_version  # the base class adds " " + sys_version: a trailing space

    timeout = CONNECTION_TIMEOUT

    def setup(self) -> None:
        super().setup()
        try:
            # small writes (headers, the live part) leave at once, not after a delayed ACK
            self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if not isinstance(self.connection, ssl.SSLSocket):
                # the kernel's own send timeout, for the blocking write in _send_all
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, _SEND_TIMEOUT)
        except OSError:
            pass

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        if log.isEnabledFor(logging.DEBUG):
            log.debug("http " + format % args)

    def do_HEAD(self) -> None:  # noqa: N802
        self._dispatch(head=True)

    def do_GET(self) -> None:  # noqa: N802
        self._dispatch(head=False)

    def do_POST(self) -> None:  # noqa: N802
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path != "/-/reload":
            self._send(405, b"Method Not Allowed\n", "text/plain; charset=utf-8", head=False)
        elif not app.web_config.check_basic_auth(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="scaleengine-exporter"')
            self._finish(b"Unauthorized\n", "text/plain; charset=utf-8", False)
        elif app.reload is None:
            self._send(403, b"Lifecycle API is not enabled.\n", "text/plain; charset=utf-8", False)
        else:
            ok, message = app.reload()
            body = (message.rstrip("\n") + "\n").encode()
            self._send(200 if ok else 500, body, "text/plain; charset=utf-8", False)

    def _dispatch(self, head: bool) -> None:
        app = self.server.app
        path = self.path.split("?", 1)[0]
        if path == "/-/healthy":
            self._send(200, b"Healthy\n", "text/plain; charset=utf-8", head)
            return
        if path == "/-/ready":
            if app.ready():
                self._send(200, b"Ready\n", "text/plain; charset=utf-8", head)
            else:
                self._send(503, b"Not ready: first polls running\n", "text/plain", head)
            return
        if not app.web_config.check_basic_auth(self.headers.get("Authorization")):
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="scaleengine-exporter"')
            self._finish(b"Unauthorized\n", "text/plain; charset=utf-8", head)
            return
        if path == app.telemetry_path:
            self._metrics(head)
        elif path == "/":
            self._send(200, render_landing(app).encode(), "text/html; charset=utf-8", head)
        else:
            self._send(404, b"Not Found\n", "text/plain; charset=utf-8", head)

    def _metrics(self, head: bool) -> None:
        openmetrics, gzip = negotiate(
            self.headers.get("Accept"), self.headers.get("Accept-Encoding")
        )
        chunks, content_type = self.server.app.exposition.payload(openmetrics, gzip)
        self.send_response(200)
        if gzip:
            self.send_header("Content-Encoding", "gzip")
        self.send_header("Vary", "Accept, Accept-Encoding")
        self._finish(chunks, content_type, head)

    def _send(self, code: int, body: bytes, content_type: str, head: bool) -> None:
        self.send_response(code)
        self._finish(body, content_type, head)

    def _finish(self, body: bytes | list[Chunk], content_type: str, head: bool) -> None:
        chunks = [body] if isinstance(body, bytes) else body
        for name, value in self.server.app.web_config.headers.items():
            self.send_header(name, value)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(sum(len(c) for c in chunks)))
        buffered = getattr(self, "_headers_buffer", None)
        if not head and buffered and not isinstance(self.connection, ssl.SSLSocket):
            buffered.append(b"\r\n")
            self._headers_buffer = []
            try:
                self._send_all([b"".join(buffered), *chunks])
            except OSError:  # the client went away or stopped reading (SO_SNDTIMEO)
                self.close_connection = True
            return
        self.end_headers()
        if head:
            return
        try:
            for chunk in chunks:
                self.wfile.write(chunk.read() if isinstance(chunk, StoredFile) else chunk)
        except (BrokenPipeError, ConnectionResetError, TimeoutError, ssl.SSLError):
            self.close_connection = True

    def _send_all(self, chunks: list[Chunk]) -> None:
        """The answer on a blocking socket: bytes in one writev, stored files by sendfile.

        With a Python-level timeout the socket is non-blocking, and a multi-megabyte body
        leaves in many send() calls, each followed by re-taking the GIL. Blocking, the kernel
        takes each part in one call (SO_SNDTIMEO still bounds a client that stops reading).
        """
        sock = self.connection
        sock.settimeout(None)
        try:
            views: list[memoryview] = []
            for chunk in chunks:
                if isinstance(chunk, StoredFile):
                    _sendmsg_all(sock, views)
                    views = []
                    offset = 0
                    while offset < chunk.size:
                        sent = os.sendfile(sock.fileno(), chunk.fd, offset, chunk.size - offset)
                        if sent == 0:
                            raise ConnectionResetError("sendfile sent nothing")
                        offset += sent
                elif chunk:
                    views.append(memoryview(chunk))
            _sendmsg_all(sock, views)
        finally:
            sock.settimeout(self.timeout)


def _sendmsg_all(sock: socket.socket, views: list[memoryview]) -> None:
    while views:
        sent = sock.sendmsg(views)
        while views and sent >= views[0].nbytes:
            sent -= views[0].nbytes
            views.pop(0)
        if sent:
            views[0] = views[0][sent:]


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
