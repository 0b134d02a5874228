"""Polling: fetch each app's usage on a schedule, account counters, publish whole snapshots.

One APScheduler job per app on a bounded thread pool, so a slow app never delays another; each
run publishes a new :class:`~exporter.store.AppUsage` and :class:`~exporter.store.AppStatus`
in one swap. The modules, each with one job:

- ``core``: :class:`Poller`, its set-up and what concerns every app at once (``poll_all``,
  ``ready``, ``in_flight``, ``shutdown``); it is made of the parts below.
- ``flow``: the poll flow, one run of one app: today, late yesterday, the month when due,
  pending days confirmed, counters, usage built, errors counted, the snapshot published.
- ``fetching``: one fetch of a run, and the back-off while the API says it is busy.
- ``apps``: the per-app state a run leaves for the next (``AppState``, ``MonthTotal``), the
  day's bounds in the poll time zone.
- ``counters``: counters loaded from the state file, continued from a previous worker, saved.
- ``schedule``: the APScheduler jobs (start, reschedule, unschedule, stop).
- ``overdue``: the watch thread that marks an app whose polls stopped ending on time down.
- ``reload``: reconfigure without a restart (apps added, removed, kept; clients rebuilt).
- ``folding``: the cardinality cap (``fold_videos``, ``fold_with_limits``) and safe label
  values (``label_value``); also used by backfill.
- ``base``: the attributes the parts share, the package's logger.
"""

from .apps import day_bounds
from .base import ClientFactory, Clock
from .core import Poller
from .flow import INTERNAL_OUTCOME
from .folding import fold_videos, fold_with_limits, label_value
from .overdue import OVERDUE_OUTCOME, WATCH_EVERY

__all__ = [
    "INTERNAL_OUTCOME",
    "OVERDUE_OUTCOME",
    "WATCH_EVERY",
    "ClientFactory",
    "Clock",
    "Poller",
    "day_bounds",
    "fold_videos",
    "fold_with_limits",
    "label_value",
]
