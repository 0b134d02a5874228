"""Reconfigure without a restart (SIGHUP, POST /-/reload): apps added, removed or kept with
their counters, clients rebuilt when what they were built from changed, jobs rescheduled."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from ..state import AppCounters
from .apps import AppState, day_bounds, recent_days
from .base import PollerBase, log

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AppConfig, Config


def client_limits(config: Config) -> tuple[object, ...]:
    """What client_for takes from poll and limits: a change gives every app a new client."""
    poll, limits = config.poll, config.limits
    return (
        poll.page_size, poll.max_pages, poll.retries,
        limits.max_label_length, limits.include, limits.exclude,
    )  # fmt: skip


class Reconfiguring(PollerBase):
    def reconfigure(self, config: Config) -> None:
        """Take a new config without a restart (SIGHUP, POST /-/reload).

        Added apps start with fresh counters (today only sets their baseline, as at a fresh
        start) and are polled at once; removed apps stop and their series leave the store;
        unchanged apps keep their counters, baselines and last data. New API or poll settings,
        or a new label length or include/exclude (the client cuts and judges URLs as it reads
        them), give every app a new client; a new interval, jitter or concurrency reschedules.
        """
        with self._apps_lock:  # a listing's discovery waits (and vice versa)
            old = self.config
            self.config = config
            self.tz = config.poll.tz
            client_settings = config.scaleengine != old.scaleengine or client_limits(
                config
            ) != client_limits(old)
            self._rediscover()  # discovery: its settings may have changed
            added, removed = self._swap_apps(client_settings)
            if self._scheduler is not None and self._scheduler.running:
                self._reschedule(old)
            self.save_state()
        log.info(
            "poller reconfigured",
            extra={"apps": len(self._apps), "added": len(added), "removed": len(removed)},
        )

    def _swap_apps(self, new_client: bool) -> tuple[set[str], set[str]]:
        """The app set becomes the configured and discovered apps: kept ones keep their
        state, added ones start fresh, removed ones stop and their series leave the store.
        Returns (added, removed) names."""
        today, _, _ = day_bounds(self.clock(), self.tz)
        fresh_origin = recent_days(today)
        wanted = self._app_configs()
        apps = {a.name: self._carry_over(a, new_client, fresh_origin) for a in wanted}
        removed = {name: st for name, st in self._apps.items() if name not in apps}
        added = set(apps) - set(self._apps)
        self._apps = apps  # a new dict: readers iterating the old one are not disturbed
        self.store.set_apps(list(apps))  # a poll of a removed app still running publishes nothing
        for name, st in removed.items():
            self._reload_removed(name, st)
        return added, set(removed)

    def _carry_over(self, app: AppConfig, new_client: bool, fresh_origin: set[str]) -> AppState:
        """A kept app's state with its new config (and a new client when ``new_client``);
        an added app's fresh state (``fresh_origin``: the days it only takes baselines of)."""
        st = self._apps.get(app.name)
        if st is None:
            return AppState(
                config=app,
                client=self._default_client(app.name),
                counters=AppCounters(origin_days=set(fresh_origin)),
                lock=threading.Lock(),
            )
        st.config = app
        if new_client:
            old_client, st.client = st.client, self._default_client(app.name)
            old_client.close()
        return st

    def _reload_removed(self, name: str, st: AppState) -> None:
        self._unschedule(name)

        def close() -> None:  # after a poll still running for it has finished
            with st.lock:
                st.client.close()

        threading.Thread(target=close, name=f"close {name}", daemon=True).start()
