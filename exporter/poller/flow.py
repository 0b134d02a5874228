"""The poll flow: one run of one app, from its fetches to the snapshot it publishes.

A run fetches today (and yesterday while late data may still arrive, and the month to date
when due), folds the rows into the cardinality cap, adds the growth of the day totals to the
counters, and publishes a new :class:`~exporter.store.AppUsage` and
:class:`~exporter.store.AppStatus` in one swap. An unexpected exception ends it as a failed
poll (outcome ``internal``).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import TYPE_CHECKING

from ..appkey import AppKey
from ..scaleengine import POLL_TIMEOUT, ApiError, UsageResult
from ..store import AppStatus, AppUsage
from .apps import AppState, MonthTotal, day_bounds, totals
from .base import PollerBase, log
from .fetching import fetch
from .folding import fold_with_limits

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import PollConfig

INTERNAL_OUTCOME = "internal"  # poll error outcome of an unexpected exception inside a poll


@dataclass
class _Run:
    """One run of one app: what its steps share."""

    name: AppKey
    st: AppState
    poll: PollConfig  # as the run started: a reload meanwhile does not change it
    now: float
    today: date
    day_end: float
    deadline: float  # time.monotonic() by which every fetch of the run has ended
    errors: list[ApiError] = field(default_factory=list)


class PollFlow(PollerBase):
    def poll_app(self, name: AppKey) -> bool:
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

    def _poll_crashed(self, name: AppKey, st: AppState, err: Exception) -> None:
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
        log.error(
            "poll failed", extra={**name._asdict(), "outcome": INTERNAL_OUTCOME, "err": error}
        )
        status = dataclasses.replace(
            self._status(st, up=False, duration=None),
            last_error=f"{INTERNAL_OUTCOME}: {error}",
        )
        self._publish_poll(name, st, status)

    def _publish_poll(self, name: AppKey, st: AppState, status: AppStatus) -> None:
        """A poll's end: its usage and status, and the app is on time again."""
        with st.publish_lock:
            st.last_end = time.monotonic()
            st.overdue = False
            if self._apps.get(name) is not st:  # removed meanwhile (and perhaps added again)
                return
            self.store.publish(name, st.usage, status)

    def _fetch(
        self, st: AppState, year: int, month: int, day: int | None, deadline: float
    ) -> UsageResult:
        return fetch(st, self.config.poll, self.clock, year, month, day, deadline)

    def _poll_locked(self, name: AppKey, st: AppState) -> bool:
        started = time.perf_counter()
        now = self.clock()
        today, midnight, day_end = day_bounds(now, self.tz)
        poll = self.config.poll
        # the whole poll (every fetch, page and retry) ends by then: outcome poll_timeout
        run = _Run(name, st, poll, now, today, day_end, time.monotonic() + poll.timeout)
        day_result: UsageResult | None = None
        try:
            day_result = self._fetch(st, today.year, today.month, today.day, run.deadline)
        except ApiError as err:
            run.errors.append(err)
        if poll.late_data_window > 0 and now - midnight < poll.late_data_window:
            self._poll_yesterday(run)
        if day_result is not None:
            self._take_today(run, day_result)
        else:
            self._drop_old_usage(run)
        errors = run.errors
        if st.counters.pending and not errors:
            errors += self._confirm_pending(st, run.deadline)
        if not errors:
            st.last_success = now
        st.polled = True
        duration = time.perf_counter() - started
        self._count_errors(run)
        status = self._status(st, up=not errors, duration=duration, errors=errors)
        self._publish_poll(name, st, status)
        log.debug(
            "polled",
            extra={**name._asdict(), "ok": not errors, "seconds": round(duration, 3)},
        )
        return not errors

    def _poll_yesterday(self, run: _Run) -> None:
        """Late data: yesterday's growth counted, its total kept for previous_day_bytes."""
        st = run.st
        yesterday = run.today - timedelta(days=1)
        try:
            res = self._fetch(st, yesterday.year, yesterday.month, yesterday.day, run.deadline)
            y_bytes, y_requests = totals(res)
            st.counters.observe(yesterday.isoformat(), y_bytes, y_requests)
            st.previous_day = (yesterday.isoformat(), y_bytes)
        except ApiError as err:
            run.errors.append(err)

    def _take_today(self, run: _Run, day_result: UsageResult) -> None:
        """Today read: its growth counted, the month fetched when due, the usage rebuilt."""
        st, today, now = run.st, run.today, run.now
        today_iso = today.isoformat()
        day_bytes, day_requests = totals(day_result)
        st.counters.observe(today_iso, day_bytes, day_requests)
        if run.poll.month_interval is not None and (
            st.month is None
            or st.month.day != today_iso
            or now - st.month.fetched_at >= run.poll.month_interval
        ):
            try:
                res = self._fetch(st, today.year, today.month, None, run.deadline)
                m_bytes, m_requests = totals(res)
                st.month = MonthTotal(
                    today_iso,
                    (today.year, today.month),
                    m_bytes,
                    m_requests,
                    day_bytes,
                    day_requests,
                    now,
                )
            except ApiError as err:
                run.errors.append(err)
        st.usage = self._build_usage(st, today, run.day_end, day_result, day_bytes, day_requests)

    def _drop_old_usage(self, run: _Run) -> None:
        """Today not read: yesterday's per-video values are not today's, and stale data is
        not shown forever."""
        st, today_iso = run.st, run.today.isoformat()
        if st.usage is not None and (
            st.usage.day != today_iso
            or st.last_success is None
            or run.now - st.last_success > run.poll.stale_after
        ):
            log.warning(
                "dropping the app's usage series",
                extra={
                    **run.name._asdict(),
                    "reason": "stale" if st.usage.day == today_iso else "new day",
                },
            )
            st.usage = None

    def _count_errors(self, run: _Run) -> None:
        """Each failed fetch counted and logged once; a poll runs out of time only once."""
        timed_out = False
        for err in run.errors:
            if err.backing_off:
                continue  # no request made: counted when the API said it was busy
            if err.outcome == POLL_TIMEOUT:
                if timed_out:
                    continue  # a poll runs out of time once, however many fetches it cut
                timed_out = True
                err.args = (f"{err} (poll.timeout {run.poll.timeout:g}s)",)
            self.store.count_poll_error(run.name, err.outcome)
            log.warning(
                "poll failed",
                extra={**run.name._asdict(), "outcome": err.outcome, "err": str(err)},
            )

    def _confirm_pending(self, st: AppState, deadline: float) -> list[ApiError]:
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
                st.counters.observe(day, *totals(res))
        return errors

    def _build_usage(
        self,
        st: AppState,
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
            key=st.key,
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
        st: AppState,
        up: bool,
        duration: float | None,
        errors: list[ApiError] | None = None,
    ) -> AppStatus:
        return AppStatus(
            key=st.key,
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
