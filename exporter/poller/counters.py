"""The counters' life outside a poll: loaded from the state file, continued from a previous
worker's served values, saved after each poll and at shutdown."""

from __future__ import annotations

from datetime import timedelta

from ..appkey import AppKey
from ..state import AppCounters
from .apps import day_bounds, recent_days
from .base import PollerBase, log


class CounterKeeping(PollerBase):
    def _load_counters(self) -> dict[AppKey, AppCounters]:
        """Counters from the state file when its day is recent enough; else a fresh start."""
        today, start, _ = day_bounds(self.clock(), self.tz)
        yesterday = (today - timedelta(days=1)).isoformat()
        fresh_origin = {today.isoformat(), yesterday}
        loaded = self._load_state()
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
                for key in self.config.app_keys():
                    apps.setdefault(key, AppCounters(origin_days=set(fresh_origin)))
                return apps
            log.warning(
                "state file is from an earlier day, counters start fresh",
                extra={"path": self.state_file.path, "day": saved_day},
            )
        return {k: AppCounters(origin_days=set(fresh_origin)) for k in self.config.app_keys()}

    def _load_state(self) -> tuple[str, dict[AppKey, AppCounters]] | None:
        """The state file's day and counters; a file of the earlier format (by app only)
        goes to the first account, with a warning when there are several."""
        if self.state_file is None:
            return None
        first = self.config.accounts[0].name
        loaded = self.state_file.load(legacy_account=first)
        if loaded is not None and loaded[2] and len(self.config.accounts) > 1:
            log.warning(
                "the state file is of the earlier format (by app only, no account): its"
                " counters go to the first account",
                extra={"path": self.state_file.path, "account": first},
            )
        return None if loaded is None else loaded[:2]

    def continue_counters(self, totals: dict[AppKey, tuple[int | None, int | None]]) -> None:
        """Go on from the counters a previous poll worker served (a restart after it died):
        an app whose loaded counters are lower (no state file, or a save that failed) takes
        the served values with fresh day baselines, so its counters never go down and no
        growth is counted twice (the growth until its next poll is not counted)."""
        today, _, _ = day_bounds(self.clock(), self.tz)
        fresh_origin = recent_days(today)
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

    def save_state(self) -> None:
        if self.state_file is None:
            return
        today, _, _ = day_bounds(self.clock(), self.tz)
        keep = recent_days(today)
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
