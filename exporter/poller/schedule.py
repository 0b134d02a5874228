"""The APScheduler jobs: one per app (at most one run of an app at a time, missed runs
coalesced, a little jitter) on a bounded thread pool, so a slow app never delays another."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.base import JobLookupError
from apscheduler.schedulers.background import BackgroundScheduler
from apscheduler.triggers.interval import IntervalTrigger

from ..appkey import AppKey
from .base import PollerBase, log
from .discovery import discovering, listing_interval, pool_size

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import Config, PollConfig


def _trigger(poll: PollConfig) -> IntervalTrigger:
    jitter = min(poll.interval * 0.1, 30.0)
    return IntervalTrigger(seconds=poll.interval, jitter=jitter, timezone=UTC)


def _job_id(key: AppKey) -> str:
    """The app's job id: unique whatever characters the account and app names hold."""
    return "poll:" + json.dumps(list(key))


class Scheduling(PollerBase):
    def start(self) -> None:
        """Schedule every app's polls (the first at once) and start the overdue watch."""
        poll = self.config.poll
        workers = pool_size(self.config, len(self._apps))
        self._scheduler = BackgroundScheduler(
            executors={"default": ThreadPoolExecutor(max_workers=workers)},
            job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
            timezone=UTC,
        )
        now = datetime.now(UTC)
        for name in self._apps:
            self._add_job(name, now)
        self._scheduler.add_job(
            self.check_app_list,
            IntervalTrigger(seconds=listing_interval(self.config), timezone=UTC),
            kwargs={"force": False},  # each account when its own interval has passed
            id="app.list",
            name="app.list",
            next_run_time=now,
        )
        self._scheduler.start()
        self._start_watch()
        log.info(
            "polling started",
            extra={"apps": len(self._apps), "interval": poll.interval, "workers": workers},
        )

    def _add_job(self, name: AppKey, first_run: datetime) -> None:
        assert self._scheduler is not None
        self._scheduler.add_job(
            self.poll_app,
            _trigger(self.config.poll),
            args=[name],
            id=_job_id(name),
            name=f"poll {name}",
            next_run_time=first_run,
        )

    @property
    def _scheduling(self) -> bool:
        return self._scheduler is not None and self._scheduler.running

    def _reschedule(self, old: Config) -> None:
        """After a reload: added apps scheduled at once; a new interval reschedules, a new
        concurrency makes a new scheduler (running polls finish in the old one)."""
        poll, was = self.config.poll, old.poll
        assert self._scheduler is not None
        toggled = discovering(self.config) != discovering(old)
        if poll.concurrency != was.concurrency or toggled:
            # the pool's size is fixed: a new scheduler; running polls finish in the old one
            self._scheduler.shutdown(wait=False)
            self.start()
            return
        now = datetime.now(UTC)
        for name in self._apps:
            job = self._scheduler.get_job(_job_id(name))
            if job is None:
                self._add_job(name, now)
            elif poll.interval != was.interval:
                job.reschedule(_trigger(poll))
        listing = self._scheduler.get_job("app.list")
        if listing is not None:  # the new app names are checked at once
            if listing_interval(self.config) != listing_interval(old):
                listing.reschedule(
                    IntervalTrigger(seconds=listing_interval(self.config), timezone=UTC)
                )
            listing.modify(next_run_time=now)

    def _unschedule(self, name: AppKey) -> None:
        """A removed app's job goes (a run of it already queued does nothing)."""
        if self._scheduling:
            assert self._scheduler is not None
            try:
                self._scheduler.remove_job(_job_id(name))
            except JobLookupError:
                pass

    def _stop_scheduling(self) -> None:
        """Stop the watch and the scheduler, without waiting for running polls."""
        self._watch_stop.set()
        if self._scheduling:
            assert self._scheduler is not None
            self._scheduler.shutdown(wait=False)
