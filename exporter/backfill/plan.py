"""What backfill reads: the days of a range, and one day of one app read and folded."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from ..appkey import AppKey
from ..config import AppConfig, Config
from ..poller import fold_with_limits
from ..scaleengine import ApiError, ScaleEngineClient, UsageResult

PROG = "scaleengine-exporter backfill"
MAX_DAYS = 400
DEFAULT_BUSY_BACKOFF = 120.0  # "try again in a few minutes" (error 1000)
BUSY_TRIES = 5  # extra fetches of a day after the client's own retries ended on 1000
# errors that will fail every day of the app the same way: stop asking for that app
FATAL_OUTCOMES = frozenset({"api_0000", "api_0001", "api_0002", "api_0003", "api_0005"})


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One app's final values for one day."""

    videos: tuple[tuple[str, int, int], ...]  # folded: top videos, then __other__
    day_bytes: int
    day_requests: int
    day_videos: int


Key = tuple[AppKey, date]  # ((account, app), day)


def day_timestamp(day: date, tz: ZoneInfo) -> int:
    """Unix time of the last second of ``day`` in ``tz``."""
    end = datetime.combine(day + timedelta(days=1), dtime(0), tz)
    return int(end.timestamp()) - 1


def plan_days(start: date, end: date) -> list[date]:
    """The days to read for ``start``..``end``: from the first day of ``start``'s month."""
    day = start.replace(day=1)
    out = []
    while day <= end:
        out.append(day)
        day += timedelta(days=1)
    return out


def check_range(start: date, end: date | None, today: date) -> date:
    """The range's last day; raises ValueError with the message for a refused range."""
    if end is None:
        end = today - timedelta(days=1)
    if end >= today:
        raise ValueError(
            f"--to {end.isoformat()} is not in the past: today ({today.isoformat()} in "
            "poll.timezone) is still being delivered; the daemon exports it live"
        )
    if start > end:
        raise ValueError(f"--from {start.isoformat()} is after --to {end.isoformat()}")
    days = (end - start).days + 1
    if days > MAX_DAYS:
        raise ValueError(f"{days} days asked, at most {MAX_DAYS} per run: split the range")
    return end


def day_usage(result: UsageResult, app: AppConfig, config: Config) -> DayUsage:
    """A fetched day folded like the daemon folds it (cap and __other__), exact totals."""
    videos = fold_with_limits(result.videos, config.limits, result.folded)
    total_b = total_r = 0
    for nbytes, nrequests in result.videos.values():
        total_b += nbytes
        total_r += nrequests
    return DayUsage(videos, total_b, total_r, len(result.videos))


def fetch_day(
    client: ScaleEngineClient,
    app: AppConfig,
    day: date,
    busy_wait: float,
    stop: threading.Event,
    on_busy: Callable[[int, float], None] | None = None,
) -> UsageResult:
    """One day of one app; on error 1000 (busy) waits ``busy_wait`` and tries again."""
    for attempt in range(BUSY_TRIES + 1):
        try:
            return client.fetch_usage(app.name, app.urls, day.year, day.month, day.day)
        except ApiError as err:
            if err.outcome != "api_1000" or attempt == BUSY_TRIES:
                raise
            if on_busy is not None:
                on_busy(attempt + 1, busy_wait)
            if stop.wait(busy_wait):
                raise
    raise AssertionError("unreachable")  # pragma: no cover
