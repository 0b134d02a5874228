"""Backfill's output file: reading back what a run wrote, and writing it (atomically) again.

The file is also the record of what has been read: a rerun keeps every complete (app, day) it
holds. Samples sit at the last second of their day in ``poll.timezone``; each family's samples
are written together, each series' in time order, as ``promtool`` wants them.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from ..appkey import AppKey
from ..config import Config
from ..metrics import app_labels, escape_label, usage_families
from ..state import atomic_write, read_regular_file
from .plan import PROG, DayUsage, Key, day_timestamp

MAX_OUTPUT_BYTES = 2**30  # an existing --output larger than 1 GiB is refused (exit 2)

DAY_BYTES = "scaleengine_vse_day_bytes"
DAY_REQUESTS = "scaleengine_vse_day_requests"
APP_DAY_BYTES = "scaleengine_vse_app_day_bytes"
APP_DAY_REQUESTS = "scaleengine_vse_app_day_requests"
APP_DAY_VIDEOS = "scaleengine_vse_app_day_videos"
APP_MONTH_BYTES = "scaleengine_vse_app_month_bytes"
APP_MONTH_REQUESTS = "scaleengine_vse_app_month_requests"
FAMILIES = (
    DAY_BYTES,
    DAY_REQUESTS,
    APP_DAY_BYTES,
    APP_DAY_REQUESTS,
    APP_DAY_VIDEOS,
    APP_MONTH_BYTES,
    APP_MONTH_REQUESTS,
)

# per family, (app, day) -> value; and per (app, day), video_url -> [bytes, requests]
AppValues = dict[str, dict[Key, int]]
VideoRows = dict[Key, dict[str, list[int]]]


class OutputError(Exception):
    """The existing output file cannot be read back (exit 2, the file is left as it is)."""


def read_output(path: str, tz: ZoneInfo, default_account: str = "") -> dict[Key, DayUsage]:
    """The complete (app, day)s of a file this command wrote. Raises OutputError. A file
    written before several accounts (no ``account`` label) holds ``default_account``'s."""
    try:
        # bytes, not text mode: a \r inside a label value is a character, not a line end
        text = read_regular_file(path, MAX_OUTPUT_BYTES).decode("utf-8")
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise OutputError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError as err:
        raise OutputError(f"cannot read {path}: not UTF-8 (byte {err.start})") from None
    if not text.strip():
        return {}
    try:
        app_values, videos = _parse(text, tz, default_account)
    except (ValueError, KeyError, TypeError) as err:
        raise OutputError(
            f"{path} exists but is not a file written by {PROG} ({err}); "
            "move it away or pick another --output"
        ) from None
    return _complete_days(app_values, videos)


def _parse(text: str, tz: ZoneInfo, default_account: str) -> tuple[AppValues, VideoRows]:
    """Every sample of the file by family; raises ValueError/KeyError/TypeError if the file
    is not ours (an unknown family, a sample off the end of a day in ``tz``, ...)."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    app_values: AppValues = {name: {} for name in FAMILIES}
    videos: VideoRows = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name not in app_values or s.timestamp is None:
                raise ValueError(f"unexpected sample {s.name}")
            ts = float(s.timestamp)
            day = datetime.fromtimestamp(ts, tz).date()
            if ts != day_timestamp(day, tz):
                raise ValueError(
                    f"a sample at {ts:.0f} is not at the end of a day in {tz.key}: "
                    "was the file written with another poll.timezone?"
                )
            value = int(s.value)
            key = (AppKey(s.labels.get("account", default_account), s.labels["app"]), day)
            if s.name in (DAY_BYTES, DAY_REQUESTS):
                row = videos.setdefault(key, {}).setdefault(s.labels["video_url"], [0, 0])
                row[0 if s.name == DAY_BYTES else 1] = value
            else:
                app_values[s.name][key] = value
    return app_values, videos


def _complete_days(app_values: AppValues, videos: VideoRows) -> dict[Key, DayUsage]:
    """The (app, day)s whose day bytes, requests and video count are all in the file."""
    out = {}
    for key, day_bytes in app_values[APP_DAY_BYTES].items():
        requests = app_values[APP_DAY_REQUESTS].get(key)
        count = app_values[APP_DAY_VIDEOS].get(key)
        if requests is None or count is None:
            continue
        rows = videos.get(key, {})
        folded = sorted(
            ((url, b, r) for url, (b, r) in rows.items()),
            key=lambda row: (row[0] == "__other__", -row[1], row[0]),
        )
        out[key] = DayUsage(tuple(folded), day_bytes, requests, count)
    return out


def month_to_date(data: dict[Key, DayUsage]) -> dict[Key, tuple[int, int]]:
    """(bytes, requests) of days 1..D of D's month, for every D whose days 1..D are all known."""
    out: dict[Key, tuple[int, int]] = {}
    for app, day in sorted(data):
        if day.day == 1:
            mb = mr = 0
            d = day
            while (app, d) in data and d.month == day.month:
                usage = data[(app, d)]
                mb += usage.day_bytes
                mr += usage.day_requests
                out[(app, d)] = (mb, mr)
                d += timedelta(days=1)
    return out


def render(data: dict[Key, DayUsage], tz: ZoneInfo, timezone: str) -> Iterable[str]:
    """OpenMetrics text: each family's samples together, each series' samples in time order."""
    families = {f.name: f for f in usage_families(timezone)}
    apps = sorted({app for app, _ in data})
    days_of: dict[AppKey, list[date]] = {app: [] for app in apps}
    for app, day in sorted(data):
        days_of[app].append(day)
    stamps: dict[date, int] = {}

    def ts(day: date) -> int:
        if day not in stamps:
            stamps[day] = day_timestamp(day, tz)
        return stamps[day]

    mtd = month_to_date(data)
    for name in FAMILIES:
        yield families[name].header().decode()
        for app in apps:
            labels = app_labels(app)
            if name in (DAY_BYTES, DAY_REQUESTS):
                index = 1 if name == DAY_BYTES else 2
                series: dict[str, list[tuple[date, int]]] = {}
                for day in days_of[app]:
                    for row in data[(app, day)].videos:
                        series.setdefault(row[0], []).append((day, row[index]))
                for url in sorted(series):
                    prefix = f'{name}{{{labels},video_url="{escape_label(url)}"}} '
                    for day, value in series[url]:
                        yield f"{prefix}{value} {ts(day)}\n"
                continue
            prefix = f"{name}{{{labels}}} "
            for day in days_of[app]:
                usage = data[(app, day)]
                if name == APP_DAY_BYTES:
                    value = usage.day_bytes
                elif name == APP_DAY_REQUESTS:
                    value = usage.day_requests
                elif name == APP_DAY_VIDEOS:
                    value = usage.day_videos
                else:
                    month = mtd.get((app, day))
                    if month is None:
                        continue
                    value = month[0] if name == APP_MONTH_BYTES else month[1]
                yield f"{prefix}{value} {ts(day)}\n"
    yield "# EOF\n"


def write_output(path: str, data: dict[Key, DayUsage], config: Config) -> None:
    """Write the whole file: to stdout for ``-``, else atomically (temp file, fsync, rename)."""
    lines = render(data, config.poll.tz, config.poll.timezone)
    if path == "-":
        out = sys.stdout
        for line in lines:
            out.write(line)
        out.flush()
        return
    atomic_write(path, (line.encode() for line in lines), prefix=".backfill-")
