"""The live part's collectors, read at scrape time: each app's health and counters, request
and poll-error outcomes, state saves, build info (:class:`LiveCollector`), and the poll
worker's memory and CPU (:class:`WorkerCollector`)."""

from __future__ import annotations

import os
import platform
from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .. import __version__
from ..store import AppStatus, Store, View


class _AppFamilies(NamedTuple):
    """The per-app families, in exposition order."""

    bytes_total: CounterMetricFamily
    requests_total: CounterMetricFamily
    up: GaugeMetricFamily
    last_success: GaugeMetricFamily
    duration: GaugeMetricFamily
    skipped: CounterMetricFamily
    incomplete: CounterMetricFamily


class LiveCollector:
    """prometheus_client collector for the small live part, read from the store at scrape."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        view = self._store.view()
        statuses: list[AppStatus] = [view.status[a] for a in sorted(view.status)]
        return [
            *_app_families(statuses),
            _listed_family(view),
            *_outcome_families(view),
            *_state_families(view),
            _build_info(),
        ]


def _new_app_families() -> _AppFamilies:
    return _AppFamilies(
        CounterMetricFamily(
            "scaleengine_vse_bytes",
            "Bytes delivered, counted from the growth of each app's day totals seen since the "
            "exporter started (late data of yesterday included); a new day starts from zero.",
            labels=["account", "app"],
        ),
        CounterMetricFamily(
            "scaleengine_vse_requests",
            "Play, pause and stop commands, counted from the growth of each app's day totals.",
            labels=["account", "app"],
        ),
        GaugeMetricFamily(
            "scaleengine_up",
            "1 when the app's last poll of usage.vse succeeded.",
            labels=["account", "app"],
        ),
        GaugeMetricFamily(
            "scaleengine_last_success_timestamp_seconds",
            "Unix time of the app's last successful poll.",
            labels=["account", "app"],
        ),
        GaugeMetricFamily(
            "scaleengine_poll_duration_seconds",
            "Wall time of the app's last poll (all pages, retries included).",
            labels=["account", "app"],
        ),
        CounterMetricFamily(
            "scaleengine_vse_skipped_rows",
            "usage.vse rows skipped because their numbers were unusable.",
            labels=["account", "app"],
        ),
        CounterMetricFamily(
            "scaleengine_vse_incomplete_rows",
            "usage.vse rows kept with 0 requests because their requests_total was null or "
            "missing (their bytes are counted).",
            labels=["account", "app"],
        ),
    )


def _app_families(statuses: Sequence[AppStatus]) -> _AppFamilies:
    f = _new_app_families()
    for st in statuses:
        f.incomplete.add_metric([*st.key], st.incomplete_rows)
        # absent until the worker has its counters (state loaded): never a false reset
        if st.bytes_total is not None:
            f.bytes_total.add_metric([*st.key], st.bytes_total)
        if st.requests_total is not None:
            f.requests_total.add_metric([*st.key], st.requests_total)
        f.up.add_metric([*st.key], 1 if st.up else 0)
        if st.last_success is not None:
            f.last_success.add_metric([*st.key], st.last_success)
        if st.poll_duration is not None:
            f.duration.add_metric([*st.key], st.poll_duration)
        f.skipped.add_metric([*st.key], st.skipped_rows)
    return f


def _listed_family(view: View) -> Metric:
    """scaleengine_app_listed: 1 when app.list names the app, 0 when not (a typo?); absent
    while app.list has never answered."""
    listed = GaugeMetricFamily(
        "scaleengine_app_listed",
        "1 when the account's app list (app.list) names the configured app, 0 when it does "
        "not (check the app's name in the config); absent until app.list has answered.",
        labels=["account", "app"],
    )
    for key in sorted(view.listed):
        listed.add_metric([*key], 0 if view.listed[key] is not None else 1)
    return listed


def _outcome_families(view: View) -> list[Metric]:
    """API requests and failed fetches, by app and outcome."""
    api = CounterMetricFamily(
        "scaleengine_api_requests",
        "HTTP requests made to the ScaleEngine API, by account, app and outcome "
        "(success, or the kind of error).",
        labels=["account", "app", "outcome"],
    )
    for (key, outcome), count in sorted(view.requests.items()):
        api.add_metric([*key, outcome], count)
    poll_errors = CounterMetricFamily(
        "scaleengine_poll_errors",
        "Fetches of a poll that failed after retries, by account, app and outcome (the kind of "
        "error); the app's last good data is kept until poll.stale_after.",
        labels=["account", "app", "outcome"],
    )
    for (key, outcome), count in sorted(view.poll_errors.items()):
        poll_errors.add_metric([*key, outcome], count)
    return [api, poll_errors]


def _state_families(view: View) -> list[Metric]:
    """The state file's saves; none without a state file."""
    state: list[Metric] = []
    if view.state_saves is not None:
        failures, last_save = view.state_saves
        save_failures = CounterMetricFamily(
            "scaleengine_state_save_failures",
            "Saves of the state file (state.path) that failed (disk full, folder gone, ...); "
            "a restart then loads older counters.",
        )
        save_failures.add_metric([], failures)
        state.append(save_failures)
        if last_save is not None:
            state.append(
                GaugeMetricFamily(
                    "scaleengine_state_last_save_timestamp_seconds",
                    "Unix time of the last successful save of the state file.",
                    value=last_save,
                )
            )
    return state


def _build_info() -> Metric:
    info = GaugeMetricFamily(
        "scaleengine_exporter_build_info",
        "Build information of scaleengine-exporter; always 1.",
        labels=["version", "python_version"],
    )
    info.add_metric([__version__, platform.python_version()], 1)
    return info


class WorkerCollector:
    """The poll worker's memory and CPU, read from /proc at scrape time by the serving process
    (its parent): the process_* metrics describe the serving process only."""

    _TICK = os.sysconf("SC_CLK_TCK")
    _PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self._pid = pid

    def collect(self) -> Iterable[Metric]:
        pid = self._pid()
        if pid is None:
            return []
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return []
        rss = GaugeMetricFamily(
            "scaleengine_worker_resident_memory_bytes",
            "Resident memory of the poll worker process (polling and rendering) in bytes.",
            value=int(fields[21]) * self._PAGE,
        )
        cpu = CounterMetricFamily(
            "scaleengine_worker_cpu_seconds",
            "User and system CPU time spent by the poll worker process in seconds.",
            value=(int(fields[11]) + int(fields[12])) / self._TICK,
        )
        return [rss, cpu]
