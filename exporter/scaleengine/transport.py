"""HTTP for the client: one POST bounded as a whole by a deadline, its answer read bounded in
size and decompressed by us. The only module that touches requests' and urllib3's internals.

urllib3's timeouts bound each socket operation, so an answer dripping one byte a second never
times out. A _Deadline bounds the whole request instead: a timer that, when it fires, shuts
down every socket the request opened or reused, so whatever is blocked on them (DNS aside:
see _resolve) returns at once: connect, a proxy's CONNECT answer, the TLS handshake, the
status line, headers or body, however the answer is framed. The deadline holds a duplicate
of each socket's file descriptor, taken when the socket is created (before it connects) or
when a kept-alive connection is reused: shutdown acts on the socket, not on one descriptor,
so it reaches the socket even after TLS wrapping detached the original object or http.client
dropped its own reference (an answer that ends with the connection keeps only a file object).
The connection classes below register their sockets with the deadline of the thread that
uses them (requests runs a request on the calling thread).
"""

from __future__ import annotations

import heapq
import http.client
import ipaddress
import itertools
import os
import socket
import threading
import time
import zlib
from collections.abc import Callable
from typing import Any, TypeVar

import requests
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager
from urllib3.util.connection import allowed_gai_family

from .errors import ApiError, server_text, too_large

_CHUNK = 64 * 1024
ERROR_BODY_MAX = 64 * 1024  # how much of a non-2xx answer is read to look for a JSON failure

T = TypeVar("T")

_current = threading.local()


class _Watchdog:
    """One thread for every deadline of the process (a thread per request costs more than a
    page of rows): a heap of (when, deadline); finished deadlines are dropped when they pop."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    def add(self, deadline: _Deadline, when: float) -> None:
        with self._cond:
            heapq.heappush(self._heap, (when, next(self._seq), deadline))
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="request-deadlines", daemon=True
                )
                self._thread.start()
            if self._heap[0][2] is deadline:
                self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._heap:
                    self._cond.wait()
                when, _, deadline = self._heap[0]
                left = when - time.monotonic()
                if left > 0:
                    self._cond.wait(left)
                    continue
                heapq.heappop(self._heap)
            deadline.expire()


_watchdog = _Watchdog()


class _Deadline:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.expired = False
        self._when = 0.0
        self._done = False
        self._lock = threading.Lock()
        self._socks: dict[tuple[int, int], socket.socket] = {}  # (dev, inode) -> a dup

    def __enter__(self) -> _Deadline:
        _current.deadline = self
        self._when = time.monotonic() + self.seconds
        _watchdog.add(self, self._when)
        return self

    def __exit__(self, *exc: object) -> None:
        _current.deadline = None
        with self._lock:
            self._done = True
            socks = list(self._socks.values())
            self._socks.clear()
        for dup in socks:
            dup.close()

    def remaining(self) -> float:
        return max(0.0, self._when - time.monotonic())

    def track(self, sock: socket.socket) -> None:
        """Shut ``sock`` down when the deadline passes (at once if it has already passed).

        A socket that cannot be tracked (no descriptor left to duplicate) raises OSError: the
        request fails as a connection error rather than run without a deadline."""
        fd = sock.fileno()
        if fd < 0:
            return
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        with self._lock:
            if key in self._socks or self._done:
                return
            copy = os.dup(fd)
            try:
                dup = socket.socket(fileno=copy)
            except OSError:
                os.close(copy)
                raise
            self._socks[key] = dup
            if self.expired:
                _kill(dup)
        if self.expired:
            raise TimeoutError("the request deadline has passed")

    def expire(self) -> None:
        with self._lock:
            if self._done:
                return
            self.expired = True
            for dup in self._socks.values():
                _kill(dup)


def _kill(sock: socket.socket) -> None:
    try:
        # the blocked connect, read or write on any descriptor of this socket sees EOF or an
        # error at once
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _deadline() -> _Deadline | None:
    return getattr(_current, "deadline", None)


def _track(sock: socket.socket | None) -> None:
    deadline = _deadline()
    if deadline is not None and sock is not None:
        deadline.track(sock)


def _resolve(host: str, port: int, family: int, deadline: _Deadline) -> list[Any]:
    """getaddrinfo, given up at the deadline: it cannot be interrupted, so a name is resolved
    on a helper thread (which ends when the resolver gives up) and the request stops waiting
    for it when the deadline passes. An IP literal needs no lookup."""
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        return socket.getaddrinfo(host, port, family, socket.SOCK_STREAM)
    box: list[Any] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            box.append(socket.getaddrinfo(host, port, family, socket.SOCK_STREAM))
        except Exception as exc:  # handed to the waiting request
            box.append(exc)
        done.set()

    threading.Thread(target=lookup, name="resolve", daemon=True).start()
    if not done.wait(deadline.remaining()):
        raise TimeoutError("name resolution took longer than the request deadline")
    if isinstance(box[0], Exception):
        raise box[0]
    return box[0]


def _create_connection(conn: HTTPConnection, deadline: _Deadline) -> socket.socket:
    """urllib3's create_connection, with each socket tracked by ``deadline`` before it
    connects and every wait bounded by what is left of it."""
    host = conn._dns_host.strip("[]")  # type: ignore[attr-defined]
    err: OSError | None = None
    for af, socktype, proto, _, address in _resolve(
        host, conn.port, allowed_gai_family(), deadline
    ):
        sock = socket.socket(af, socktype, proto)
        try:
            deadline.track(sock)
            for option in conn.socket_options or ():
                sock.setsockopt(*option)
            timeout = conn.timeout if isinstance(conn.timeout, int | float) else None
            left = max(deadline.remaining(), 0.001)
            sock.settimeout(left if timeout is None else min(timeout, left))
            if conn.source_address:
                sock.bind(conn.source_address)
            sock.connect(address)
            return sock
        except OSError as exc:
            err = exc
            sock.close()
            if deadline.expired:
                raise TimeoutError("the request deadline has passed") from None
    raise err if err is not None else OSError("getaddrinfo returns an empty list")


class _Informational(http.client.HTTPResponse):
    """Skips every 1xx answer before the final one (http.client skips only 100), 101 aside:
    a protocol switch nobody asked for is the final answer, and fails as http_status. A flood
    of them ends at the request's deadline like any other drip."""

    def _read_status(self) -> tuple[str, int, str]:
        while True:
            version, status, reason = super()._read_status()
            if not 100 <= status < 200 or status == 101:
                return version, status, reason
            http.client.parse_headers(self.fp)  # type: ignore[arg-type]


class _DeadlineConnectionMixin:
    """For both connection classes: sockets tracked from creation, and on every reuse."""

    response_class = _Informational

    def _new_conn(self) -> socket.socket:
        deadline = _deadline()
        if deadline is None:
            return super()._new_conn()  # type: ignore[misc]
        conn: Any = self
        try:
            return _create_connection(conn, deadline)
        except socket.gaierror as exc:
            raise NameResolutionError(conn.host, conn, exc) from exc
        except TimeoutError as exc:
            raise ConnectTimeoutError(
                conn, f"Connection to {conn.host} timed out (request deadline)"
            ) from exc
        except OSError as exc:
            raise NewConnectionError(conn, f"Failed to establish a new connection: {exc}") from exc

    def connect(self) -> None:
        super().connect()  # type: ignore[misc]
        _track(self.sock)  # type: ignore[attr-defined]

    def request(self, *args: Any, **kwargs: Any) -> None:
        _track(self.sock)  # type: ignore[attr-defined]  # a kept-alive connection
        super().request(*args, **kwargs)  # type: ignore[misc]


class _DeadlineHTTPConnection(_DeadlineConnectionMixin, HTTPConnection):
    pass


class _DeadlineHTTPSConnection(_DeadlineConnectionMixin, HTTPSConnection):
    pass


class _DeadlineHTTPPool(HTTPConnectionPool):
    ConnectionCls = _DeadlineHTTPConnection


class _DeadlineHTTPSPool(HTTPSConnectionPool):
    ConnectionCls = _DeadlineHTTPSConnection


_POOLS = {"http": _DeadlineHTTPPool, "https": _DeadlineHTTPSPool}


class _DeadlineAdapter(HTTPAdapter):
    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = dict(_POOLS)

    def proxy_manager_for(self, proxy: str, **proxy_kwargs: Any) -> Any:
        # an HTTP(S) proxy's own pools (CONNECT tunnel included) are under the deadline too
        manager = super().proxy_manager_for(proxy, **proxy_kwargs)
        if type(manager) is ProxyManager:
            manager.pool_classes_by_scheme = dict(_POOLS)
        return manager


def _decoder(encoding: str) -> Any:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise ApiError(
        f"unsupported Content-Encoding {server_text(encoding, 40)!r}", "bad_response", False
    )


def _inflate(decoder: Any, chunk: bytes, out: bytearray, limit: int) -> None:
    """``chunk`` decompressed onto ``out``, never past ``limit`` + 1 bytes in memory."""
    data = chunk
    while data:
        try:
            piece = decoder.decompress(data, limit + 1 - len(out))
        except zlib.error:
            raise ApiError("answer is not valid gzip/deflate", "bad_response", False) from None
        out += piece
        if len(out) > limit:
            raise too_large(limit)
        data = decoder.unconsumed_tail
        if decoder.eof:
            break


def _read_body(resp: requests.Response, limit: int) -> bytearray:
    """The whole body, decompressed, refusing more than ``limit`` bytes (raw or decoded).

    Decompression is ours (zlib with max_length), so a small gzip bomb never inflates past
    the limit in memory.
    """
    out = bytearray()
    decoder = _decoder(resp.headers.get("Content-Encoding", ""))
    raw_total = 0
    for chunk in resp.raw.stream(_CHUNK, decode_content=False):
        raw_total += len(chunk)
        if raw_total > limit:
            raise too_large(limit)
        if decoder is None:
            out += chunk
        else:
            _inflate(decoder, chunk, out, limit)
        if len(out) > limit:
            raise too_large(limit)
    if decoder is not None and not decoder.eof:
        raise ApiError("compressed answer ends early", "connection", True)
    resp.raw.release_conn()  # read to the end: the connection can be kept alive
    return out


def read_answer(resp: requests.Response, limit: int) -> bytearray:
    """A 2xx answer's body (see _read_body); refused at once when its declared length (of an
    uncompressed body) is over ``limit``."""
    length = resp.headers.get("Content-Length", "")
    if (
        length.isdigit()
        and int(length[:20]) > limit
        and not resp.headers.get("Content-Encoding", "").strip()
    ):
        raise too_large(limit)
    return _read_body(resp, limit)


def read_error(resp: requests.Response, limit: int) -> bytearray:
    """The start of a non-2xx answer (at most ERROR_BODY_MAX bytes, and ``limit``), to look for
    the API's JSON failure in; empty when it cannot be read within that."""
    try:
        return _read_body(resp, min(ERROR_BODY_MAX, limit))
    except ApiError:
        return bytearray()


# -- the request ---------------------------------------------------------------------------


def new_session(user_agent: str) -> requests.Session:
    """A keep-alive session whose every request (proxies included) runs under the deadline of
    :func:`post`; TLS verified; answers decompressed by us (bounded), not by urllib3."""
    session = requests.Session()
    adapter = _DeadlineAdapter()
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = user_agent
    session.headers["Accept"] = "application/json"
    # we decompress ourselves (bounded): only what zlib reads
    session.headers["Accept-Encoding"] = "gzip, deflate"
    session.verify = True
    return session


def post(
    session: requests.Session,
    url: str,
    form: dict[str, str],
    seconds: float,
    handle: Callable[[requests.Response], T],
    timed_out: Callable[[], ApiError],
) -> T:
    """POST ``form`` and ``handle`` the answer (status, headers, body), the whole of it bounded
    by ``seconds``: ``timed_out()`` is raised when they pass, ApiError(connection) for any
    other failure to talk to the server; an ApiError from ``handle`` passes through."""
    with _Deadline(seconds) as deadline:
        resp = None
        try:
            resp = session.post(
                url, data=form, timeout=(seconds, seconds), allow_redirects=False, stream=True
            )
            return handle(resp)
        except requests.Timeout:
            raise timed_out() from None
        except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
            if deadline.expired:
                raise timed_out() from None
            reason = exc.args[0] if exc.args else exc
            if "timed out" in str(reason).lower():
                raise timed_out() from None
            raise ApiError(
                f"cannot talk to the API: {type(exc).__name__}: {server_text(str(reason), 300)}",
                "connection",
                True,
            ) from None
        except ApiError:
            if deadline.expired:
                raise timed_out() from None
            raise
        finally:
            if resp is not None:
                resp.close()
