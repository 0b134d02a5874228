"""Per-app state of the poller: what one app's polls remember from one run to the next."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from ..appkey import AppKey
from ..scaleengine import ApiError, ScaleEngineClient, UsageResult
from ..state import AppCounters
from ..store import AppUsage

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AppConfig


@dataclass
class MonthTotal:
    day: str  # the day the month total was fetched on
    key: tuple[int, int]
    bytes: int
    requests: int
    day_bytes: int  # today's totals at the time of that fetch
    day_requests: int
    fetched_at: float


@dataclass
class AppState:
    key: AppKey  # (account, app)
    config: AppConfig
    client: ScaleEngineClient
    counters: AppCounters
    lock: threading.Lock
    usage: AppUsage | None = None
    last_success: float | None = None
    month: MonthTotal | None = None
    previous_day: tuple[str, int] | None = None
    skipped_rows: int = 0
    incomplete_rows: int = 0
    polled: bool = False
    # the API said it is busy: no request for this app before busy_until (clock time)
    busy_until: float = 0.0
    busy_delay: float = 0.0
    busy_error: ApiError | None = None
    # time.monotonic() of the last poll's end (or of the app's start); the overdue watch and
    # a poll's publish take publish_lock, so a late "overdue" never hides a newer poll
    last_end: float = field(default_factory=time.monotonic)
    overdue: bool = False
    publish_lock: threading.Lock = field(default_factory=threading.Lock)


def day_bounds(now: float, tz: ZoneInfo) -> tuple[date, float, float]:
    """(today, start of today, end of today) in ``tz``; start and end as unix times."""
    today = datetime.fromtimestamp(now, tz).date()
    start = datetime.combine(today, dtime(0), tz).timestamp()
    end = datetime.combine(today + timedelta(days=1), dtime(0), tz).timestamp()
    return today, start, end


def recent_days(today: date) -> set[str]:
    """Today and yesterday (ISO): the days whose baselines a state keeps."""
    return {today.isoformat(), (today - timedelta(days=1)).isoformat()}


def totals(result: UsageResult) -> tuple[int, int]:
    """(bytes, requests) summed over a fetch's videos."""
    total_b = total_r = 0
    for nbytes, nrequests in result.videos.values():
        total_b += nbytes
        total_r += nrequests
    return total_b, total_r
