"""``scaleengine-exporter backfill``: past days of usage.vse as OpenMetrics for promtool.

For every configured app and every day D of the range, usage.vse is read with the daemon's
client (signing, pagination and its checks, retries) and the day's final values are written as
samples at the last second of D in ``poll.timezone``, under the same series names and labels
the daemon exports. ``promtool tsdb create-blocks-from openmetrics`` turns the file into TSDB
blocks, so that ``max_over_time(scaleengine_vse_app_day_bytes[1d])`` at each midnight gives that
day's total for backfilled and for live days alike.

Choices (see the README's "History" section):

- Month to date must be exact, so it is the sum of the day totals of days 1..D. ``--from`` is
  therefore taken back to the first day of its month; those extra days are read and written
  too (they are as final as the others).
- The output file is also the record of what has been read: a rerun reads it, keeps every
  complete (app, day) it holds, fetches only the rest and writes the merged file again. The
  file is replaced atomically (temporary file, fsync, rename) every ``CHECKPOINT_SECONDS`` and at
  the end, so an interrupted or failed run loses at most that much and a rerun never writes a
  sample twice.
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import IO, TextIO
from zoneinfo import ZoneInfo

from . import __version__
from .config import AppConfig, Config, ConfigError, load_config
from .logs import setup_logging
from .metrics import escape_label, usage_families
from .poller import fold_with_limits
from .scaleengine import ApiError, ScaleEngineClient, UsageResult, client_for
from .state import atomic_write, read_regular_file

log = logging.getLogger("exporter.backfill")

PROG = "scaleengine-exporter backfill"
MAX_DAYS = 400
DEFAULT_BUSY_BACKOFF = 120.0  # "try again in a few minutes" (error 1000)
BUSY_TRIES = 5  # extra fetches of a day after the client's own retries ended on 1000
CHECKPOINT_SECONDS = 30.0
MAX_OUTPUT_BYTES = 2**30  # an existing --output larger than 1 GiB is refused (exit 2)
# errors that will fail every day of the app the same way: stop asking for that app
FATAL_OUTCOMES = frozenset({"api_0000", "api_0001", "api_0002", "api_0003", "api_0005"})

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

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")


@dataclass(frozen=True, slots=True)
class DayUsage:
    """One app's final values for one day."""

    videos: tuple[tuple[str, int, int], ...]  # folded: top videos, then __other__
    day_bytes: int
    day_requests: int
    day_videos: int


Key = tuple[str, date]  # (app, day)


class OutputError(Exception):
    """The existing output file cannot be read back (exit 2, the file is left as it is)."""


# -- days and timestamps --------------------------------------------------------------------


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


# -- reading a day ----------------------------------------------------------------------------


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


# -- the file ---------------------------------------------------------------------------------


def read_output(path: str, tz: ZoneInfo) -> dict[Key, DayUsage]:
    """The complete (app, day)s of a file this command wrote. Raises OutputError."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

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
    app_values: dict[str, dict[Key, int]] = {name: {} for name in FAMILIES}
    videos: dict[Key, dict[str, list[int]]] = {}
    try:
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
                key = (s.labels["app"], day)
                if s.name in (DAY_BYTES, DAY_REQUESTS):
                    row = videos.setdefault(key, {}).setdefault(s.labels["video_url"], [0, 0])
                    row[0 if s.name == DAY_BYTES else 1] = value
                else:
                    app_values[s.name][key] = value
    except (ValueError, KeyError, TypeError) as err:
        raise OutputError(
            f"{path} exists but is not a file written by {PROG} ({err}); "
            "move it away or pick another --output"
        ) from None
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
    days_of: dict[str, list[date]] = {app: [] for app in apps}
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
            label_app = escape_label(app)
            if name in (DAY_BYTES, DAY_REQUESTS):
                index = 1 if name == DAY_BYTES else 2
                series: dict[str, list[tuple[date, int]]] = {}
                for day in days_of[app]:
                    for row in data[(app, day)].videos:
                        series.setdefault(row[0], []).append((day, row[index]))
                for url in sorted(series):
                    prefix = f'{name}{{app="{label_app}",video_url="{escape_label(url)}"}} '
                    for day, value in series[url]:
                        yield f"{prefix}{value} {ts(day)}\n"
                continue
            prefix = f'{name}{{app="{label_app}"}} '
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


# -- progress ---------------------------------------------------------------------------------


@dataclass
class _AppProgress:
    total: int
    done: int = 0
    failed: int = 0
    last_print: float = 0.0


@dataclass
class Progress:
    """Days done of days asked, per app, on stderr: a bar on a terminal, plain lines otherwise."""

    stream: TextIO
    apps: dict[str, _AppProgress] = field(default_factory=dict)
    tty: bool = False
    every: float = 5.0
    closed: bool = False
    columns: int | None = None  # the terminal's width (asked when None)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, app: str, total: int, done: int) -> None:
        self.apps[app] = _AppProgress(total, done)

    def day(self, app: str, day: date, ok: bool, now: float | None = None) -> None:
        with self._lock:
            p = self.apps[app]
            if ok:
                p.done += 1
            else:
                p.failed += 1
            if self.tty:
                self._bar()
                return
            now = time.monotonic() if now is None else now
            finished = p.done + p.failed >= p.total
            if finished or now - p.last_print >= self.every:
                p.last_print = now
                failed = f", {p.failed} failed" if p.failed else ""
                self.stream.write(
                    f"{PROG}: app {app}: {p.done}/{p.total} days{failed} (last {day.isoformat()})\n"
                )
                self.stream.flush()

    def message(self, text: str) -> None:
        with self._lock:
            bar = self.tty and not self.closed
            if bar:
                self.stream.write("\r\033[K")
            self.stream.write(f"{PROG}: {text}\n")
            if bar:
                self._bar()
            self.stream.flush()

    def _bar(self) -> None:
        done = sum(p.done + p.failed for p in self.apps.values())
        total = sum(p.total for p in self.apps.values()) or 1
        bar = 30
        filled = bar * done // total
        apps = " ".join(f"{a} {p.done}/{p.total}" for a, p in self.apps.items())
        line = f"[{'#' * filled}{'.' * (bar - filled)}] {done}/{total} days  {apps}"
        columns = self.columns or shutil.get_terminal_size().columns
        self.stream.write("\r\033[K" + line[: columns - 1])  # one line, or \r cannot redraw it
        self.stream.flush()

    def close(self) -> None:
        """End the bar's line; later messages are plain lines."""
        if self.tty and not self.closed:
            self.closed = True
            self.stream.write("\n")
            self.stream.flush()


# -- the run ----------------------------------------------------------------------------------


@dataclass
class Failure:
    app: str
    day: date
    outcome: str
    message: str
    skipped: int = 0  # later days of the app not tried (an error that would fail them all)
    retryable: bool = True  # transient (retried, may work later) or not (fix the cause first)


def run(
    config: Config,
    start: date,
    end: date,
    output: str,
    busy_wait: float | None = None,
    stderr: TextIO | None = None,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> int:
    """Backfill ``start``..``end`` into ``output``; 0 when every day was read, 1 otherwise."""
    stream = stderr or sys.stderr
    tz = config.poll.tz
    if busy_wait is None:
        busy_wait = getattr(config.poll, "busy_backoff", None) or DEFAULT_BUSY_BACKOFF
    data: dict[Key, DayUsage] = {}
    if output != "-":
        data = read_output(output, tz)
    days = plan_days(start, end)
    progress = Progress(stream, tty=stream.isatty())
    todo: dict[str, list[date]] = {}
    for app in config.apps:
        missing = [d for d in days if (app.name, d) not in data]
        todo[app.name] = missing
        progress.add(app.name, len(days), len(days) - len(missing))
    if days[0] < start:
        progress.message(
            f"reading from {days[0].isoformat()}: month to date needs every day of the month"
        )
    kept = sum(len(days) - len(m) for m in todo.values())
    if kept:
        progress.message(f"{kept} app-days already in {output}, not read again")

    lock = threading.Lock()
    stop = threading.Event()
    failures: list[Failure] = []
    dirty = False

    def backfill_app(app: AppConfig) -> None:
        nonlocal dirty
        missing = todo[app.name]
        if not missing:
            return
        with client_for(config) as client:
            for i, day in enumerate(missing):
                if stop.is_set():
                    return

                def on_busy(n: int, wait: float, day: date = day) -> None:
                    progress.message(
                        f"app {app.name} {day.isoformat()}: the API is busy (error 1000),"
                        f" waiting {wait:g}s (busy try {n} of {BUSY_TRIES})"
                    )

                try:
                    result = fetch_day(client, app, day, busy_wait, stop, on_busy)
                except ApiError as err:
                    if stop.is_set():
                        return
                    rest = len(missing) - i - 1 if err.outcome in FATAL_OUTCOMES else 0
                    with lock:
                        failures.append(
                            Failure(
                                app.name,
                                day,
                                err.outcome,
                                str(err),
                                rest,
                                err.retryable or err.busy,
                            )  # fmt: skip
                        )
                    progress.day(app.name, day, ok=False)
                    progress.message(f"app {app.name} {day.isoformat()}: {err.outcome}: {err}")
                    if rest:
                        progress.message(
                            f"app {app.name}: {rest} later day(s) not tried: {err.outcome}"
                            " would fail them all"
                        )
                        return
                    continue
                usage = day_usage(result, app, config)
                with lock:
                    data[(app.name, day)] = usage
                    dirty = True
                progress.day(app.name, day, ok=True)

    workers = max(1, min(config.poll.concurrency, len(config.apps)))
    interrupted = False
    last_checkpoint = time.monotonic()
    # Ctrl-C only sets an event: a KeyboardInterrupt raised inside concurrent.futures.wait()
    # can leave a future's lock taken, and pool.shutdown() then waits forever
    sigint = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, lambda *_: sigint.set()) if in_main else None
    pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill")
    submitted = {app.name: pool.submit(backfill_app, app) for app in config.apps}
    futures: set[Future[None]] = set(submitted.values())
    try:
        while futures:
            _, futures = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
            if sigint.is_set():
                raise KeyboardInterrupt
            if (
                output != "-"
                and dirty
                and futures
                and time.monotonic() - last_checkpoint >= checkpoint_seconds
            ):
                with lock:
                    snapshot = dict(data)
                    dirty = False
                write_output(output, snapshot, config)
                last_checkpoint = time.monotonic()
    except KeyboardInterrupt:
        interrupted = True
        stop.set()
        progress.message("interrupted: writing the days read so far")
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old_handler if old_handler is not None else signal.SIG_DFL)
    pool.shutdown(wait=True, cancel_futures=True)
    progress.close()
    crashed = {
        name: f.exception() for name, f in submitted.items() if not f.cancelled() and f.exception()
    }
    for name, exc in crashed.items():
        log.error("backfill of an app failed", exc_info=exc, extra={"app": name})
        stream.write(
            f"{PROG}: error: app {name}: unexpected {type(exc).__name__}; its remaining days"
            " were not read\n"
        )
    with lock:
        snapshot = dict(data)
    write_output(output, snapshot, config)

    asked = [d for d in days if d >= start]
    written = sum(1 for key in snapshot if start <= key[1] <= end)
    where = "stdout" if output == "-" else output
    progress.message(
        f"{written} of {len(asked) * len(config.apps)} app-days of {start.isoformat()}.."
        f"{end.isoformat()} in {where}"
    )
    if interrupted:
        return 130
    if failures or crashed:
        for f in sorted(failures, key=lambda f: (f.app, f.day)):
            extra = f" ({f.skipped} later day(s) of the app not tried)" if f.skipped else ""
            how = " after retries" if f.retryable else ""
            stream.write(
                f"{PROG}: error: app {f.app} day {f.day.isoformat()} could not be read{how}:"
                f" {f.outcome}: {f.message}{extra}\n"
            )
        if any(not f.retryable for f in failures):
            stream.write(
                f"{PROG}: fix the cause above (config, credentials, clock), then rerun the"
                " same command to read the missing days\n"
            )
        else:
            stream.write(f"{PROG}: rerun the same command to read the missing days\n")
        stream.flush()
        return 1
    return 0


# -- command line -----------------------------------------------------------------------------


def _day(value: str) -> date:
    if not _DATE_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{value!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description=(
            "Read past days of usage.vse for every configured app and write them as OpenMetrics "
            "with timestamps (one sample per series at the last second of each day in "
            "poll.timezone), for `promtool tsdb create-blocks-from openmetrics`. Month-to-date "
            "series need every day of the month, so reading starts on the first day of "
            "--from's month. Rerunning with the same --output keeps the days the file already "
            "holds and reads only the missing ones. Error 1000 (API busy) waits "
            "poll.busy_backoff (2 minutes when unset) and tries again, up to 5 times."
        ),
        epilog=(
            "Exit status: 0 every day was read; 1 some app-day could not be read after retries "
            "(named on stderr; every other day is written: rerun to fill the gaps); 2 bad "
            "arguments or config. Progress goes to stderr."
        ),
    )
    p.add_argument(
        "--config",
        metavar="FILE",
        default="config.yaml",
        help="the exporter's YAML config: API credentials, apps, poll.timezone, "
        "poll.concurrency (apps read at once), limits (default config.yaml)",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="YYYY-MM-DD",
        type=_day,
        required=True,
        help="first day to backfill (in poll.timezone); at most 400 days before --to",
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="YYYY-MM-DD",
        type=_day,
        help="last day to backfill, before today (default: yesterday in poll.timezone)",
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        required=True,
        help="OpenMetrics file to write ('-' for stdout, which cannot resume); an existing "
        "file written by this command is kept and completed",
    )
    p.add_argument(
        "--log.level",
        dest="log_level",
        default="warn",
        choices=["debug", "info", "warn", "warning", "error"],
        help="log level of the API client's messages on stderr (default warn)",
    )
    p.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=["logfmt", "json"],
        help="log format on stderr (default logfmt)",
    )
    p.add_argument("--version", action="version", version=f"scaleengine-exporter {__version__}")
    return p


def main(
    argv: Sequence[str] | None = None,
    now: Callable[[], float] = time.time,
    stderr: IO[str] | None = None,
) -> int:
    """Entry point of ``scaleengine-exporter backfill``."""
    stream = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    level = "warning" if args.log_level == "warn" else args.log_level
    formatter = setup_logging(level, args.log_format, stream=stream)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        stream.write(f"{PROG}: error: {err}\n")
        return 2
    formatter.secrets = sorted(
        {s for s in config.secret_values() if s and len(s) >= 4}, key=len, reverse=True
    )
    today = datetime.fromtimestamp(now(), config.poll.tz).date()
    try:
        end = check_range(args.start, args.end, today)
    except ValueError as err:
        parser.error(str(err))
    if args.output != "-":
        directory = os.path.dirname(os.path.abspath(args.output))
        if not os.path.isdir(directory):
            parser.error(f"--output: directory {directory} does not exist")
        try:  # find out now, not after hours of reading
            with tempfile.TemporaryFile(dir=directory):
                pass
        except OSError as err:
            parser.error(f"--output: cannot write in {directory}: {err.strerror or err}")
    late = config.poll.late_data_window
    midnight = datetime.combine(today, dtime(0), config.poll.tz).timestamp()
    if end == today - timedelta(days=1) and now() - midnight < late:
        stream.write(
            f"{PROG}: warning: {end.isoformat()} may still receive late data for"
            f" {(late - (now() - midnight)) / 60:.0f} more minutes (poll.late_data_window);"
            " its values are read as they are now and a rerun will not read it again\n"
        )
    try:
        return run(config, args.start, end, args.output, stderr=stream)
    except OutputError as err:
        stream.write(f"{PROG}: error: {err}\n")
        return 2
    except OSError as err:  # writing the output failed (disk full, ...)
        stream.write(f"{PROG}: error: cannot write {args.output}: {err.strerror or err}\n")
        return 1
