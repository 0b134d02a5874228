"""Reconfigure without a restart (SIGHUP, POST /-/reload): apps added, removed or kept with
their counters, clients rebuilt when what they were built from changed, jobs rescheduled."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from ..appkey import AppKey
from ..state import AppCounters
from .apps import AppState, day_bounds, recent_days
from .base import PollerBase, log

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AccountConfig, AppConfig, Config


def client_limits(config: Config) -> tuple[object, ...]:
    """What client_for takes from poll and limits: a change gives every app a new client."""
    poll, limits = config.poll, config.limits
    return (
        poll.page_size, poll.max_pages, poll.retries,
        limits.max_label_length, limits.include, limits.exclude,
    )  # fmt: skip


def _api_settings(account: AccountConfig, old: Config) -> bool:
    """True when the account's API settings (URL, credentials, timeout, limits) are not
    what they were: its apps get new clients; another account's are left alone."""
    was = old.account(account.name)
    return was is None or account.api_fingerprint != was.api_fingerprint


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
            limits_changed = client_limits(config) != client_limits(old)
            self._rediscover()  # discovery: its settings may have changed
            added, removed = self._swap_apps(
                lambda account: limits_changed or _api_settings(account, old)
            )
            if self._scheduler is not None and self._scheduler.running:
                self._reschedule(old)
            self.save_state()
        log.info(
            "poller reconfigured",
            extra={"apps": len(self._apps), "added": len(added), "removed": len(removed)},
        )

    def _swap_apps(
        self, new_client: Callable[[AccountConfig], bool] = lambda account: False
    ) -> tuple[set[AppKey], set[AppKey]]:
        """The app set becomes the configured and discovered apps: kept ones keep their
        state (with a new client when ``new_client(account)``), added ones start fresh,
        removed ones stop and their series leave the store. Returns (added, removed) keys."""
        today, _, _ = day_bounds(self.clock(), self.tz)
        fresh_origin = recent_days(today)
        renew: dict[str, bool] = {}
        apps: dict[AppKey, AppState] = {}
        for key, account, app in self._app_configs():
            if account.name not in renew:
                renew[account.name] = new_client(account)
            apps[key] = self._carry_over(key, app, renew[account.name], fresh_origin)
        removed = {key: st for key, st in self._apps.items() if key not in apps}
        added = set(apps) - set(self._apps)
        self._apps = apps  # a new dict: readers iterating the old one are not disturbed
        self.store.set_apps(list(apps))  # a poll of a removed app still running publishes nothing
        for key, st in removed.items():
            self._reload_removed(key, st)
        return added, set(removed)

    def _carry_over(
        self, key: AppKey, app: AppConfig, new_client: bool, fresh_origin: set[str]
    ) -> AppState:
        """A kept app's state with its new config (and a new client when ``new_client``);
        an added app's fresh state (``fresh_origin``: the days it only takes baselines of)."""
        st = self._apps.get(key)
        if st is None:
            return AppState(
                key=key,
                config=app,
                client=self._default_client(key),
                counters=AppCounters(origin_days=set(fresh_origin)),
                lock=threading.Lock(),
            )
        st.config = app
        if new_client:
            old_client, st.client = st.client, self._default_client(key)
            old_client.close()
        return st

    def _reload_removed(self, name: AppKey, st: AppState) -> None:
        self._unschedule(name)

        def close() -> None:  # after a poll still running for it has finished
            with st.lock:
                st.client.close()

        threading.Thread(target=close, name=f"close {name}", daemon=True).start()
