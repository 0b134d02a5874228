"""The live part's collectors, read at scrape time: each app's health and counters, request
and poll-error outcomes, state saves, build info (:class:`LiveCollector`), the poll
worker's memory and CPU (:class:`WorkerCollector`), and the running poll.interval
(:class:`PollSettings`)."""

from __future__ import annotations

import os
import platform
import threading
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
            *_discovery_families(view),
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


def _discovery_families(view: View) -> list[Metric]:
    """Discovery's listings (app.list) per account; none while no account has it on."""
    if not view.discovery:
        return []
    apps = GaugeMetricFamily(
        "scaleengine_discovery_apps",
        "Apps polled because app.list names them (discovery), beside the configured ones.",
        labels=["account"],
    )
    left_out = GaugeMetricFamily(
        "scaleengine_discovery_apps_left_out",
        "Apps app.list names that discovery's filters keep but discovery.max_apps left out.",
        labels=["account"],
    )
    failures = CounterMetricFamily(
        "scaleengine_discovery_failures",
        "Listings of discovery (app.list) that failed, by outcome; the last good list of "
        "apps is kept meanwhile.",
        labels=["account", "outcome"],
    )
    last = GaugeMetricFamily(
        "scaleengine_discovery_last_success_timestamp_seconds",
        "Unix time of discovery's last good listing (app.list).",
        labels=["account"],
    )
    for account, state in sorted(view.discovery.items()):
        apps.add_metric([account], len(state.apps))
        left_out.add_metric([account], state.left_out)
        for outcome, count in sorted(state.failures.items()):
            failures.add_metric([account, outcome], count)
        if state.last_success is not None:
            last.add_metric([account], state.last_success)
    return [apps, left_out, failures] + ([last] if last.samples else [])


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


class ContinuingWorkerCollector(WorkerCollector):
    """The worker's metrics; its CPU counter goes on across worker restarts (the CPU time of
    the workers that ended is added), so it never goes down."""

    def __init__(self, pid: Callable[[], int | None]) -> None:
        super().__init__(pid)
        self._last: tuple[int | None, float] = (None, 0.0)  # (pid, its last CPU seconds)
        self._ended = 0.0  # CPU seconds of the workers that ended
        self._cpu_lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        pid = self._pid()
        families = list(super().collect())
        with self._cpu_lock:
            last_pid, last_cpu = self._last
            if last_pid is not None and pid != last_pid:
                self._ended += last_cpu
                self._last = (None, 0.0)
            for family in families:
                if family.name == "scaleengine_worker_cpu_seconds":
                    cpu = family.samples[0].value
                    self._last = (pid, cpu)
                    family.samples[0] = family.samples[0]._replace(value=cpu + self._ended)
        return families


class PollSettings:
    """``scaleengine_poll_interval_seconds``: the running config's poll.interval (a reload sets
    ``interval``). The usage counters step once per poll, so a rate() over a window shorter
    than about two polls reads 0, 0, 0, then a spike: the dashboard sizes its rate windows from
    this gauge (its hidden ``poll_window`` variable)."""

    def __init__(self, interval: float) -> None:
        self.interval = interval

    def collect(self) -> Iterable[Metric]:
        return [
            GaugeMetricFamily(
                "scaleengine_poll_interval_seconds",
                "The exporter's poll.interval: usage values change at most once per interval, "
                "so rate() needs a window of at least two intervals.",
                value=self.interval,
            )
        ]
