"""The backfill run: every app's missing days read (``poll.concurrency`` apps at once),
checkpointed to the output file, and a summary of what could not be read."""

from __future__ import annotations

import contextlib
import logging
import signal
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from datetime import date
from typing import TextIO

from ..appkey import AppKey
from ..config import AccountConfig, AppConfig, Config
from ..scaleengine import ApiError, ScaleEngineClient, client_for
from .output import read_output, write_output
from .plan import (
    BUSY_TRIES,
    DEFAULT_BUSY_BACKOFF,
    FATAL_OUTCOMES,
    PROG,
    DayUsage,
    Key,
    day_usage,
    fetch_day,
    plan_days,
)
from .progress import Progress

log = logging.getLogger("exporter.backfill")

CHECKPOINT_SECONDS = 30.0


def shown(key: AppKey, config: Config) -> str:
    """An app as backfill's messages name it: its name, ``account/app`` with several accounts."""
    return key.app if len(config.accounts) == 1 else f"{key.account}/{key.app}"


@dataclass
class Failure:
    app: str  # as shown()
    day: date
    outcome: str
    message: str
    skipped: int = 0  # later days of the app not tried (an error that would fail them all)
    retryable: bool = True  # transient (retried, may work later) or not (fix the cause first)


@dataclass
class _Run:
    """What the app threads share: the days read (``data``), what is left, the failures."""

    config: Config
    output: str
    busy_wait: float
    progress: Progress
    data: dict[Key, DayUsage]
    todo: dict[AppKey, list[date]] = field(default_factory=dict)
    failures: list[Failure] = field(default_factory=list)
    dirty: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)

    def plan(self, start: date, days: list[date]) -> None:
        """Each app's days not already in the output file, said on the progress stream."""
        for key in self.config.app_keys():
            missing = [d for d in days if (key, d) not in self.data]
            self.todo[key] = missing
            self.progress.add(shown(key, self.config), len(days), len(days) - len(missing))
        if days[0] < start:
            self.progress.message(
                f"reading from {days[0].isoformat()}: month to date needs every day of the month"
            )
        kept = sum(len(days) - len(m) for m in self.todo.values())
        if kept:
            self.progress.message(f"{kept} app-days already in {self.output}, not read again")

    def backfill_app(self, key: AppKey, account: AccountConfig, app: AppConfig) -> None:
        """Read the app's missing days in order with its account's client (the body of one
        pool thread)."""
        missing = self.todo[key]
        if not missing:
            return
        with client_for(self.config, account) as client:
            for i, day in enumerate(missing):
                if self.stop.is_set():
                    return
                if not self._read_day(client, key, app, day, len(missing) - i - 1):
                    return

    def _read_day(
        self, client: ScaleEngineClient, key: AppKey, app: AppConfig, day: date, left: int
    ) -> bool:
        """Read one day into ``data``; False when the app's remaining days are not to be read."""
        name = shown(key, self.config)

        def on_busy(n: int, wait: float) -> None:
            self.progress.message(
                f"app {name} {day.isoformat()}: the API is busy (error 1000),"
                f" waiting {wait:g}s (busy try {n} of {BUSY_TRIES})"
            )

        try:
            result = fetch_day(client, app, day, self.busy_wait, self.stop, on_busy)
        except ApiError as err:
            if self.stop.is_set():
                return False
            rest = left if err.outcome in FATAL_OUTCOMES else 0
            self._failed(name, day, err, rest)
            return not rest
        usage = day_usage(result, app, self.config)
        with self.lock:
            self.data[(key, day)] = usage
            self.dirty = True
        self.progress.day(name, day, ok=True)
        return True

    def _failed(self, name: str, day: date, err: ApiError, rest: int) -> None:
        failure = Failure(name, day, err.outcome, str(err), rest, err.retryable or err.busy)
        with self.lock:
            self.failures.append(failure)
        self.progress.day(name, day, ok=False)
        self.progress.message(f"app {name} {day.isoformat()}: {err.outcome}: {err}")
        if rest:
            self.progress.message(
                f"app {name}: {rest} later day(s) not tried: {err.outcome} would fail them all"
            )

    def snapshot(self) -> dict[Key, DayUsage]:
        with self.lock:
            self.dirty = False
            return dict(self.data)

    def checkpoint_due(self, last: float, every: float) -> bool:
        return self.output != "-" and self.dirty and time.monotonic() - last >= every


@contextlib.contextmanager
def _sigint_as_event() -> Iterator[threading.Event]:
    """Ctrl-C only sets an event: a KeyboardInterrupt raised inside concurrent.futures.wait()
    can leave a future's lock taken, and pool.shutdown() then waits forever."""
    sigint = threading.Event()
    in_main = threading.current_thread() is threading.main_thread()
    old_handler = signal.signal(signal.SIGINT, lambda *_: sigint.set()) if in_main else None
    try:
        yield sigint
    finally:
        if in_main:
            signal.signal(signal.SIGINT, old_handler if old_handler is not None else signal.SIG_DFL)


def _read_all(state: _Run, checkpoint_seconds: float) -> tuple[dict[str, Future[None]], bool]:
    """Run every app's thread, checkpointing meanwhile; (the futures, whether interrupted)."""
    config = state.config
    workers = max(1, min(config.poll.concurrency, len(config.app_keys())))
    interrupted = False
    last_checkpoint = time.monotonic()
    with _sigint_as_event() as sigint:
        pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="backfill")
        submitted = {
            shown(key, config): pool.submit(state.backfill_app, key, account, app)
            for key, account, app in config.apps()
        }
        futures: set[Future[None]] = set(submitted.values())
        try:
            while futures:
                _, futures = wait(futures, timeout=0.25, return_when=FIRST_COMPLETED)
                if sigint.is_set():
                    raise KeyboardInterrupt
                if futures and state.checkpoint_due(last_checkpoint, checkpoint_seconds):
                    write_output(state.output, state.snapshot(), config)
                    last_checkpoint = time.monotonic()
        except KeyboardInterrupt:
            interrupted = True
            state.stop.set()
            state.progress.message("interrupted: writing the days read so far")
    pool.shutdown(wait=True, cancel_futures=True)
    return submitted, interrupted


def _report_crashes(submitted: dict[str, Future[None]], stream: TextIO) -> bool:
    """Name every app whose thread ended on a bug (not an API error); whether there was one."""
    crashed = {
        name: f.exception() for name, f in submitted.items() if not f.cancelled() and f.exception()
    }
    for name, exc in crashed.items():
        log.error("backfill of an app failed", exc_info=exc, extra={"app": name})
        stream.write(
            f"{PROG}: error: app {name}: unexpected {type(exc).__name__}; its remaining days"
            " were not read\n"
        )
    return bool(crashed)


def _report_failures(failures: list[Failure], stream: TextIO) -> None:
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
    if busy_wait is None:
        busy_wait = getattr(config.poll, "busy_backoff", None) or DEFAULT_BUSY_BACKOFF
    default_account = config.accounts[0].name  # a file written before several accounts
    data = read_output(output, config.poll.tz, default_account) if output != "-" else {}
    progress = Progress(stream, tty=stream.isatty())
    state = _Run(config, output, busy_wait, progress, data)
    days = plan_days(start, end)
    state.plan(start, days)
    submitted, interrupted = _read_all(state, checkpoint_seconds)
    progress.close()
    crashed = _report_crashes(submitted, stream)
    snapshot = state.snapshot()
    write_output(output, snapshot, config)

    asked = [d for d in days if d >= start]
    written = sum(1 for key in snapshot if start <= key[1] <= end)
    where = "stdout" if output == "-" else output
    progress.message(
        f"{written} of {len(asked) * len(config.app_keys())} app-days of {start.isoformat()}.."
        f"{end.isoformat()} in {where}"
    )
    if interrupted:
        return 130
    if state.failures or crashed:
        _report_failures(state.failures, stream)
        return 1
    return 0
