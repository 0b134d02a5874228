"""A stand-in for ScaleEngine's usage.vse API, for the demo, the tests and the benchmark.

It is at least as strict as the real API is known to be (see /work/shared/REFERENCE.md): a
request it accepts is one the real API accepts. The ``json`` form field must be byte for byte
what PHP's json_encode writes for the decoded request, keys in the documented order, ``cdn``
(not ``cdn_id``), integers where integers are documented, a timestamp within
``timestamp_window`` seconds of its clock and a valid HMAC-SHA256 signature.

Usage data is synthetic and deterministic from (seed, app, video, date); traffic grows along a
smooth diurnal curve, so values only grow during a day. ``delivered(app, day)`` is the full-day
truth, ``reported(app, day, at)`` what the API reports at a given time (with ``late_seconds``).

Run standalone: ``python -m exporter.simulator --port 8099``.
"""

from __future__ import annotations

import argparse
import calendar
import email.parser
import email.policy
import hashlib
import hmac
import io
import json
import math
import socket
import ssl
import struct
import sys
import threading
import time
import urllib.parse
import zlib
from collections import deque
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from zoneinfo import ZoneInfo

from exporter.phpjson import php_json_encode
from exporter.scaleengine import sign

__all__ = [
    "DEMO_API_KEY",
    "DEMO_API_SECRET",
    "DEMO_APPS",
    "DEMO_CDN_ID",
    "FAULT_MODES",
    "SimClock",
    "Simulator",
]

# Obviously fake demo credentials (the real key is 32 characters, the secret 64 hex digits).
DEMO_CDN_ID = 4242
DEMO_API_KEY = "DEMO0KEY0NOT0A0REAL0KEY000000000"
DEMO_API_SECRET = "demo-secret-not-a-real-secret-0000000000000000000000000000000000"
DEMO_APPS: dict[str, int] = {"demo-origin": 40, "live-events": 12, "vod-library": 60}

COMMAND = "usage.vse"
# Documented order of the request keys; "signature" is appended last by the signer.
KEY_ORDER = (
    "command",
    "api_key",
    "timestamp",
    "cdn",
    "app",
    "url",
    "year",
    "month",
    "day",
    "limit",
    "offset",
    "signature",
)
REQUIRED = ("command", "api_key", "timestamp", "cdn", "app", "year", "month")
INT_FIELDS = ("timestamp", "cdn", "year", "month", "day", "limit", "offset")

FAILURE_MESSAGES = {
    "0000": "Unrecognized API command",
    "0001": "CDN Authorization Failed",
    "0002": "Timestamp outside of valid range",
    "0003": "HMAC-SHA256 Signature Failed",
    "0004": "Unexpected Error",
    "0005": "Unauthorized access to API",
    "0006": "One or more required fields missing",
    "1000": "Servers under heavy traffic, please try again in a few minutes",
}

ROW_FAULTS = {
    "missing_fields",
    "negative_bytes",
    "fractional_bytes",
    "non_numeric_bytes",
    "huge_bytes",
    "bool_bytes",
    "long_digits",  # a number of 5000 digits (more than json.loads takes by default)
}
# label fault modes: the first row of the answer keeps its numbers but gets a hostile video_url
# (valid JSON that PHP's json_encode would not write, so spliced into the encoded answer)
LABEL_FAULTS = {"surrogate_url"}
_SURROGATE_MARK = "@@SURROGATE@@"
# A hostile or merely big answer, served by the HTTP handler itself (see _Handler.do_POST).
HTTP_FAULTS = {
    "reset",
    "timeout",
    "drip",  # a valid answer, one byte per ``drip_interval`` seconds
    "drip_headers",  # the status line and headers, one byte per ``drip_interval`` seconds
    "gzip_bomb",  # about 1 MB of gzip (Content-Encoding: gzip) inflating to 1 GiB
    "huge_body",  # a 200 MB body (spaces, then a valid empty answer), with Content-Length
    "endless_body",  # a chunked body that never ends
    "http_429",  # HTTP 429 with Retry-After: ``retry_after`` seconds
    "long_reason",  # HTTP 502 whose reason phrase is 10 kB with control characters
}
# Answers of the shapes an empty day may take (REFERENCE.md): read as an empty day.
EMPTY_FAULTS = {"empty_no_count", "empty_count_string", "empty_usage_null", "failure_no_usage"}
# The pages move while they are read: after the first page (shift_first) or the second
# (shift_later) of a read, the last row jumps to the top, as a video climbing the by-bytes
# order on a live day does. With ``times``, it happens during that many reads (requests at
# offset 0), then never again.
SHIFT_FAULTS = {"shift_first", "shift_later"}
FAULT_MODES = frozenset(
    {
        *LABEL_FAULTS,
        "http_500",
        "http_503",
        "http_500_json",  # HTTP 500 with the API's JSON failure 0004 as its body
        "invalid_json",
        "not_object",
        "usage_not_list",
        "ignore_offset",
        "count_changes",
        "empty_page_early",
        "partial_rows",  # requests_total null or missing in every row: bytes still good
        "failure_unknown_code",  # a failure with a code the API page does not list
        "failure_long_message",  # failure 0004 with a 10 kB message full of control characters
        *ROW_FAULTS,
        *HTTP_FAULTS,
        *EMPTY_FAULTS,
        *SHIFT_FAULTS,
        *(f"failure_{c}" for c in FAILURE_MESSAGES),
    }
)
BOMB_SIZE = 1 << 30
HUGE_BODY_SIZE = 200_000_000
_EMPTY_ANSWER = b'{"status":"success","usage":[],"count":0,"message":"No Video Usage Found"}'
_bomb_lock = threading.Lock()
_bomb: bytes | None = None


def gzip_bomb() -> bytes:
    """A gzip stream (about 1 MB) of an empty answer padded with 1 GiB of spaces; cached."""
    global _bomb
    with _bomb_lock:
        if _bomb is None:
            c = zlib.compressobj(9, zlib.DEFLATED, 31)
            parts = [c.compress(_EMPTY_ANSWER[:-1])]
            block = b" " * (1 << 20)
            parts.extend(c.compress(block) for _ in range(BOMB_SIZE >> 20))
            parts.append(c.compress(b"}"))
            parts.append(c.flush())
            _bomb = b"".join(parts)
        return _bomb


_PEAK_HOUR = 20.0  # evening peak of the diurnal curve
_AMPLITUDE = 0.8  # rate(t) = 1 + A cos(2 pi (t - peak)), always > 0


def day_fraction(x: float) -> float:
    """Cumulative share of a day's traffic at fraction x of the day; monotone, F(0)=0, F(1)=1."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    p = _PEAK_HOUR / 24.0
    k = _AMPLITUDE / (2 * math.pi)
    f = x + k * (math.sin(2 * math.pi * (x - p)) - math.sin(-2 * math.pi * p))
    return min(1.0, max(0.0, f))


class SimClock:
    """A clock for the simulator and its clients: real time, or simulated once set."""

    def __init__(self, start: float | None = None) -> None:
        self._lock = threading.Lock()
        self._t = start

    def now(self) -> float:
        with self._lock:
            return time.time() if self._t is None else self._t

    def set(self, t: float) -> None:
        with self._lock:
            self._t = float(t)

    def advance(self, seconds: float) -> None:
        with self._lock:
            self._t = (time.time() if self._t is None else self._t) + float(seconds)

    __call__ = now


class _Reject(Exception):
    """A request the API refuses: answered with the documented failure JSON (HTTP 200)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def _h(*parts: object) -> int:
    data = "|".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


class Simulator:
    """The usage.vse API on loopback. Thread-safe; usable as a context manager."""

    def __init__(
        self,
        cdn_id: int = DEMO_CDN_ID,
        api_key: str = DEMO_API_KEY,
        api_secret: str = DEMO_API_SECRET,
        apps: dict[str, int] | None = None,
        clock: SimClock | None = None,
        tz: str = "UTC",
        seed: int = 0,
        late_seconds: float = 0,
        timestamp_window: float = 300,
        max_page_size: int | None = None,
        static_rows: dict[str, list[tuple[str, int, int]]] | None = None,
    ) -> None:
        self.cdn_id = cdn_id
        self.api_key = api_key
        self.api_secret = api_secret
        self.apps = dict(DEMO_APPS if apps is None else apps)
        self.clock = clock or SimClock()
        self.tz = ZoneInfo(tz)
        self.seed = seed
        self.late_seconds = float(late_seconds)
        self.timestamp_window = float(timestamp_window)
        self.max_page_size = max_page_size
        self.static_rows = (
            None if static_rows is None else {a: list(r) for a, r in static_rows.items()}
        )
        self.fault_delay = 30.0
        self.drip_interval = 1.0
        self.gzip_answers = False  # gzip answers when the client accepts it (as nginx may)
        self.retry_after = 120
        # app -> seconds each of its good answers waits before it goes out (a slow, valid API)
        self.page_delay: dict[str, float] = {}
        self._shift_step: dict[str, int] = {}
        # bounded: the demo runs for days
        self.request_log: deque[dict[str, Any]] = deque(maxlen=100_000)
        # tests: keep each request's json field in its log entry ("body"), so that they can be
        # checked by real PHP afterwards; off by default (the demo runs for days)
        self.record_bodies = False
        # tests: failure messages quote the request, as debugging PHP backends do, so that
        # tests can check that the client keeps the key and signature out of its logs
        self.echo_requests = False
        self._lock = threading.Lock()
        self._faults: dict[str | None, list[Any]] = {}  # app -> [mode, remaining or None]
        self._day_faults: dict[tuple[str, date], str] = {}  # (app, day) -> mode (backfill)
        self._videos: dict[str, list[str]] = {}
        self._totals: dict[tuple[str, date], list[tuple[str, int, int, int]]] = {}
        # traffic added on demand by tests (add_traffic): (app, day) -> video -> [bytes, reqs]
        self._extra: dict[tuple[str, date], dict[str, list[int]]] = {}
        self._page_cache: dict[tuple[Any, ...], bytes] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ------------------------------------------------------------------------

    def start(
        self, host: str = "127.0.0.1", port: int = 0, ssl_context: ssl.SSLContext | None = None
    ) -> str:
        """Serve on ``host:port`` (0: any free port); HTTPS with ``ssl_context``."""
        if self._server is not None:
            return self.url
        self._stopping.clear()
        server = _Server((host, port), _Handler)
        server.sim = self
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

    def __enter__(self) -> Simulator:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- faults and observability ---------------------------------------------------------

    def set_fault(self, app: str | None, mode: str | None, times: int | None = None) -> None:
        """Make requests for ``app`` (None: every app) fail with ``mode``; None clears.

        ``times``: only the next N requests, then healthy again.
        """
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
        if mode == "gzip_bomb":
            gzip_bomb()  # built now (a few seconds, once), not while a client waits
        with self._lock:
            if mode is None:
                if app is None:
                    self._faults.clear()
                else:
                    self._faults.pop(app, None)
            else:
                self._faults[app] = [mode, times]

    def _take_fault(self, app: Any, offset: int = 0) -> str | None:
        with self._lock:
            key: str | None = app if isinstance(app, str) and app in self._faults else None
            entry = self._faults.get(key)
            if entry is None:
                return None
            mode, remaining = entry
            if mode in SHIFT_FAULTS:  # ``times`` counts reads: requests at offset 0
                if offset == 0 and remaining is not None:
                    if remaining <= 0:
                        del self._faults[key]
                        return None
                    entry[1] = remaining - 1
                return mode
            if remaining is not None:
                if remaining <= 1:
                    del self._faults[key]
                else:
                    entry[1] = remaining - 1
            return mode

    # -- faults keyed by the day asked (backfill tests) --

    def set_day_fault(self, app: str, day: date, mode: str | None) -> None:
        """Make every request for ``app``'s ``day`` (a day query) fail with ``mode``; None clears.

        Checked after the per-app faults of :meth:`set_fault`; month queries are not affected.
        """
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
        with self._lock:
            if mode is None:
                self._day_faults.pop((app, day), None)
            else:
                self._day_faults[(app, day)] = mode

    def _take_day_fault(self, req: dict[str, Any]) -> str | None:
        if not self._day_faults or "day" not in req or not isinstance(req["app"], str):
            return None
        with self._lock:
            return self._day_faults.get((req["app"], date(req["year"], req["month"], req["day"])))

    def requests_for(self, app: str) -> int:
        with self._lock:
            return sum(1 for e in self.request_log if e.get("app") == app)

    def clear_log(self) -> None:
        with self._lock:
            self.request_log.clear()

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.request_log.append(entry)

    # -- synthetic data -------------------------------------------------------------------

    def videos(self, app: str) -> list[str]:
        """The video (or stream) names of an app."""
        with self._lock:
            names = self._videos.get(app)
        if names is not None:
            return names
        n = self.apps.get(app, 0)
        live = "live" in app
        names = []
        for i in range(n):
            if live:
                name = f"{app}_stream{i:02d}"
                if i == 4:
                    name = f"{app}_fête-ü"
                elif i == 9:
                    name = f"{app}_party-😀"
            else:
                name = f"sestore/{app}/clip-{i:03d}.mp4"
                if i == 3:
                    name = f"sestore/{app}/café-ü.mp4"
                elif i == 11:
                    name = f"sestore/{app}/视频-{i}.mp4"
                elif i == 17:
                    name = f"sestore/{app}/party-😀.mp4"
            names.append(name)
        with self._lock:
            self._videos[app] = names
        return names

    def _day_totals(self, app: str, day: date) -> list[tuple[str, int, int, int]]:
        """Full-day (video, bytes, requests, split per mille or 0) for videos used that day."""
        key = (app, day)
        with self._lock:
            cached = self._totals.get(key)
        if cached is not None:
            return cached
        out = []
        iso = day.isoformat()
        for i, name in enumerate(self.videos(app)):
            h = _h(self.seed, app, name, iso)
            if h % 9 == 0:  # unused that day
                continue
            popularity = 4e9 / (1 + i) ** 0.9
            b = int(popularity * (0.3 + (h >> 8) % 1000 / 700.0)) + h % 997
            r = max(1, b // (1_500_000 + (h >> 20) % 1_000_000))
            if (h >> 40) % 11 == 0:
                r = 0  # like the documented example: bytes but no play/pause/stop requests
            split = 200 + (h >> 34) % 600 if (h >> 44) % 5 == 0 else 0
            out.append((name, b, r, split))
        with self._lock:
            if len(self._totals) > 4096:
                self._totals.clear()
            self._totals[key] = out
        return out

    def _day_bounds(self, day: date) -> tuple[float, float]:
        start = datetime(day.year, day.month, day.day, tzinfo=self.tz).timestamp()
        nxt = day + timedelta(days=1)
        end = datetime(nxt.year, nxt.month, nxt.day, tzinfo=self.tz).timestamp()
        return start, end

    def _fraction(self, day: date, at: float) -> float:
        start, end = self._day_bounds(day)
        eff = min(at - self.late_seconds, end)
        if eff <= start:
            return 0.0
        if eff >= end:
            return 1.0
        return day_fraction((eff - start) / (end - start))

    def today(self, at: float | None = None) -> date:
        t = self.clock.now() if at is None else at
        return datetime.fromtimestamp(t, self.tz).date()

    def add_traffic(
        self, app: str, nbytes: int, requests: int = 0, video: str | None = None
    ) -> None:
        """Deliver ``nbytes`` and ``requests`` more today (the clock's day) for one video of
        ``app`` (its first by default), reported at once and part of the truth.

        The diurnal curve makes traffic grow slowly at some hours (the trough is at 08:00):
        tests that need growth add it on demand instead of waiting on the time of day."""
        name = video if video is not None else self.videos(app)[0]
        key = (app, self.today())
        with self._lock:
            acc = self._extra.setdefault(key, {}).setdefault(name, [0, 0])
            acc[0] += int(nbytes)
            acc[1] += int(requests)

    def _video_values(
        self, app: str, day: date, at: float
    ) -> Iterator[tuple[str, int, int, int, int]]:
        """(video, bytes, requests, split, full-day bytes) reported at ``at`` for one day."""
        f = self._fraction(day, at)
        with self._lock:
            extra = {k: tuple(v) for k, v in self._extra.get((app, day), {}).items()}
        for name, b, r, split in self._day_totals(app, day):
            eb, er = extra.pop(name, (0, 0))
            if f >= 1.0:
                yield name, b + eb, r + er, split, b + eb
            else:
                yield name, math.floor(b * f) + eb, math.floor(r * f) + er, split, b + eb
        for name, (eb, er) in extra.items():  # a video otherwise unused that day
            yield name, eb, er, 0, eb

    def delivered(self, app: str, day: date) -> tuple[int, int]:
        """Full-day truth: (bytes, requests) summed over all videos of ``app`` on ``day``."""
        rows = self._day_totals(app, day)
        with self._lock:
            extra = list(self._extra.get((app, day), {}).values())
        return (
            sum(r[1] for r in rows) + sum(e[0] for e in extra),
            sum(r[2] for r in rows) + sum(e[1] for e in extra),
        )

    def reported(self, app: str, day: date, at: float | None = None) -> tuple[int, int]:
        """What the API reports for (app, day) at time ``at`` (default: the clock's now)."""
        at = self.clock.now() if at is None else at
        if day > self.today(at):
            return 0, 0
        b = r = 0
        for _, vb, vr, _, _ in self._video_values(app, day, at):
            b += vb
            r += vr
        return b, r

    def reported_videos(
        self, app: str, year: int, month: int, day: int | None, at: float | None = None
    ) -> dict[str, tuple[int, int]]:
        """Per-video truth of what a request reports at ``at`` (duplicates summed)."""
        out: dict[str, tuple[int, int]] = {}
        for name, b, r in self._rows(app, year, month, day, at):
            ob, orq = out.get(name, (0, 0))
            out[name] = (ob + b, orq + r)
        return out

    def _rows(
        self, app: str, year: int, month: int, day: int | None, at: float | None = None
    ) -> list[tuple[str, int, int]]:
        """All rows of a request, in the server's stable order."""
        if self.static_rows is not None:
            return self.static_rows.get(app, [])
        at = self.clock.now() if at is None else at
        today = self.today(at)
        if day is None:
            last = calendar.monthrange(year, month)[1]
            days = [date(year, month, d) for d in range(1, last + 1)]
        else:
            days = [date(year, month, day)]
        days = [d for d in days if d <= today]
        per_video: dict[str, list[int]] = {}  # name -> [bytes, requests, full, split]
        for d in days:
            for name, b, r, split, full in self._video_values(app, d, at):
                acc = per_video.get(name)
                if acc is None:
                    per_video[name] = [b, r, full, split]
                else:
                    acc[0] += b
                    acc[1] += r
                    acc[2] += full
                    acc[3] = acc[3] or split
        keyed: list[tuple[int, str, int, int, int]] = []
        for name, (b, r, full, split) in per_video.items():
            if split:
                b1, r1 = b * split // 1000, r * split // 1000
                keyed.append((-(full * split // 1000), name, 0, b1, r1))
                keyed.append((-(full - full * split // 1000), name, 1, b - b1, r - r1))
            else:
                keyed.append((-full, name, 0, b, r))
        keyed.sort()
        return [(name, b, r) for _, name, _, b, r in keyed]

    # -- request handling -----------------------------------------------------------------

    def _validate(self, text: str) -> dict[str, Any]:
        """Check a request like the real API; returns the decoded request or raises _Reject."""
        try:
            pairs = json.loads(text, object_pairs_hook=lambda p: p)
        except (ValueError, RecursionError):
            raise _Reject("0006", "request is not valid JSON") from None
        if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
            raise _Reject("0006", "request is not a JSON object")
        keys = [k for k, _ in pairs]
        if len(set(keys)) != len(keys):
            raise _Reject("0006", "duplicate keys in request")
        req = json.loads(text)
        if "command" not in req:
            raise _Reject("0006", "missing field: command")
        if req["command"] != COMMAND:
            raise _Reject("0000")
        if "cdn_id" in req:
            raise _Reject("0006", "unknown field cdn_id: the account field is cdn")
        unknown = [k for k in keys if k not in KEY_ORDER]
        if unknown:
            raise _Reject("0006", f"unknown field(s): {', '.join(unknown)}")
        missing = [k for k in REQUIRED if k not in req]
        if missing:
            raise _Reject("0006", f"missing field(s): {', '.join(missing)}")
        if keys != [k for k in KEY_ORDER if k in req]:
            raise _Reject("0006", "fields out of the documented order")
        for k in INT_FIELDS:
            if k in req and type(req[k]) is not int:
                raise _Reject("0006", f"field {k} must be an integer")
        for k in ("app", "url"):
            v = req.get(k)
            if k in req and not (
                isinstance(v, str)
                or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
            ):
                raise _Reject("0006", f"field {k} must be a string or a list of strings")
        if not isinstance(req["api_key"], str):
            raise _Reject("0006", "field api_key must be a string")
        if not 1 <= req["month"] <= 12 or not 1970 <= req["year"] <= 9999:
            raise _Reject("0006", "invalid year or month")
        if (
            "day" in req
            and not 1 <= req["day"] <= calendar.monthrange(req["year"], req["month"])[1]
        ):
            raise _Reject("0006", "invalid day")
        if req.get("limit", 1) < 1 or req.get("offset", 0) < 0:
            raise _Reject("0006", "limit must be >= 1 and offset >= 0")
        if req["cdn"] != self.cdn_id or not hmac.compare_digest(
            req["api_key"].encode("utf-8"), self.api_key.encode("utf-8")
        ):
            raise _Reject("0001")
        if abs(req["timestamp"] - self.clock.now()) > self.timestamp_window:
            raise _Reject("0002")
        signature = req.get("signature")
        if not isinstance(signature, str) or keys[-1] != "signature":
            raise _Reject("0003", "missing signature")
        unsigned = dict(req)
        del unsigned["signature"]
        try:
            canonical = php_json_encode(req)
            expected = sign(unsigned, self.api_secret)
        except (ValueError, TypeError):
            raise _Reject("0003", "request cannot be encoded by PHP json_encode") from None
        if text != canonical:
            raise _Reject("0003", "request JSON is not as PHP json_encode writes it")
        if not hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii")):
            raise _Reject("0003")
        return req

    def _bad_row(self, app: str, mode: str, k: int) -> dict[str, Any]:
        row: dict[str, Any] = {
            "video_url": f"sestore/{app}/corrupt-{k}.mp4",
            "bytes_total": "1000",
            "requests_total": "1",
        }
        if mode == "missing_fields":
            del row["bytes_total"]
        elif mode == "negative_bytes":
            row["bytes_total"] = "-1000" if k % 2 == 0 else -1000
        elif mode == "fractional_bytes":
            row["bytes_total"] = "1000.5" if k % 2 == 0 else 1000.5
        elif mode == "non_numeric_bytes":
            row["bytes_total"] = "12abc" if k % 2 == 0 else None
        elif mode == "huge_bytes":
            row["bytes_total"] = str(2**64) if k % 2 == 0 else str(2**63)
        elif mode == "bool_bytes":
            row["bytes_total"] = True
        elif mode == "long_digits":
            row["bytes_total"] = "__LONG_DIGITS__"  # replaced by 5000 digits once encoded
        return row

    def answer(self, text: str) -> tuple[int, str, bytes]:
        """Answer one request (the ``json`` form field): (HTTP status, content type, body).

        Fault modes "reset" and "timeout" are handled by the HTTP handler (see ``handle``).
        """
        return self._answer(text)[:3]

    def _answer(self, text: str) -> tuple[int, str, bytes, str | None]:
        started = time.perf_counter()
        entry: dict[str, Any] = {"app": None, "day": None, "offset": None, "limit": None}
        entry["timestamp"] = self.clock.now()
        if self.record_bodies:
            entry["body"] = text
        echo = self._echo(text) if self.echo_requests else ""
        try:
            req = self._validate(text)
        except _Reject as rej:
            entry.update(outcome="failure", code=rej.code, detail=rej.detail)
            try:  # log the app when it is readable, to help tests
                loose = json.loads(text)
                if isinstance(loose, dict):
                    entry["app"] = loose.get("app")
            except ValueError:
                pass
            self._log(entry)
            detail = f"{rej.detail} {echo}".strip()
            return 200, "application/json", self._failure(rej.code, detail), None
        app = req["app"]
        entry.update(
            app=app if isinstance(app, str) else tuple(app),
            day=req.get("day"),
            year=req["year"],
            month=req["month"],
            offset=req.get("offset", 0),
            limit=req.get("limit"),
            request_timestamp=req["timestamp"],
        )
        mode = self._take_fault(app, entry["offset"]) or self._take_day_fault(req)
        entry["fault"] = mode
        if mode == "failure_no_usage":
            entry.update(outcome="success", code=None)
            self._log(entry)
            body = b'{"status":"failure","message":"No Video Usage Found"}'
            return 200, "application/json", body, mode
        if mode == "failure_unknown_code":
            entry.update(outcome="failure", code="9999")
            self._log(entry)
            body = b'{"status":"failure","code":"9999","message":"Quota exceeded"}'
            return 200, "application/json", body, mode
        if mode == "failure_long_message":
            entry.update(outcome="failure", code="0004")
            self._log(entry)
            msg = "Unexpected Error \x1b[31m\x07\r\n" + "\x00x\u202e" * 3000
            body = php_json_encode({"status": "failure", "code": "0004", "message": msg})
            return 200, "application/json", body.encode(), mode
        if mode is not None and mode.startswith("failure_"):
            code = mode[len("failure_") :]
            entry.update(outcome="failure", code=code)
            self._log(entry)
            return 200, "application/json", self._failure(code, echo), mode
        if mode == "http_500_json":
            entry.update(outcome="failure", code="0004")
            self._log(entry)
            return 500, "application/json", self._failure("0004", "database gone"), mode
        if mode in HTTP_FAULTS - {"drip", "drip_headers"} or mode in (
            "http_500",
            "http_503",
            "invalid_json",
            "not_object",
        ):
            entry.update(outcome=mode, code=None)
            self._log(entry)
            if mode in ("http_500", "http_503"):
                status = int(mode[-3:])
                html = (
                    f"<html><head><title>{status}</title></head><body><h1>{status} "
                    f"{'Internal Server Error' if status == 500 else 'Service Unavailable'}"
                    "</h1></body></html>"
                )
                return status, "text/html; charset=UTF-8", html.encode(), mode
            if mode == "invalid_json":
                body = b"<br />\n<b>Fatal error</b>: Allowed memory size exhausted in api.php"
                return 200, "text/html; charset=UTF-8", body, mode
            if mode == "not_object":
                return 200, "application/json", b'["success",[],0]', mode
            return 200, "application/json", b"", mode  # reset/timeout: handled by caller
        body = self._page(req, mode, started)
        entry.update(outcome="success", code=None)
        self._log(entry)
        delay = self.page_delay.get(app) if isinstance(app, str) else None
        if delay:  # a slow but valid API: each page of this app after ``delay`` seconds
            self._stopping.wait(delay)
        return 200, "application/json", body, mode

    @staticmethod
    def _echo(text: str) -> str:
        """The request quoted for a failure message, signature first (a short message keeps it)."""
        try:
            loose = json.loads(text)
        except ValueError:
            loose = None
        signature = loose.get("signature") if isinstance(loose, dict) else None
        return f"(got signature {signature}; request {text})"

    def _failure(self, code: str, detail: str) -> bytes:
        msg = FAILURE_MESSAGES.get(code, "Unexpected Error")
        if detail:
            msg = f"{msg}: {detail}"
        return php_json_encode({"status": "failure", "code": code, "message": msg}).encode()

    def _page(self, req: dict[str, Any], mode: str | None, started: float) -> bytes:
        apps = [req["app"]] if isinstance(req["app"], str) else req["app"]
        year, month, day = req["year"], req["month"], req.get("day")
        limit = req.get("limit")
        offset = req.get("offset", 0)
        size = limit
        if self.max_page_size is not None:
            size = self.max_page_size if size is None else min(size, self.max_page_size)
        url = req.get("url")
        cache_key = None
        if self.static_rows is not None and mode is None and url is None:
            cache_key = (tuple(apps), offset, size, day is None)
            with self._lock:
                cached = self._page_cache.get(cache_key)
            if cached is not None:
                return cached
        rows: list[Any] = []
        for a in apps:
            rows.extend(self._rows(a, year, month, day))
        if len(apps) > 1:
            rows.sort(key=lambda r: (-r[1], r[0]))
        if url is not None:
            wanted = {url} if isinstance(url, str) else set(url)
            rows = [r for r in rows if r[0] in wanted]
        if mode in ROW_FAULTS:
            # one bad row at the start of every page; not part of the truth
            step = max(1, (size or len(rows) + 1) - 1)
            mixed: list[Any] = []
            for k, i in enumerate(range(0, max(len(rows), 1), step)):
                mixed.append(self._bad_row(apps[0], mode, k))
                mixed.extend(rows[i : i + step])
            rows = mixed
        if mode in SHIFT_FAULTS:
            key = apps[0]
            with self._lock:
                step = 0 if offset == 0 else self._shift_step.get(key, 0) + 1
                self._shift_step[key] = step
            if step >= (1 if mode == "shift_first" else 2) and len(rows) > 1:
                rows = [rows[-1], *rows[:-1]]
        count = len(rows)
        start = 0 if mode == "ignore_offset" else offset
        end = count if size is None else start + size
        chosen = rows[start:end]
        if mode == "empty_page_early" and offset > 0:
            chosen = []
        if mode == "count_changes":
            count += 1 + offset
        usage: Any = [
            r
            if isinstance(r, dict)
            else {"video_url": r[0], "bytes_total": str(r[1]), "requests_total": str(r[2])}
            for r in chosen
        ]
        if mode == "surrogate_url" and usage and offset == 0:
            usage[0] = {**usage[0], "video_url": usage[0]["video_url"] + _SURROGATE_MARK}
        if mode == "usage_not_list":
            usage = {str(i + 1): r for i, r in enumerate(usage)} or {"1": None}
        if mode == "partial_rows":
            for k, row in enumerate(usage):
                if k % 2:
                    row["requests_total"] = None
                else:
                    del row["requests_total"]
        elapsed = time.perf_counter() - started
        answer: dict[str, Any] = {
            "status": "success",
            "usage": usage,
            "count": count,
            "message": "Found Video Usage" if count else "No Video Usage Found",
            "handle_time": f"{elapsed:.4f} seconds",
        }
        if mode in EMPTY_FAULTS:
            answer = {"status": "success", "usage": [], "message": "No Video Usage Found"}
            if mode == "empty_count_string":
                answer["count"] = "0"
            elif mode == "empty_usage_null":
                answer["usage"] = None
        body = php_json_encode(answer).encode("ascii")
        if mode == "surrogate_url":  # a lone UTF-16 surrogate
            body = body.replace(_SURROGATE_MARK.encode(), b"bad\\ud800url")
        if mode == "long_digits":
            body = body.replace(b'"__LONG_DIGITS__"', b"9" * 5000)
        if cache_key is not None:
            with self._lock:
                self._page_cache[cache_key] = body
        return body


def _form_json(content_type: str, body: bytes) -> str:
    """The ``json`` field of a urlencoded or multipart form; raises _Reject(0006)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    values: list[str] = []
    if ctype == "application/x-www-form-urlencoded":
        try:
            fields = urllib.parse.parse_qs(
                body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
                encoding="utf-8", errors="strict",
            )  # fmt: skip
        except (ValueError, UnicodeDecodeError):
            raise _Reject("0006", "malformed form body") from None
        values = fields.get("json", [])
    elif ctype == "multipart/form-data":
        header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
        msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
        if not msg.is_multipart() or msg.defects:
            raise _Reject("0006", "malformed multipart body")
        for part in msg.iter_parts():
            if part.get_param("name", header="content-disposition") == "json":
                payload = part.get_payload(decode=True)
                if not isinstance(payload, bytes):
                    raise _Reject("0006", "malformed multipart body")
                try:
                    values.append(payload.decode("utf-8"))
                except UnicodeDecodeError:
                    raise _Reject("0006", "json field is not UTF-8") from None
    else:
        raise _Reject("0006", "no form data (send the json field as a form)")
    if len(values) != 1:
        raise _Reject("0006", "the form must have exactly one json field")
    return values[0]


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    sim: Simulator

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


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    wbufsize = 1 << 16  # headers and body leave in one write (no Nagle/delayed-ACK stall)
    server: _Server

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
            text = _form_json(self.headers.get("Content-Type", ""), body)
        except _Reject as rej:
            sim._log(
                {"app": None, "day": None, "offset": None, "limit": None,
                 "timestamp": sim.clock.now(), "outcome": "failure", "code": rej.code,
                 "detail": rej.detail}
            )  # fmt: skip
            self._send(200, "application/json", sim._failure(rej.code, rej.detail))
            return
        status, ctype, out, mode = sim._answer(text)
        if mode == "reset":
            self.close_connection = True
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
            except OSError:
                pass
            return
        if mode == "timeout":
            sim._stopping.wait(sim.fault_delay)
            self.close_connection = True
            try:
                self._send(200, "application/json", sim._failure("0004", "late answer"))
            except OSError:
                pass
            return
        if mode in HTTP_FAULTS:
            self.close_connection = True
            try:
                self._hostile(sim, mode, out)
            except OSError:  # the client gave up: that is the point
                self.wfile = io.BytesIO()  # drop what is still buffered for it
            return
        self._send(status, ctype, out)

    def _drip(self, sim: Simulator, data: bytes) -> None:
        for i in range(len(data)):
            if sim._stopping.wait(sim.drip_interval):
                return
            self.wfile.write(data[i : i + 1])
            self.wfile.flush()

    def _hostile(self, sim: Simulator, mode: str, body: bytes) -> None:
        if mode == "drip_headers":
            head = (
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n" % len(body)
            )
            self._drip(sim, head + body)
            return
        if mode == "long_reason":
            reason = "Bad Gateway \x1b[2J\x07" + "\x01\x7f" * 5000
            self.send_response(502, reason)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "3")
            self.end_headers()
            self.wfile.write(b"502")
            return
        if mode == "http_429":
            self.send_response(429)
            self.send_header("Retry-After", str(sim.retry_after))
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", "18")
            self.end_headers()
            self.wfile.write(b"Too Many Requests\n")
            return
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        if mode == "drip":
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.flush()
            self._drip(sim, body)
        elif mode == "gzip_bomb":
            bomb = gzip_bomb()
            self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(bomb)))
            self.end_headers()
            self.wfile.write(bomb)
        elif mode == "huge_body":
            self.send_header("Content-Length", str(HUGE_BODY_SIZE))
            self.end_headers()
            block = b" " * (1 << 20)
            left = HUGE_BODY_SIZE - len(_EMPTY_ANSWER)
            while left > 0 and not sim._stopping.is_set():
                self.wfile.write(block[: min(left, len(block))])
                left -= len(block)
            self.wfile.write(_EMPTY_ANSWER)
        elif mode == "endless_body":
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            chunk = b"%x\r\n%s\r\n" % (1 << 16, b" " * (1 << 16))
            while not sim._stopping.is_set():
                self.wfile.write(chunk)


def main(argv: list[str] | None = None) -> None:
    """Run the simulator standalone."""
    p = argparse.ArgumentParser(
        prog="python -m exporter.simulator", description=__doc__.split("\n")[0]
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8099)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tz", default="UTC")
    p.add_argument("--late-seconds", type=float, default=0.0)
    p.add_argument("--timestamp-window", type=float, default=300.0)
    p.add_argument("--max-page-size", type=int, default=None)
    args = p.parse_args(argv)
    sim = Simulator(
        seed=args.seed, tz=args.tz, late_seconds=args.late_seconds,
        timestamp_window=args.timestamp_window, max_page_size=args.max_page_size,
    )  # fmt: skip
    url = sim.start(args.host, args.port)
    print(f"ScaleEngine usage.vse simulator listening on {url}", flush=True)
    print("demo credentials (fake):", flush=True)
    print(f"  cdn_id:     {sim.cdn_id}", flush=True)
    print(f"  api_key:    {sim.api_key}", flush=True)
    print(f"  api_secret: {sim.api_secret}", flush=True)
    print(f"  apps:       {', '.join(sim.apps)}", flush=True)
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        sim.stop()


if __name__ == "__main__":
    main()
