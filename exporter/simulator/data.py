"""The simulator's usage data: deterministic, synthetic, growing along a diurnal curve.

Usage is a function of (seed, app, video, date); a day's traffic accumulates along a smooth
diurnal curve (:func:`day_fraction`), so values only grow during a day. ``delivered(app,
day)`` is the full-day truth, ``reported(app, day, at)`` what the API reports at a given time
(``late_seconds`` late). Tests add traffic on demand with ``add_traffic``.
"""

from __future__ import annotations

import calendar
import hashlib
import math
import threading
import time
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

# Obviously fake demo credentials (the real key is 32 characters, the secret 64 hex digits).
DEMO_CDN_ID = 4242
DEMO_API_KEY = "DEMO0KEY0NOT0A0REAL0KEY000000000"
DEMO_API_SECRET = "demo-secret-not-a-real-secret-0000000000000000000000000000000000"
DEMO_APPS: dict[str, int] = {"demo-origin": 40, "live-events": 12, "vod-library": 60}

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


def _h(*parts: object) -> int:
    data = "|".join(map(str, parts)).encode("utf-8")
    return int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "big")


def video_names(app: str, n: int) -> list[str]:
    """The ``n`` video (or stream) names of an app, a few of them not ASCII."""
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
    return names


def split_rows(per_video: dict[str, list[int]]) -> list[tuple[str, int, int]]:
    """Rows in the server's stable order (by full-day bytes) from name -> [bytes, requests,
    full, split]; a video with a split per mille shows as two rows, as the API sometimes does."""
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


class UsageData:
    """The usage data part of :class:`~exporter.simulator.Simulator` (a mixin)."""

    clock: SimClock

    def _init_data(
        self,
        apps: dict[str, int] | None,
        clock: SimClock | None,
        tz: str,
        seed: int,
        late_seconds: float,
        static_rows: dict[str, list[tuple[str, int, int]]] | None,
    ) -> None:
        self.apps = dict(DEMO_APPS if apps is None else apps)
        self.clock = clock or SimClock()
        self.tz = ZoneInfo(tz)
        self.seed = seed
        self.late_seconds = float(late_seconds)
        self.static_rows = (
            None if static_rows is None else {a: list(r) for a, r in static_rows.items()}
        )
        self._lock = threading.Lock()
        self._videos: dict[str, list[str]] = {}
        self._totals: dict[tuple[str, date], list[tuple[str, int, int, int]]] = {}
        # traffic added on demand by tests (add_traffic): (app, day) -> video -> [bytes, reqs]
        self._extra: dict[tuple[str, date], dict[str, list[int]]] = {}

    def add_app(self, app: str, videos: int = 10) -> None:
        """Create an app at run time (tests of discovery): app.list names it from now on,
        and its usage is as any app's (the whole day so far included)."""
        with self._lock:
            self.apps = {**self.apps, app: int(videos)}
            self._forget(app)

    def remove_app(self, app: str) -> None:
        """Delete an app at run time: app.list no longer names it and its usage is empty."""
        with self._lock:
            self.apps = {a: n for a, n in self.apps.items() if a != app}
            self._forget(app)

    def _forget(self, app: str) -> None:
        """Drop an app's cached videos and day totals (the caller holds the lock)."""
        self._videos.pop(app, None)
        for key in [k for k in self._totals if k[0] == app]:
            del self._totals[key]

    def videos(self, app: str) -> list[str]:
        """The video (or stream) names of an app."""
        with self._lock:
            names = self._videos.get(app)
        if names is not None:
            return names
        names = video_names(app, self.apps.get(app, 0))
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
        return split_rows(per_video)
