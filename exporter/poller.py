"""Polling: fetch each app's usage on a schedule, account counters, publish whole snapshots.

One APScheduler job per app (at most one run of an app at a time, missed runs coalesced, a
little jitter) on a bounded thread pool, so a slow app never delays another. Each run fetches
today (and yesterday while late data may still arrive, and the month to date when due), folds the
rows into the cardinality cap, adds the growth of the day totals to the counters, and publishes a
new :class:`~exporter.store.AppUsage` and :class:`~exporter.store.AppStatus` in one swap.
"""

from __future__ import annotations

import dataclasses
import logging
import re
import threading
import time
from collections.abc import Callable, Container
from concurrent.futures import ThreadPoolExecutor as FuturesPool
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from .config import DEFAULT_MAX_LABEL_LENGTH, AppConfig, Config, LimitsConfig
from .scaleengine import (
    POLL_TIMEOUT,
    ApiError,
    ScaleEngineClient,
    UsageResult,
    client_for,
    warn_if_cleartext,
)
from .scaleengine.parsing import cut_url, without_surrogates
from .state import AppCounters, StateFile
from .store import OTHER, AppStatus, AppUsage, Store

log = logging.getLogger(__name__)

Clock = Callable[[], float]
ClientFactory = Callable[[str], ScaleEngineClient]


INTERNAL_OUTCOME = "internal"  # poll error outcome of an unexpected exception inside a poll
OVERDUE_OUTCOME = "overdue"  # poll error outcome of an app whose polls stopped ending on time
WATCH_EVERY = 1.0  # seconds between two looks for overdue apps


def label_value(url: str, max_bytes: int = DEFAULT_MAX_LABEL_LENGTH) -> str:
    """``url`` made a safe label value; the same object when it already is one.

    Valid UTF-8 whatever the API sent: each lone UTF-16 surrogate (valid JSON, not encodable)
    becomes U+FFFD. At most ``max_bytes`` bytes of UTF-8: a longer value is cut on a
    character boundary and ``~`` plus the first 16 hex digits of the SHA-256 of the whole
    URL are appended, so distinct long URLs stay distinct series: the client's
    :func:`~exporter.scaleengine.parsing.cut_url`, the one cut, so a URL the client already
    cut is left as it is.
    """
    return without_surrogates(cut_url(url, max_bytes))


def fold_videos(
    videos: dict[str, tuple[int, int]],
    max_videos: int,
    include: re.Pattern[str] | None = None,
    exclude: re.Pattern[str] | None = None,
    *,
    max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
    folded: Container[str] | None = None,
) -> tuple[tuple[str, int, int], ...]:
    """Top ``max_videos`` videos by bytes; the rest and the filtered ones summed in __other__.

    The filters see the URL as the API sent it: ``folded``, when given, is their verdict
    already made by the client on each URL as sent (``UsageResult.folded``: the keys of
    ``videos`` may be cut labels by then), and ``include``/``exclude`` are not applied again.
    What is kept is labelled by :func:`label_value` (valid UTF-8, at most
    ``max_label_length`` bytes), rows whose labels coincide summed, so the totals stay exact.
    """
    if folded is not None:
        include = exclude = None
    judged = folded if folded is not None else ()
    other_b = other_r = 0
    folded = False
    kept: list[tuple[str, int, int]] = []
    renamed: dict[str, tuple[int, int]] = {}
    for url, (nbytes, nrequests) in videos.items():
        if (
            url == OTHER
            or url in judged
            or (include is not None and not include.search(url))
            or (exclude is not None and exclude.search(url))
        ):
            other_b += nbytes
            other_r += nrequests
            folded = True
            continue
        # fast path: ASCII (an O(1) flag in CPython) and short is a label as it is
        if url.isascii() and len(url) <= max_label_length:
            kept.append((url, nbytes, nrequests))
            continue
        label = label_value(url, max_label_length)
        if label is url:
            kept.append((url, nbytes, nrequests))
        else:
            old = renamed.get(label)
            renamed[label] = (
                (nbytes, nrequests) if old is None else (old[0] + nbytes, old[1] + nrequests)
            )
    if renamed:
        merged = {u: (b, r) for u, b, r in kept}
        for label, (nbytes, nrequests) in renamed.items():
            old = merged.get(label)
            merged[label] = (
                (nbytes, nrequests) if old is None else (old[0] + nbytes, old[1] + nrequests)
            )
        kept = [(u, b, r) for u, (b, r) in merged.items()]
    kept.sort(key=lambda row: (-row[1], row[0]))
    if len(kept) > max_videos:
        for _, nbytes, nrequests in kept[max_videos:]:
            other_b += nbytes
            other_r += nrequests
        del kept[max_videos:]
        folded = True
    if folded:
        kept.append((OTHER, other_b, other_r))
    return tuple(kept)


def fold_with_limits(
    videos: dict[str, tuple[int, int]],
    limits: LimitsConfig,
    folded: Container[str] | None = None,
) -> tuple[tuple[str, int, int], ...]:
    """fold_videos with the config's limits: the daemon and backfill fold alike. ``folded``:
    the client's verdict (``UsageResult.folded``) when it was built with these limits."""
    return fold_videos(
        videos,
        limits.max_videos_per_app,
        limits.include,
        limits.exclude,
        max_label_length=limits.max_label_length,
        folded=folded,
    )


@dataclass
class _Month:
    day: str  # the day the month total was fetched on
    key: tuple[int, int]
    bytes: int
    requests: int
    day_bytes: int  # today's totals at the time of that fetch
    day_requests: int
    fetched_at: float


@dataclass
class _AppState:
    config: AppConfig
    client: ScaleEngineClient
    counters: AppCounters
    lock: threading.Lock
    usage: AppUsage | None = None
    last_success: float | None = None
    month: _Month | None = None
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


class Poller:
    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock = time.time,
        client_factory: ClientFactory | None = None,
        state_file: StateFile | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.tz = config.poll.tz
        self.state_file = state_file
        self._scheduler: BackgroundScheduler | None = None
        self._save_lock = threading.Lock()
        self._flight_lock = threading.Lock()
        self._in_flight = 0
        self._watch_stop = threading.Event()
        self._watcher: threading.Thread | None = None
        if client_factory is None:
            warn_if_cleartext(config.scaleengine.api_url)
        factory = client_factory or self._default_client
        counters = self._load_counters()
        self._apps: dict[str, _AppState] = {
            app.name: _AppState(
                config=app,
                client=factory(app.name),
                counters=counters.get(app.name) or AppCounters(),
                lock=threading.Lock(),
            )
            for app in config.apps
        }
        # fresh counters are exported from here on; loaded ones once confirmed by a poll
        for name, st in self._apps.items():
            self.store.publish(name, None, self._status(st, up=False, duration=None))
        if state_file is not None:
            self.store.record_state_save(None)

    # -- set-up -----------------------------------------------------------------------------
    def _default_client(self, app: str) -> ScaleEngineClient:
        return client_for(
            self.config,
            clock=self.clock,
            on_request=lambda outcome: self.store.count_request(app, outcome),
        )

    def _load_counters(self) -> dict[str, AppCounters]:
        """Counters from the state file when its day is recent enough; else a fresh start."""
        today, start, _ = day_bounds(self.clock(), self.tz)
        yesterday = (today - timedelta(days=1)).isoformat()
        fresh_origin = {today.isoformat(), yesterday}
        loaded = self.state_file.load() if self.state_file else None
        if loaded is not None:
            saved_day, apps = loaded
            in_window = (
                saved_day == yesterday and self.clock() - start < self.config.poll.late_data_window
            )
            if saved_day == today.isoformat() or in_window:
                log.info("state loaded", extra={"path": self.state_file.path, "day": saved_day})
                for counters in apps.values():
                    counters.prune(fresh_origin)
                    # the saved values may be older than what was exported (failed saves):
                    # withheld until today and each saved day are read again (twice)
                    counters.pending = set(counters.baselines) | {today.isoformat()}
                # an app the state file does not know (added since) starts as on a fresh
                # start: the day so far only sets its baseline, it was never ours to count
                for app in self.config.apps:
                    apps.setdefault(app.name, AppCounters(origin_days=set(fresh_origin)))
                return apps
            log.warning(
                "state file is from an earlier day, counters start fresh",
                extra={"path": self.state_file.path, "day": saved_day},
            )
        return {app.name: AppCounters(origin_days=set(fresh_origin)) for app in self.config.apps}

    def continue_counters(self, totals: dict[str, tuple[int | None, int | None]]) -> None:
        """Go on from the counters a previous poll worker served (a restart after it died):
        an app whose loaded counters are lower (no state file, or a save that failed) takes
        the served values with fresh day baselines, so its counters never go down and no
        growth is counted twice (the growth until its next poll is not counted)."""
        today, _, _ = day_bounds(self.clock(), self.tz)
        fresh_origin = {today.isoformat(), (today - timedelta(days=1)).isoformat()}
        for name, (served_b, served_r) in totals.items():
            st = self._apps.get(name)
            if st is None or served_b is None or served_r is None:
                continue
            c = st.counters
            if c.bytes_total >= served_b and c.requests_total >= served_r:
                continue
            st.counters = AppCounters(
                max(c.bytes_total, served_b),
                max(c.requests_total, served_r),
                origin_days=set(fresh_origin),
            )
            self.store.publish(name, None, self._status(st, up=False, duration=None))

    # -- one poll ---------------------------------------------------------------------------
    def poll_app(self, name: str) -> bool:
        """Poll one app now (today, late yesterday, month when due); True if all succeeded."""
        st = self._apps.get(name)
        if st is None:  # removed by a reload while its run was queued
            return False
        with self._flight_lock:
            self._in_flight += 1
        try:
            with st.lock:
                try:
                    ok = self._poll_locked(name, st)
                except Exception as err:  # noqa: BLE001 - MemoryError, a bug: a failed poll
                    ok = False
                    self._poll_crashed(name, st, err)
                    del err
            self.save_state()
        finally:
            with self._flight_lock:
                self._in_flight -= 1
        return ok

    def _poll_crashed(self, name: str, st: _AppState, err: Exception) -> None:
        """An unexpected exception inside a poll: the app is down, the error counted."""
        error = f"{type(err).__name__}: {str(err)[:200]}"
        now = self.clock()
        today_iso = day_bounds(now, self.tz)[0].isoformat()
        if st.usage is not None and (
            st.usage.day != today_iso
            or st.last_success is None
            or now - st.last_success > self.config.poll.stale_after
        ):
            st.usage = None
        st.polled = True
        self.store.count_poll_error(name, INTERNAL_OUTCOME)
        log.error("poll failed", extra={"app": name, "outcome": INTERNAL_OUTCOME, "err": error})
        status = dataclasses.replace(
            self._status(st, up=False, duration=None),
            last_error=f"{INTERNAL_OUTCOME}: {error}",
        )
        self._publish_poll(name, st, status)

    def _publish_poll(self, name: str, st: _AppState, status: AppStatus) -> None:
        """A poll's end: its usage and status, and the app is on time again."""
        with st.publish_lock:
            st.last_end = time.monotonic()
            st.overdue = False
            self.store.publish(name, st.usage, status)

    @property
    def in_flight(self) -> int:
        """Polls running right now (a renderer waits for 0 to render a cycle once)."""
        return self._in_flight

    def _fetch(
        self, st: _AppState, year: int, month: int, day: int | None, deadline: float
    ) -> UsageResult:
        now = self.clock()
        if now < st.busy_until and st.busy_error is not None:
            # backing off: no request; the error says so and is not counted again
            err = st.busy_error
            left = st.busy_until - now
            skipped = ApiError(
                f"{err.message}; backing off, next request in {left:.0f}s",
                err.outcome,
                False,
                err.code,
                busy=True,
            )
            skipped.backing_off = True
            raise skipped
        try:
            result = st.client.fetch_usage(
                st.config.name, st.config.urls, year, month, day, deadline=deadline
            )
        except ApiError as err:
            if err.busy:
                self._back_off(st, err, now)
            else:
                st.busy_delay = 0.0
            raise
        st.busy_delay = 0.0
        st.skipped_rows += result.skipped
        st.incomplete_rows += result.incomplete
        return result

    def _back_off(self, st: _AppState, err: ApiError, now: float) -> None:
        """Busy: wait poll.busy_backoff, doubling while it lasts, capped at busy_backoff_max;
        a longer Retry-After wins (capped too)."""
        poll = self.config.poll
        delay = poll.busy_backoff if st.busy_delay <= 0 else st.busy_delay * 2
        delay = min(max(delay, err.retry_after or 0.0), poll.busy_backoff_max)
        st.busy_delay = delay
        st.busy_until = now + delay
        st.busy_error = err
        log.warning(
            "API busy, backing off",
            extra={"app": st.config.name, "outcome": err.outcome, "seconds": round(delay)},
        )

    def _poll_locked(self, name: str, st: _AppState) -> bool:
        started = time.perf_counter()
        now = self.clock()
        today, midnight, day_end = day_bounds(now, self.tz)
        today_iso = today.isoformat()
        errors: list[ApiError] = []
        poll = self.config.poll
        # the whole poll (every fetch, page and retry) ends by then: outcome poll_timeout
        deadline = time.monotonic() + poll.timeout

        day_result: UsageResult | None = None
        try:
            day_result = self._fetch(st, today.year, today.month, today.day, deadline)
        except ApiError as err:
            errors.append(err)

        if poll.late_data_window > 0 and now - midnight < poll.late_data_window:
            yesterday = today - timedelta(days=1)
            try:
                res = self._fetch(st, yesterday.year, yesterday.month, yesterday.day, deadline)
                y_bytes, y_requests = _totals(res)
                st.counters.observe(yesterday.isoformat(), y_bytes, y_requests)
                st.previous_day = (yesterday.isoformat(), y_bytes)
            except ApiError as err:
                errors.append(err)

        if day_result is not None:
            day_bytes, day_requests = _totals(day_result)
            st.counters.observe(today_iso, day_bytes, day_requests)
            if poll.month_interval is not None and (
                st.month is None
                or st.month.day != today_iso
                or now - st.month.fetched_at >= poll.month_interval
            ):
                try:
                    res = self._fetch(st, today.year, today.month, None, deadline)
                    m_bytes, m_requests = _totals(res)
                    st.month = _Month(
                        today_iso,
                        (today.year, today.month),
                        m_bytes,
                        m_requests,
                        day_bytes,
                        day_requests,
                        now,
                    )
                except ApiError as err:
                    errors.append(err)
            st.usage = self._build_usage(st, today, day_end, day_result, day_bytes, day_requests)
        elif st.usage is not None and (
            st.usage.day != today_iso
            or st.last_success is None
            or now - st.last_success > poll.stale_after
        ):
            # yesterday's per-video values are not today's, and stale data is not shown forever
            log.warning(
                "dropping the app's usage series",
                extra={"app": name, "reason": "stale" if st.usage.day == today_iso else "new day"},
            )
            st.usage = None
        if st.counters.pending and not errors:
            errors += self._confirm_pending(st, deadline)
        if not errors:
            st.last_success = now
        st.polled = True
        duration = time.perf_counter() - started
        timed_out = False
        for err in errors:
            if err.backing_off:
                continue  # no request made: counted when the API said it was busy
            if err.outcome == POLL_TIMEOUT:
                if timed_out:
                    continue  # a poll runs out of time once, however many fetches it cut
                timed_out = True
                err.args = (f"{err} (poll.timeout {poll.timeout:g}s)",)
            self.store.count_poll_error(name, err.outcome)
            log.warning(
                "poll failed",
                extra={"app": name, "outcome": err.outcome, "err": str(err)},
            )
        status = self._status(st, up=not errors, duration=duration, errors=errors)
        self._publish_poll(name, st, status)
        log.debug(
            "polled",
            extra={"app": name, "ok": not errors, "seconds": round(duration, 3)},
        )
        return not errors

    def _confirm_pending(self, st: _AppState, deadline: float) -> list[ApiError]:
        """Read each day a loaded state had counted until two reads confirm it (the first poll
        after a restart), so the restored counters are exported without waiting a poll."""
        errors: list[ApiError] = []
        for day in sorted(st.counters.pending):
            d = date.fromisoformat(day)
            while day in st.counters.pending:
                try:
                    res = self._fetch(st, d.year, d.month, d.day, deadline)
                except ApiError as err:
                    errors.append(err)
                    return errors
                st.counters.observe(day, *_totals(res))
        return errors

    def _build_usage(
        self,
        st: _AppState,
        today: date,
        day_end: float,
        result: UsageResult,
        day_bytes: int,
        day_requests: int,
    ) -> AppUsage:
        videos = fold_with_limits(result.videos, self.config.limits, result.folded)
        month_bytes = month_requests = None
        m = st.month
        if m is not None and m.day == today.isoformat():
            # the month total as fetched, moved on by today's growth since that fetch
            month_bytes = m.bytes + max(0, day_bytes - m.day_bytes)
            month_requests = m.requests + max(0, day_requests - m.day_requests)
        previous = None
        yesterday = (today - timedelta(days=1)).isoformat()
        if st.previous_day is not None and st.previous_day[0] == yesterday:
            previous = st.previous_day[1]
        return AppUsage(
            app=st.config.name,
            day=today.isoformat(),
            day_end=day_end,
            videos=videos,
            day_bytes=day_bytes,
            day_requests=day_requests,
            day_videos=len(result.videos),
            month_bytes=month_bytes,
            month_requests=month_requests,
            previous_day_bytes=previous,
        )

    def _status(
        self,
        st: _AppState,
        up: bool,
        duration: float | None,
        errors: list[ApiError] | None = None,
    ) -> AppStatus:
        return AppStatus(
            app=st.config.name,
            polled=st.polled,
            up=up,
            last_success=st.last_success,
            poll_duration=duration,
            bytes_total=st.counters.bytes_total if st.counters.exportable else None,
            requests_total=st.counters.requests_total if st.counters.exportable else None,
            skipped_rows=st.skipped_rows,
            incomplete_rows=st.incomplete_rows,
            last_error=f"{errors[0].outcome}: {errors[0]}" if errors else None,
        )

    def save_state(self) -> None:
        if self.state_file is None:
            return
        today, _, _ = day_bounds(self.clock(), self.tz)
        keep = {today.isoformat(), (today - timedelta(days=1)).isoformat()}
        with self._save_lock:
            counters = {}
            for name, st in self._apps.items():
                c = st.counters
                baselines = {d: v for d, v in c.baselines.items() if d in keep}
                counters[name] = AppCounters(c.bytes_total, c.requests_total, baselines)
            try:
                self.state_file.save(today.isoformat(), counters)
            except Exception as err:  # noqa: BLE001 - disk full, folder gone, ...: counted
                reason = err.strerror if isinstance(err, OSError) else None
                log.warning(
                    "could not save state",
                    extra={"path": self.state_file.path, "err": reason or str(err)[:200]},
                )
                self.store.record_state_save(False)
            else:
                self.store.record_state_save(True, self.clock())

    def poll_all(self) -> bool:
        """Poll every app once, concurrently (bounded by poll.concurrency); True if all ok."""
        workers = max(1, min(self.config.poll.concurrency, len(self._apps)))
        with FuturesPool(max_workers=workers, thread_name_prefix="poll") as pool:
            results = list(pool.map(self.poll_app, list(self._apps)))
        return all(results)

    @property
    def ready(self) -> bool:
        """True once every app has had a poll attempt finish."""
        return all(st.polled for st in self._apps.values())

    # -- schedule ---------------------------------------------------------------------------
    def start(self) -> None:
        poll = self.config.poll
        workers = max(1, min(poll.concurrency, len(self._apps)))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        jitter = min(poll.interval * 0.1, 30.0)
        now = datetime.now(UTC)
        for name in self._apps:
            self._scheduler.add_job(
                self.poll_app,
                IntervalTrigger(seconds=poll.interval, jitter=jitter, timezone=UTC),
                args=[name],
                id=f"poll:{name}",
                name=f"poll {name}",
                next_run_time=now,
            )
        self._scheduler.start()
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="overdue", daemon=True)
            self._watcher.start()
        log.info(
            "polling started",
            extra={"apps": len(self._apps), "interval": poll.interval, "workers": workers},
        )

    def _watch(self) -> None:
        """Apps whose polls stopped ending on time (every pool thread held, a poll stuck where
        no deadline reaches) must not look fresh: a thread of its own, outside the pool."""
        while not self._watch_stop.wait(WATCH_EVERY):
            for name, st in list(self._apps.items()):
                try:
                    self._check_overdue(name, st)
                except Exception:  # noqa: BLE001 - a bug here must not end the watch
                    log.exception("checking for overdue polls failed")

    def _check_overdue(self, name: str, st: _AppState) -> None:
        """No poll of the app has ended for 2 x poll.interval + poll.timeout: it is down
        (``overdue``, counted once), and its usage goes once it is older than stale_after."""
        poll = self.config.poll
        limit = 2 * poll.interval + poll.timeout
        with st.publish_lock:
            late = time.monotonic() - st.last_end
            if late <= limit:
                return
            view = self.store.view()
            usage = view.usage.get(name)
            stale = usage is not None and (
                st.last_success is None or self.clock() - st.last_success > poll.stale_after
            )
            if st.overdue and not stale:
                return
            if not st.overdue:
                st.overdue = True
                self.store.count_poll_error(name, OVERDUE_OUTCOME)
                log.warning(
                    "poll overdue: no poll of the app ended in time",
                    extra={"app": name, "seconds": round(late), "limit": round(limit)},
                )
            status = dataclasses.replace(
                view.status.get(name) or AppStatus(app=name),
                up=False,
                last_error=f"{OVERDUE_OUTCOME}: no poll ended for {late:.0f}s"
                f" (2 x poll.interval + poll.timeout = {limit:g}s)",
            )
            self.store.publish(name, None if stale else usage, status)

    # -- reload -----------------------------------------------------------------------------
    def reconfigure(self, config: Config) -> None:
        """Take a new config without a restart (SIGHUP, POST /-/reload).

        Added apps start with fresh counters (today only sets their baseline, as at a fresh
        start) and are polled at once; removed apps stop and their series leave the store;
        unchanged apps keep their counters, baselines and last data. New API or poll settings,
        or a new label length or include/exclude (the client cuts and judges URLs as it reads
        them), give every app a new client; a new interval, jitter or concurrency reschedules.
        """
        old = self.config
        self.config = config
        self.tz = config.poll.tz
        new_names = [a.name for a in config.apps]
        client_settings = config.scaleengine != old.scaleengine or _client_limits(
            config
        ) != _client_limits(old)
        today, _, _ = day_bounds(self.clock(), self.tz)
        fresh_origin = {today.isoformat(), (today - timedelta(days=1)).isoformat()}
        apps: dict[str, _AppState] = {}
        for app in config.apps:
            st = self._apps.get(app.name)
            if st is None:
                st = _AppState(
                    config=app,
                    client=self._default_client(app.name),
                    counters=AppCounters(origin_days=set(fresh_origin)),
                    lock=threading.Lock(),
                )
            else:
                st.config = app
                if client_settings:
                    old_client, st.client = st.client, self._default_client(app.name)
                    old_client.close()
            apps[app.name] = st
        removed = {name: st for name, st in self._apps.items() if name not in apps}
        self._apps = apps  # a new dict: readers iterating the old one are not disturbed
        self.store.set_apps(new_names)  # a poll of a removed app still running publishes nothing
        for name, st in removed.items():
            self._reload_removed(name, st)
        if self._scheduler is not None and self._scheduler.running:
            self._reschedule(old)
        self.save_state()
        log.info(
            "poller reconfigured",
            extra={
                "apps": len(apps),
                "added": len(set(apps) - {a.name for a in old.apps}),
                "removed": len(removed),
            },
        )

    def _reload_removed(self, name: str, st: _AppState) -> None:
        if self._scheduler is not None and self._scheduler.running:
            try:
                self._scheduler.remove_job(f"poll:{name}")
            except JobLookupError:
                pass

        def close() -> None:  # after a poll still running for it has finished
            with st.lock:
                st.client.close()

        threading.Thread(target=close, name=f"close {name}", daemon=True).start()

    def _reschedule(self, old: Config) -> None:
        poll, was = self.config.poll, old.poll
        if poll.concurrency != was.concurrency:
            # the pool's size is fixed: a new scheduler; running polls finish in the old one
            assert self._scheduler is not None
            self._scheduler.shutdown(wait=False)
            self.start()
            return
        assert self._scheduler is not None
        now = datetime.now(UTC)
        jitter = min(poll.interval * 0.1, 30.0)
        for name in self._apps:
            job = self._scheduler.get_job(f"poll:{name}")
            trigger = IntervalTrigger(seconds=poll.interval, jitter=jitter, timezone=UTC)
            if job is None:
                self._scheduler.add_job(
                    self.poll_app, trigger, args=[name], id=f"poll:{name}",
                    name=f"poll {name}", next_run_time=now,
                )  # fmt: skip
            elif poll.interval != was.interval:
                job.reschedule(trigger)

    def shutdown(self) -> None:
        """Stop the scheduler without waiting for running polls, then save the state."""
        self._watch_stop.set()
        if self._scheduler is not None and self._scheduler.running:
            self._scheduler.shutdown(wait=False)
        self.save_state()
        for st in self._apps.values():
            st.client.close()


def _client_limits(config: Config) -> tuple[object, ...]:
    """What client_for takes from poll and limits: a change gives every app a new client."""
    poll, limits = config.poll, config.limits
    return (
        poll.page_size, poll.max_pages, poll.retries,
        limits.max_label_length, limits.include, limits.exclude,
    )  # fmt: skip


def _totals(result: UsageResult) -> tuple[int, int]:
    total_b = total_r = 0
    for nbytes, nrequests in result.videos.values():
        total_b += nbytes
        total_r += nrequests
    return total_b, total_r
