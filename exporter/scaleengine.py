"""Client of ScaleEngine's ``usage.vse`` API: signing, requests, parsing, pagination, retries.

The request is signed and sent exactly as the documented PHP example does (see phpjson.py and
/work/shared/REFERENCE.md). Nothing here ever puts the API key, the secret, a signature or a
request body into an exception message or a log line.
"""

from __future__ import annotations

import base64
import email.utils
import hashlib
import heapq
import hmac
import http.client
import ipaddress
import itertools
import json
import logging
import math
import os
import re
import socket
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import requests
import tenacity
import urllib3
from requests.adapters import HTTPAdapter
from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import ConnectTimeoutError, NameResolutionError, NewConnectionError
from urllib3.poolmanager import ProxyManager
from urllib3.util.connection import allowed_gai_family

from exporter import __version__
from exporter.phpjson import php_json_encode

__all__ = [
    "ApiError",
    "Page",
    "ScaleEngineClient",
    "UsageResult",
    "build_request",
    "encode_body",
    "parse_page",
    "sign",
    "warn_if_cleartext",
]

log = logging.getLogger("exporter.scaleengine")

COMMAND = "usage.vse"

INT64_MAX = 2**63 - 1
# the largest count a float64 (a Prometheus sample) holds exactly, and all below it: a row with
# a bigger number is not usable (its bytes would be rounded)
MAX_EXACT = 2**53

# Published error codes: (meaning, retryable).
API_CODES: dict[str, tuple[str, bool]] = {
    "0000": ("unrecognized API command", False),
    "0001": ("CDN authorization failed: check cdn_id and api_key", False),
    "0002": ("timestamp outside the valid range", False),
    "0003": ("HMAC-SHA256 signature failed: check api_secret", False),
    "0004": ("unexpected error on the API side", True),
    "0005": ("unauthorized access to the API", False),
    "0006": ("one or more required fields missing or invalid", False),
    "1000": ("servers under heavy traffic, try again in a few minutes", True),
}

_CODE_RE = re.compile(r"[0-9A-Za-z_]{1,16}")
_HANDLE_TIME_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_MAX_SERVER_TEXT = 200
# A "failure" without a code whose message says there is no usage: an empty day (REFERENCE.md:
# some PHP backends answer an empty result that way). Anything else without a code is api_other.
_NO_USAGE_RE = re.compile(r"\s*no\s+(?:video\s+)?usage(?:\s+data)?\s+found\W*", re.IGNORECASE)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024
DEFAULT_MAX_FETCH_BYTES = 256 * 1024 * 1024
DEFAULT_MAX_LABEL_LENGTH = 1024  # bytes of UTF-8 (limits.max_label_length)
LABEL_HASH_CHARS = 16  # hex digits of SHA-256 appended to a cut label
# what one distinct video costs a fetch besides its URL's characters: its dict entries, tuple
# and ints (measured: about 250 bytes on CPython 3.11)
VIDEO_COST = 256
_SURROGATE = re.compile("[\ud800-\udfff]")
_CHUNK = 64 * 1024
_ERROR_BODY_MAX = 64 * 1024  # how much of a non-2xx answer is read to look for a JSON failure
READS = 3  # full reads of a fetch before giving up on pages that keep moving


class ApiError(Exception):
    """A failed usage.vse request or fetch.

    ``outcome`` is a short label (used as a Prometheus label value), ``retryable`` says whether
    trying again later may help, ``code`` is the API's error code when it sent one.
    """

    def __init__(
        self,
        message: str,
        outcome: str,
        retryable: bool,
        code: str | None = None,
        busy: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.outcome = outcome
        self.retryable = retryable
        self.code = code
        # the server asked us to come back later (code 1000, or 429/503 with Retry-After): not
        # retried within the poll; the poller backs off that app (poll.busy_backoff)
        self.busy = busy
        self.retry_after = retry_after
        self.backing_off = False  # set by the poller: no request made, the app is backing off

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class Page(NamedTuple):
    """One parsed usage.vse answer."""

    rows: list[tuple[str, int, int]]
    count: int
    skipped: int
    handle_time: float | None
    message: str = ""
    incomplete: int = 0  # rows kept with requests 0 because requests_total was null or missing
    # video_url of the answer's first and last row when those rows were usable (rows[0] and
    # rows[-1] then): how a fetch checks that consecutive pages overlap as they should
    lead: str | None = None
    tail: str | None = None
    lead_incomplete: bool = False  # the first row is one of the incomplete ones
    # video_url (as in rows) of the rows that limits.include/exclude fold away, judged on the
    # URL as sent before it was cut
    folded: frozenset[str] = frozenset()


@dataclass
class UsageResult:
    """Usage of one app for one period; rows of the same video_url summed."""

    videos: dict[str, tuple[int, int]] = field(default_factory=dict)
    pages: int = 0
    rows: int = 0
    skipped: int = 0
    count: int = 0
    incomplete: int = 0
    reads: int = 0  # full reads made (more than 1 when the pages moved while being read)
    # the videos limits.include/exclude fold away, judged on each URL as sent (the keys of
    # videos are cut); None when the client was given no filters
    folded: set[str] | None = None


def sign(request: dict, secret: str) -> str:
    """base64(HMAC-SHA256(key=secret, msg=php_json_encode(request)))."""
    msg = php_json_encode(request).encode("ascii")
    digest = hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_body(request: dict, secret: str) -> str:
    """The ``json`` form field: the request with its signature appended last, PHP-encoded."""
    if "signature" in request:
        raise ValueError("request already has a signature")
    signed = dict(request)
    signed["signature"] = sign(request, secret)
    return php_json_encode(signed)


def build_request(
    api_key: str,
    cdn_id: int,
    app: str,
    urls: list[str] | None,
    year: int,
    month: int,
    day: int | None,
    limit: int,
    offset: int,
    timestamp: float,
) -> dict[str, Any]:
    """A usage.vse request with its keys in the documented order (signature not included)."""
    request: dict[str, Any] = {
        "command": COMMAND,
        "api_key": api_key,
        "timestamp": int(timestamp),
        "cdn": int(cdn_id),
        "app": app,
    }
    if urls is not None:
        if isinstance(urls, str):
            raise TypeError("urls must be a list of strings, not a string")
        if not urls:
            raise ValueError("urls must not be empty (use None for all videos)")
        request["url"] = list(urls)
    request["year"] = int(year)
    request["month"] = int(month)
    if day is not None:
        request["day"] = int(day)
    request["limit"] = int(limit)
    request["offset"] = int(offset)
    return request


Scrub = Callable[[str], str]


def _server_text(value: object, limit: int = _MAX_SERVER_TEXT, scrub: Scrub | None = None) -> str:
    """Text from the server, made safe to log: printable, one line, at most ``limit`` chars.

    ``scrub`` (the client's: our secrets and signature replaced by ``***``) runs on the whole
    text first: cut first, a secret straddling the cut would leave its first characters."""
    if not isinstance(value, str):
        return ""
    if scrub is not None:
        value = scrub(value)
    text = "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else " " for c in value[: limit * 2]
    )
    text = " ".join(text.split())
    if len(text) > limit or len(value) > limit * 2:
        text = text[:limit] + "..."
    return text


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_cleartext(api_url: str) -> bool:
    """Log a warning when requests (and so the API key) would travel unencrypted.

    Loopback hosts (the built-in simulator of the demo, a local test API) are not warned about:
    the key does not leave the machine. True when a warning was logged.
    """
    parts = urlsplit(api_url)
    if parts.scheme != "http" or _is_loopback(parts.hostname):
        return False
    log.warning(
        "scaleengine.api_url is plain http: the API key and signed requests travel unencrypted;"
        " use https",
        extra={"host": _server_text(parts.hostname or "", 100)},
    )
    return True


def api_failure(
    code: object, server_message: object, now: float | None = None, scrub: Scrub | None = None
) -> ApiError:
    """The ApiError for a ``"status": "failure"`` answer."""
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 9999:
        code_s: str | None = f"{code:04d}"
    elif isinstance(code, str) and _CODE_RE.fullmatch(code):
        code_s = code
    else:
        code_s = None
    meaning, retryable = API_CODES.get(code_s or "", ("unknown error code", False))
    busy = code_s == "1000"
    if busy:
        retryable = False  # "try again in a few minutes": the poller backs off instead
    text = _server_text(server_message, scrub=scrub)
    msg = f"API error {code_s or '(no code)'}: {meaning}"
    if code_s == "0002":
        t = time.time() if now is None else now
        local = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        msg += (
            f"; the local clock is probably off (local UTC time {local},"
            f" timestamp {int(t)}): sync it with NTP"
        )
    if text:
        msg += f" (server said: {text!r})"
    # outcome label values come from a fixed set: never a server-chosen string
    outcome = f"api_{code_s}" if code_s in API_CODES else "api_other"
    return ApiError(msg, outcome, retryable, code_s, busy=busy)


def _bad(message: str) -> ApiError:
    return ApiError(message, "bad_response", False)


# a number written out in a string: digits, a fraction, an exponent (no sign, no spaces)
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,6})?")


def _integral(value: Decimal) -> int | None:
    """``value`` as an int when it is a whole number in [0, 2**53]; None otherwise."""
    if not value.is_finite() or value.is_signed() and value != 0 or value > MAX_EXACT:
        return None
    n = int(value)
    return n if n == value else None


def _number(value: object) -> int | None:
    """A usable count: a whole number from 0 to 2**53 (a float64 holds it exactly).

    ASCII digits or a JSON integer; also written with a fraction of zeros or an exponent, in a
    string or as a JSON number ("2000.0", 2000.0, "2e3"); not "2000.5", a sign or spaces."""
    t = type(value)
    if t is str:
        if value.isdigit() and value.isascii() and len(value) <= 16:  # type: ignore[union-attr]
            n = int(value)  # type: ignore[arg-type]
            return n if n <= MAX_EXACT else None
        if len(value) <= 40 and _DECIMAL_RE.fullmatch(value):  # type: ignore[arg-type]
            return _integral(Decimal(value))  # type: ignore[arg-type]
        return None
    if t is int:
        return value if 0 <= value <= MAX_EXACT else None  # type: ignore[operator,return-value]
    if t is Decimal:  # a JSON number with a fraction or an exponent (see _loads)
        return _integral(value)  # type: ignore[arg-type]
    return None


def _handle_time(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        f = float(value)
    elif isinstance(value, str):
        m = _HANDLE_TIME_RE.match(value)
        if not m:
            return None
        try:
            f = float(m.group(0))
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) and f >= 0 else None


class _Huge:
    """Stands for a JSON integer too long to be a usable number (a row with it is skipped)."""

    __slots__ = ()


_HUGE = _Huge()


def _parse_int(text: str) -> int | _Huge:
    # json.loads would raise on ints over 4300 digits and fail the whole page: keep it per row
    return int(text) if len(text) <= 40 else _HUGE


def _parse_float(text: str) -> Decimal | _Huge:
    # exact, so that 9007199254740993.0 is not read as 2**53; a long one is as unusable as a
    # long integer (and Decimal would take time on it)
    return Decimal(text) if len(text) <= 40 else _HUGE


def _loads(body: bytes | bytearray | str) -> Any:
    return json.loads(body, parse_int=_parse_int, parse_float=_parse_float)


def _no_code(code: object) -> bool:
    return code is None or (isinstance(code, str) and not code.strip())


def cut_url(url: str, max_bytes: int) -> str:
    """``url`` as the label it will have: the same object when its UTF-8 fits in ``max_bytes``
    (a lone surrogate is left for the label step to replace); otherwise cut on a character
    boundary with ``~`` and 16 hex digits of the SHA-256 of the whole URL appended, exactly as
    ``poller.label_value`` cuts it (which then leaves it as it is)."""
    if len(url) * 4 <= max_bytes or (url.isascii() and len(url) <= max_bytes):
        return url
    raw = url.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return url
    suffix = "~" + hashlib.sha256(raw).hexdigest()[:LABEL_HASH_CHARS]
    clean = _SURROGATE.sub("\ufffd", url).encode()
    return clean[: max(0, max_bytes - len(suffix))].decode("utf-8", "ignore") + suffix


def _cut_urls(rows: list[tuple[str, int, int]], max_bytes: int) -> None:
    """Every row's video_url cut to its label, in place: a page of long URLs is not held."""
    shortest = max_bytes // 4  # no URL of this many characters or fewer can need a cut
    for i, (url, b, r) in enumerate(rows):
        if len(url) > shortest:
            rows[i] = (cut_url(url, max_bytes), b, r)


def _judge_and_cut(
    rows: list[tuple[str, int, int]],
    include: re.Pattern[str] | None,
    exclude: re.Pattern[str] | None,
    max_bytes: int | None,
) -> frozenset[str]:
    """The video_urls of the rows that ``include``/``exclude`` fold away, each judged on the
    URL as sent, then (with ``max_bytes``) cut in place as :func:`_cut_urls` cuts them."""
    folded = set()
    shortest = -1 if max_bytes is None else max_bytes // 4  # as in _cut_urls
    for i, (url, b, r) in enumerate(rows):
        out = (include is not None and include.search(url) is None) or (
            exclude is not None and exclude.search(url) is not None
        )
        if max_bytes is not None and len(url) > shortest:
            url = cut_url(url, max_bytes)
            rows[i] = (url, b, r)
        if out:
            folded.add(url)
    return frozenset(folded)


def parse_page(
    body: bytes | bytearray,
    scrub: Scrub | None = None,
    max_label_length: int | None = None,
    include: re.Pattern[str] | None = None,
    exclude: re.Pattern[str] | None = None,
) -> Page:
    """Parse one usage.vse answer. Raises only ApiError; server text in it passes ``scrub``.

    With ``max_label_length``, each video_url comes cut as :func:`cut_url` cuts it. With
    ``include``/``exclude``, the rows they fold away are named in ``folded``, judged on the
    URL as sent (before the cut).

    Rows whose numbers are unusable are skipped and counted in ``skipped``; rows with good bytes
    but a null or missing ``requests_total`` are kept with 0 requests and counted in
    ``incomplete``. An empty day may come as ``usage`` [] or null with ``count`` 0, "0" or
    missing, or as a failure without a code saying "No Video Usage Found": all are an empty page.
    """
    try:
        obj = _loads(body)
    except (ValueError, RecursionError, TypeError):
        raise ApiError("answer is not JSON", "invalid_json", False) from None
    if type(obj) is not dict:
        raise ApiError(
            f"answer is JSON but not an object ({type(obj).__name__})", "invalid_json", False
        )
    status = obj.get("status")
    if status == "failure":
        message = obj.get("message")
        if (
            _no_code(obj.get("code"))
            and isinstance(message, str)
            and _NO_USAGE_RE.fullmatch(message)
        ):
            return Page(
                [], 0, 0, _handle_time(obj.get("handle_time")), _server_text(message, scrub=scrub)
            )
        raise api_failure(obj.get("code"), message, scrub=scrub)
    if status != "success":
        if isinstance(status, str):
            raise _bad(f"unknown status {_server_text(status, scrub=scrub)!r}")
        raise _bad("answer has no status")
    count = obj.get("count")
    usage = obj.get("usage")
    if count is None and (usage is None or usage == []):
        count = 0  # an empty day may come without a count
    if type(count) is str and count.isdigit() and count.isascii() and len(count) <= 19:
        count = int(count)
    if type(count) is not int or count < 0:
        raise _bad("answer has no valid count")
    if usage is None and count == 0:
        usage = []
    if type(usage) is not list:
        raise _bad(f"usage is not a list ({type(usage).__name__})")
    rows: list[tuple[str, int, int]] = []
    append = rows.append
    skipped = incomplete = 0
    num = _number
    lead_bad = tail_ok = lead_incomplete = False
    for row in usage:
        tail_ok = False
        if type(row) is dict:
            url = row.get("video_url")
            b = row.get("bytes_total")
            r = row.get("requests_total")
            # Fast path: the documented form, strings of at most 15 ASCII digits (< 2**53).
            if (
                type(b) is str
                and type(r) is str
                and type(url) is str
                and b.isdigit()
                and r.isdigit()
                and len(b) < 16
                and len(r) < 16
                and b.isascii()
                and r.isascii()
            ):
                append((url, int(b), int(r)))
                tail_ok = True
                continue
            b = num(b)
            if b is not None and type(url) is str:
                if r is None:  # null or missing: bytes are what budgets are about, keep them
                    if not rows and not skipped:
                        lead_incomplete = True
                    append((url, b, 0))
                    incomplete += 1
                    tail_ok = True
                    continue
                r = num(r)
                if r is not None:
                    append((url, b, r))
                    tail_ok = True
                    continue
        if not rows and not skipped:
            lead_bad = True
        skipped += 1
    folded: frozenset[str] = frozenset()
    if include is not None or exclude is not None:
        folded = _judge_and_cut(rows, include, exclude, max_label_length)
    elif max_label_length is not None:
        _cut_urls(rows, max_label_length)
    return Page(
        rows,
        count,
        skipped,
        _handle_time(obj.get("handle_time")),
        _server_text(obj.get("message"), scrub=scrub),
        incomplete,
        rows[0][0] if rows and not lead_bad else None,
        rows[-1][0] if rows and tail_ok else None,
        lead_incomplete,
        folded,
    )


# -- a deadline for a whole request --------------------------------------------------------
#
# urllib3's timeouts bound each socket operation, so an answer dripping one byte a second never
# times out. A _Deadline bounds the whole request instead: a timer that, when it fires, shuts
# down every socket the request opened or reused, so whatever is blocked on them (DNS aside:
# see _resolve) returns at once: connect, a proxy's CONNECT answer, the TLS handshake, the
# status line, headers or body, however the answer is framed. The deadline holds a duplicate
# of each socket's file descriptor, taken when the socket is created (before it connects) or
# when a kept-alive connection is reused: shutdown acts on the socket, not on one descriptor,
# so it reaches the socket even after TLS wrapping detached the original object or http.client
# dropped its own reference (an answer that ends with the connection keeps only a file object).
# The connection classes below register their sockets with the deadline of the thread that
# uses them (requests runs a request on the calling thread).

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


POLL_TIMEOUT = "poll_timeout"  # the outcome of a fetch its poll's deadline ended


def _poll_timeout() -> ApiError:
    return ApiError(
        "the poll took longer than poll.timeout (all its fetches, pages and retries)",
        POLL_TIMEOUT,
        False,
    )


def _time_left(limit: float) -> float:
    """``limit`` cut to the time left before this thread's fetch deadline (see fetch_usage);
    ApiError(POLL_TIMEOUT) when there is none left."""
    deadline = getattr(_current, "poll_deadline", None)
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    if left <= 0:
        raise _poll_timeout()
    return min(limit, left)


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(min(int(value[:12]), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def _too_large(limit: int) -> ApiError:
    return ApiError(
        f"answer larger than scaleengine.max_response_bytes ({limit} bytes, after"
        " decompression): refused",
        "too_large",
        False,
    )


def _decoder(encoding: str) -> Any:
    enc = encoding.strip().lower()
    if enc in ("", "identity"):
        return None
    if enc in ("gzip", "x-gzip", "deflate"):
        return zlib.decompressobj(zlib.MAX_WBITS | 32)  # gzip or zlib header, detected
    raise ApiError(
        f"unsupported Content-Encoding {_server_text(encoding, 40)!r}", "bad_response", False
    )


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
            raise _too_large(limit)
        if decoder is None:
            out += chunk
        else:
            data = chunk
            while data:
                try:
                    piece = decoder.decompress(data, limit + 1 - len(out))
                except zlib.error:
                    raise ApiError(
                        "answer is not valid gzip/deflate", "bad_response", False
                    ) from None
                out += piece
                if len(out) > limit:
                    raise _too_large(limit)
                data = decoder.unconsumed_tail
                if decoder.eof:
                    break
        if len(out) > limit:
            raise _too_large(limit)
    if decoder is not None and not decoder.eof:
        raise ApiError("compressed answer ends early", "connection", True)
    resp.raw.release_conn()  # read to the end: the connection can be kept alive
    return out


class ScaleEngineClient:
    """usage.vse client for one account; one HTTP session (keep-alive)."""

    def __init__(
        self,
        api_url: str,
        cdn_id: int,
        api_key: str,
        api_secret: str,
        timeout: float = 10.0,
        page_size: int = 1000,
        max_pages: int = 1000,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_request: Callable[[str], None] | None = None,
        user_agent: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        include: re.Pattern[str] | None = None,
        exclude: re.Pattern[str] | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        if retries < 0:
            raise ValueError("retries must not be negative")
        if max_response_bytes < 1:
            raise ValueError("max_response_bytes must be at least 1")
        if max_fetch_bytes < 1:
            raise ValueError("max_fetch_bytes must be at least 1")
        if max_label_length < 1:
            raise ValueError("max_label_length must be at least 1")
        self.max_fetch_bytes = int(max_fetch_bytes)
        self.max_label_length = int(max_label_length)
        # limits.include/exclude: judged on each URL as sent, before the cut (UsageResult.folded)
        self.include = include
        self.exclude = exclude
        self.max_response_bytes = int(max_response_bytes)
        self.api_url = api_url
        self.cdn_id = int(cdn_id)
        self._api_key = api_key
        self._api_secret = api_secret
        # as sent, and as a server echoing our JSON request shows them (PHP escapes "/" etc.)
        self._secrets = tuple(
            dict.fromkeys(
                form
                for secret in (api_secret, api_key)
                if secret and len(secret) >= 4
                for form in (secret, php_json_encode(secret)[1:-1])
            )
        )
        self.timeout = float(timeout)
        self.page_size = int(page_size)
        self.max_pages = int(max_pages)
        self.retries = int(retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.clock = clock
        self.on_request = on_request
        self.session = requests.Session()
        adapter = _DeadlineAdapter()
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers["User-Agent"] = user_agent or f"scaleengine-exporter/{__version__}"
        self.session.headers["Accept"] = "application/json"
        # we decompress ourselves (bounded): only what zlib reads
        self.session.headers["Accept-Encoding"] = "gzip, deflate"
        self.session.verify = True

    def __repr__(self) -> str:
        return f"ScaleEngineClient(api_url={self.api_url!r}, cdn_id={self.cdn_id})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ScaleEngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one HTTP request ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in self._secrets:
            if secret in text:
                text = text.replace(secret, "***")
        return text

    def _notify(self, outcome: str) -> None:
        if self.on_request is not None:
            try:
                self.on_request(outcome)
            except Exception:  # a metrics callback must not break the fetch
                log.exception("on_request callback failed")

    def _attempt(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None, offset: int
    ) -> Page:
        request = build_request(
            self._api_key, self.cdn_id, app, urls, year, month, day,
            self.page_size, offset, self.clock(),
        )  # fmt: skip
        signature = sign(request, self._api_secret)
        body = php_json_encode({**request, "signature": signature})
        escaped = php_json_encode(signature)[1:-1]  # base64's "/" is "\\/" in an echoed request

        def scrub(text: str) -> str:
            return self._scrub(text).replace(signature, "***").replace(escaped, "***")

        limit = _time_left(self.timeout)
        try:
            page = self._exchange(body, scrub, limit)
        except ApiError as err:
            if err.outcome == "api_0002":
                err = api_failure(err.code, "", self.clock())
            message = scrub(err.message)
            if message != err.message:
                err = ApiError(
                    message, err.outcome, err.retryable, err.code, err.busy, err.retry_after
                )
            self._notify(err.outcome)
            log.debug("usage.vse app=%s offset=%d failed: %s", app, offset, err.outcome)
            raise err from None
        self._notify("success")
        log.debug(
            "usage.vse app=%s offset=%d rows=%d skipped=%d count=%d handle_time=%s",
            app, offset, len(page.rows), page.skipped, page.count, page.handle_time,
        )  # fmt: skip
        return page

    def _timed_out(self, cut: bool = False) -> ApiError:
        if cut:  # by the poll's deadline, not by scaleengine.timeout
            return _poll_timeout()
        return ApiError(
            f"API request took longer than scaleengine.timeout ({self.timeout:g}s, the whole"
            " request: connect, headers and body)",
            "timeout",
            True,
        )

    def _exchange(self, body: str, scrub: Scrub, limit: float | None = None) -> Page:
        """One POST, bounded as a whole by ``timeout`` (or the shorter ``limit``: the time left
        of the poll, ApiError(POLL_TIMEOUT) when that cuts it) and in size by
        ``max_response_bytes``."""
        seconds = self.timeout if limit is None else min(limit, self.timeout)
        cut = seconds < self.timeout
        with _Deadline(seconds) as deadline:
            resp = None
            try:
                resp = self.session.post(
                    self.api_url,
                    data={"json": body},
                    timeout=(seconds, seconds),
                    allow_redirects=False,
                    stream=True,
                )
                return self._answer(resp, scrub)
            except requests.Timeout:
                raise self._timed_out(cut) from None
            except (requests.RequestException, urllib3.exceptions.HTTPError, OSError) as exc:
                if deadline.expired:
                    raise self._timed_out(cut) from None
                reason = exc.args[0] if exc.args else exc
                if "timed out" in str(reason).lower():
                    raise self._timed_out(cut) from None
                raise ApiError(
                    f"cannot talk to the API: {type(exc).__name__}:"
                    f" {_server_text(str(reason), 300)}",
                    "connection",
                    True,
                ) from None
            except ApiError:
                if deadline.expired:
                    raise self._timed_out(cut) from None
                raise
            finally:
                if resp is not None:
                    resp.close()

    def _answer(self, resp: requests.Response, scrub: Scrub) -> Page:
        status = resp.status_code
        if 200 <= status < 300:
            length = resp.headers.get("Content-Length", "")
            if (
                length.isdigit()
                and int(length[:20]) > self.max_response_bytes
                and not resp.headers.get("Content-Encoding", "").strip()
            ):
                raise _too_large(self.max_response_bytes)
            body = _read_body(resp, self.max_response_bytes)
            return parse_page(body, scrub, self.max_label_length, self.include, self.exclude)
        # a non-2xx answer may still carry the API's JSON failure with its code
        reason = _server_text(resp.reason or "", 80, scrub)
        what = f"API answered HTTP {status} {reason}".rstrip()
        retry_after = None
        if status in (429, 503):
            retry_after = _retry_after(resp.headers.get("Retry-After"), time.time())
        try:
            text = _read_body(resp, min(_ERROR_BODY_MAX, self.max_response_bytes))
        except ApiError:
            text = bytearray()
        try:
            obj = _loads(text) if text else None
        except (ValueError, RecursionError, TypeError):
            obj = None
        if type(obj) is dict and obj.get("status") == "failure" and not _no_code(obj.get("code")):
            err = api_failure(obj.get("code"), obj.get("message"), scrub=scrub)
            return_err = ApiError(
                f"{what}: {err.message}", err.outcome, err.retryable, err.code, err.busy
            )
            if err.busy:
                return_err.retry_after = retry_after
            raise return_err
        if retry_after is not None:
            raise ApiError(
                f"{what}, Retry-After {retry_after:g}s: the server asks to come back later",
                "http_status",
                False,
                busy=True,
                retry_after=retry_after,
            )
        raise ApiError(what, "http_status", status >= 500 or status == 429)

    def fetch_page(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None, offset: int
    ) -> Page:
        """One page, with retries of transient errors (capped exponential backoff, jitter)."""
        backoff = tenacity.wait_random_exponential(
            multiplier=self.backoff_base, max=self.backoff_max
        )
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=lambda state: min(backoff(state), _time_left(backoff.max)),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ApiError) and e.retryable),
            reraise=True,
            before_sleep=self._before_sleep,
        )
        return retrying(self._attempt, app, urls, year, month, day, offset)

    @staticmethod
    def _before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "usage.vse attempt %d failed (%s), retrying in %.2fs",
            state.attempt_number,
            getattr(exc, "outcome", "error"),
            wait,
            extra={"app": state.args[0] if state.args else "?"},  # _attempt(app, ...)
        )

    # -- a whole fetch -----------------------------------------------------------------

    def fetch_usage(
        self,
        app: str,
        urls: list[str] | None,
        year: int,
        month: int,
        day: int | None,
        deadline: float | None = None,
    ) -> UsageResult:
        """:meth:`_fetch_usage`, ended by ``deadline`` (a ``time.monotonic()`` value; the
        poller's poll.timeout) when given: no request starts after it, each request's time limit
        is cut to the time left, a retry does not sleep past it; ApiError(POLL_TIMEOUT) then."""
        outer = getattr(_current, "poll_deadline", None)
        _current.poll_deadline = deadline
        try:
            return self._fetch_usage(app, urls, year, month, day)
        finally:
            _current.poll_deadline = outer

    def _fetch_usage(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None
    ) -> UsageResult:
        """All rows of one app for a day (or a month when day is None), paginated.

        Live rows are ordered by bytes, so a video can move across a page boundary between two
        page requests: read naively it is counted twice while another goes missing. Each page
        after the first therefore starts one row early, and that overlapping row must be the
        one the previous page ended with; a ``count`` change, a short or empty page before
        ``count``, more rows than ``count`` or an overlap that differs mean the pages moved,
        and the whole fetch is read again (up to READS full reads). The same video_url on two
        pages is read again too, but accepted when the next read shows the same rows per URL
        (the API does repeat rows of one video, and they may straddle a page boundary). Only a
        consistent read is returned; otherwise ApiError(pagination). A server that ignores
        offset or a fetch beyond max_pages fails at once.
        """
        previous: tuple[dict[str, int], frozenset[str]] | None = None
        reasons: list[str] = []
        for attempt in range(1, READS + 1):
            result, moved, duplicates, shape = self._read(app, urls, year, month, day)
            result.reads = attempt
            if not moved and not duplicates:
                break
            # the same urls, each in as many rows as in the previous read
            signature = None if moved else (shape, frozenset(result.videos))
            if signature is not None and signature == previous:
                break  # the repeated URLs are stable: the API's own repeated rows
            previous = signature
            reasons.append(moved or duplicates)
            log.info(
                "usage.vse app=%s: the pages moved while being read (%s); reading again",
                app, reasons[-1],
            )  # fmt: skip
        else:
            raise ApiError(
                f"no consistent read in {READS} full reads: the pages kept moving"
                f" ({'; '.join(reasons)}) (app {app!r})",
                "pagination",
                False,
            )
        if result.skipped and not result.rows:
            # not a day without usage: reading zeros here would look healthy
            raise _bad(f"all {result.skipped} rows of the answer are unusable (app {app!r})")
        if result.skipped:
            log.warning("usage.vse app=%s: %d unusable rows skipped", app, result.skipped)
        return result

    def _read(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None
    ) -> tuple[UsageResult, str, str, dict[str, int]]:
        """One full read: (result, why it moved or "", repeated URLs across pages or "",
        rows per URL). Raises ApiError(pagination) for inconsistencies a re-read cannot fix."""
        filtering = self.include is not None or self.exclude is not None
        result = UsageResult(folded=set() if filtering else None)
        videos = result.videos
        folded = result.folded
        shape: dict[str, int] = {}  # rows per url, for the urls with more than one row
        first_page: dict[str, int] = {}  # url -> index of the page it was first seen on
        duplicates: list[str] = []
        count: int | None = None
        position = 0  # rows read so far (distinct positions)
        overlap: str | None = None  # the url the next page must start with
        size: int | None = None  # the server's page size, when it caps below page_size
        previous: list[tuple[str, int, int]] | None = None
        pages = 0
        held = 0  # what the distinct videos cost (see VIDEO_COST), against max_fetch_bytes
        while True:
            offset = position - 1 if overlap is not None else position
            page = self.fetch_page(app, urls, year, month, day, offset)
            pages += 1
            result.pages += 1
            if count is None:
                count = page.count
                result.count = count
            elif page.count != count:
                return result, f"count changed from {count} to {page.count}", "", shape
            rows = page.rows
            returned = len(rows) + page.skipped
            incomplete = page.incomplete
            if previous is not None and rows and rows == previous:
                raise ApiError(
                    f"page at offset {offset} repeats the previous page: the API seems to"
                    f" ignore offset (app {app!r})",
                    "pagination",
                    False,
                )
            if overlap is not None:
                if returned == 0 or page.lead != overlap:
                    if returned == 0 and position < count:
                        return (
                            result,
                            f"empty page at offset {offset} before count {count}",
                            "",
                            shape,
                        )
                    if returned == 0:
                        break
                    return result, f"the row before offset {position} changed", "", shape
                rows = rows[1:]
                returned -= 1
                incomplete -= page.lead_incomplete
            if returned == 0:
                if position < count:
                    return result, f"empty page at offset {offset} before count {count}", "", shape
                break
            if position + returned > count:
                return result, f"more rows than count ({position + returned} > {count})", "", shape
            page_len = returned + (1 if overlap is not None else 0)
            if size is None:
                size = page_len if page_len < self.page_size else self.page_size
            elif page_len < size and position + returned < count:
                return (
                    result,
                    f"short page at offset {offset} ({page_len} < {size} rows)",
                    "",
                    shape,
                )
            if folded is not None:
                folded.update(page.folded)
            for url, b, r in rows:
                old = videos.get(url)
                if old is None:
                    videos[url] = (b, r)
                    first_page[url] = pages
                    held += len(url) + VIDEO_COST
                    continue
                videos[url] = (old[0] + b, old[1] + r)
                shape[url] = shape.get(url, 1) + 1
                if first_page[url] != pages and len(duplicates) < 3:
                    duplicates.append(url)
            if held > self.max_fetch_bytes:
                raise ApiError(
                    f"the fetch would hold more than scaleengine.max_fetch_bytes"
                    f" ({self.max_fetch_bytes} bytes: {len(videos)} videos after {pages} pages"
                    f" of {count} rows): refused (app {app!r})",
                    "too_large",
                    False,
                )
            result.rows += len(rows)
            result.skipped += page.skipped
            result.incomplete += incomplete
            position += returned
            if position >= count:
                break
            if result.pages >= self.max_pages:
                raise ApiError(
                    f"max_pages ({self.max_pages}) reached at {position} of {count} rows"
                    f" (app {app!r})",
                    "pagination",
                    False,
                )
            previous = page.rows
            # the next page starts on the last row read, to see whether the pages moved
            overlap = page.tail if (size or 0) > 1 else None
        dup = ""
        if duplicates:
            dup = "the same video_url on two pages: " + ", ".join(
                repr(_server_text(u, 80)) for u in duplicates
            )
        return result, "", dup, shape
