"""Snapshot store: the current, complete view of every app, replaced whole after each poll.

The poller builds a new immutable :class:`AppUsage` and :class:`AppStatus` per poll and hands them
to :meth:`Store.publish`, which swaps them in under a lock in one step. Readers (the exposition)
take :meth:`Store.view`, a consistent picture that later polls never change. Nothing here knows
about HTTP or the exposition format.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from .appkey import AppKey

OTHER = "__other__"


class _Keyed:
    """``app`` and ``account`` of a record kept by its :class:`AppKey` ``key``."""

    __slots__ = ()
    key: AppKey

    @property
    def app(self) -> str:
        return self.key.app

    @property
    def account(self) -> str:
        return self.key.account


@dataclass(frozen=True, slots=True)
class AppUsage(_Keyed):
    """Usage data of one app as of its last successful poll (the big, per-video part)."""

    key: AppKey  # (account, app)
    day: str  # ISO date of "today" in the poll timezone
    day_end: float  # unix time at which that day ends
    # (video_url, bytes, requests) after the cardinality cap and folding, bytes descending
    videos: tuple[tuple[str, int, int], ...]
    day_bytes: int
    day_requests: int
    day_videos: int
    month_bytes: int | None = None
    month_requests: int | None = None
    previous_day_bytes: int | None = None


@dataclass(frozen=True, slots=True)
class AppStatus(_Keyed):
    """Small, per-app health and counter values; rendered at scrape time."""

    key: AppKey  # (account, app)
    polled: bool = False  # at least one poll attempt finished
    up: bool = False
    last_success: float | None = None
    poll_duration: float | None = None
    # None until the poller has its counters (state file loaded): a counter is absent rather
    # than 0, so a restart never shows Prometheus a reset
    bytes_total: int | None = None
    requests_total: int | None = None
    skipped_rows: int = 0
    last_error: str | None = None
    incomplete_rows: int = 0  # rows kept with requests 0 (requests_total null or missing)


@dataclass(frozen=True, slots=True)
class DiscoveryState:
    """Discovery (app.list names the apps to poll), shown while discovery.enabled."""

    apps: frozenset[str] = frozenset()  # the discovered apps polled (the configured ones apart)
    left_out: int = 0  # apps that matched but were past discovery.max_apps
    last_success: float | None = None  # unix time of the last good listing
    failures: Mapping[str, int] = field(default_factory=dict)  # failed listings by outcome


@dataclass(frozen=True, slots=True)
class View:
    """Everything keyed by :class:`~exporter.appkey.AppKey` (account, app); the counts by
    (AppKey, outcome)."""

    version: int
    usage: Mapping[AppKey, AppUsage]
    status: Mapping[AppKey, AppStatus]
    requests: Mapping[tuple[AppKey, str], int] = field(default_factory=dict)
    poll_errors: Mapping[tuple[AppKey, str], int] = field(default_factory=dict)
    # (failed saves, unix time of the last good save or None); None without a state file
    state_saves: tuple[int, float | None] | None = None
    # app.list's verdict per configured app: app -> the closest listed name when the account
    # does not list it ("" when nothing is close), None when it is listed; an app is missing
    # here while app.list has never answered (scaleengine_app_listed absent)
    listed: Mapping[AppKey, str | None] = field(default_factory=dict)
    # per account with discovery.enabled (none: no discovery series at all)
    discovery: Mapping[str, DiscoveryState] = field(default_factory=dict)


class Store:
    """Holds the current snapshot of every app; swaps are atomic, reads never block on polls."""

    def __init__(self, apps: list[AppKey]) -> None:
        self._apps = list(apps)
        self._lock = threading.Lock()
        self._count_lock = threading.Lock()
        self._changed = threading.Condition(self._lock)
        # (version, usage, status), replaced as one tuple so that readers need no lock
        self._current: tuple[int, Mapping[AppKey, AppUsage], Mapping[AppKey, AppStatus]] = (
            0,
            MappingProxyType({}),
            MappingProxyType({app: AppStatus(key=app) for app in self._apps}),
        )
        self._requests: dict[tuple[AppKey, str], int] = {}
        self._poll_errors: dict[tuple[AppKey, str], int] = {}
        self._counts_version = 0
        self._state_saves: tuple[int, float | None] | None = None
        self._removed: set[AppKey] = set()  # apps a reload removed: late publishes are ignored
        self._listed: Mapping[AppKey, str | None] = MappingProxyType({})  # see View.listed
        self._discovery: Mapping[str, DiscoveryState] = MappingProxyType({})  # View.discovery

    @property
    def apps(self) -> list[AppKey]:
        return list(self._apps)

    def publish(self, app: AppKey, usage: AppUsage | None, status: AppStatus) -> None:
        """Replace the app's usage (None drops its series) and status in one step."""
        with self._lock:
            if app in self._removed:
                return
            version, old_usage, old_status = self._current
            new_usage = dict(old_usage)
            if usage is None:
                new_usage.pop(app, None)
            else:
                new_usage[app] = usage
            new_status = dict(old_status)
            new_status[app] = status
            self._current = (version + 1, MappingProxyType(new_usage), MappingProxyType(new_status))
            self._changed.notify_all()

    def count_request(self, app: AppKey, outcome: str) -> None:
        """Count one API request of an app by outcome (success or an error kind)."""
        with self._count_lock:
            if app in self._removed:
                return
            key = (app, outcome)
            self._requests[key] = self._requests.get(key, 0) + 1
            self._counts_version += 1

    def count_poll_error(self, app: AppKey, outcome: str) -> None:
        """Count one failed fetch of a poll (after retries) by outcome."""
        with self._count_lock:
            if app in self._removed:
                return
            key = (app, outcome)
            self._poll_errors[key] = self._poll_errors.get(key, 0) + 1
            self._counts_version += 1

    def fail_app(
        self, app: AppKey, outcome: str, error: str, usage: AppUsage | None = None
    ) -> None:
        """Drop the app's usage and mark it down, counting a poll error (e.g. it cannot be
        rendered); its counters and everything else stay. With ``usage``, only if that is
        still the app's current usage (a newer poll's is left alone)."""
        with self._lock:
            version, old_usage, old_status = self._current
            if usage is not None and old_usage.get(app) is not usage:
                return
            self.count_poll_error(app, outcome)
            new_usage = dict(old_usage)
            new_usage.pop(app, None)
            new_status = dict(old_status)
            old = new_status.get(app) or AppStatus(key=app)
            new_status[app] = dataclasses.replace(
                old, polled=True, up=False, last_error=f"{outcome}: {error}"
            )
            self._current = (version + 1, MappingProxyType(new_usage), MappingProxyType(new_status))
            self._changed.notify_all()

    def record_state_save(self, ok: bool | None, at: float | None = None) -> None:
        """Count a save of the state file (ok True/False); None only says there is one."""
        with self._count_lock:
            failures, last = self._state_saves or (0, None)
            if ok is True:
                last = at
            elif ok is False:
                failures += 1
            self._state_saves = (failures, last)
            self._counts_version += 1

    def set_listed(self, listed: Mapping[AppKey, str | None]) -> None:
        """app.list's verdict (see View.listed) for the configured apps it names; a change of
        the live metrics."""
        with self._lock:
            version, usage, status = self._current
            self._listed = MappingProxyType({a: v for a, v in listed.items() if a in status})
            self._current = (version + 1, usage, status)
            self._changed.notify_all()

    def set_discovery(self, account: str, state: DiscoveryState | None) -> None:
        """One account's discovery state (None: its discovery is off); a change of the live
        metrics."""
        with self._count_lock:
            states = dict(self._discovery)
            if state is None:
                states.pop(account, None)
            else:
                states[account] = state
            self._discovery = MappingProxyType(states)
            self._counts_version += 1

    def count_discovery_failure(self, account: str, outcome: str) -> None:
        """Count one failed listing of an account's discovery by outcome."""
        with self._count_lock:
            state = self._discovery.get(account) or DiscoveryState()
            failures = dict(state.failures)
            failures[outcome] = failures.get(outcome, 0) + 1
            states = dict(self._discovery)
            states[account] = dataclasses.replace(state, failures=failures)
            self._discovery = MappingProxyType(states)
            self._counts_version += 1

    @property
    def discovery(self) -> Mapping[str, DiscoveryState]:
        """Discovery's state per account that has it on."""
        return self._discovery

    def set_apps(self, apps: list[AppKey]) -> None:
        """A reload's new app list: removed apps and all their series go, new apps start
        unpolled, the others keep everything. Always counts as a change (budgets may have
        changed), so the exposition renders again."""
        with self._lock:
            version, old_usage, old_status = self._current
            keep = set(apps)
            self._removed = (self._removed | set(self._apps) | set(old_status)) - keep
            self._apps = list(apps)
            usage = {a: u for a, u in old_usage.items() if a in keep}
            status = {a: old_status.get(a) or AppStatus(key=a) for a in apps}
            self._listed = MappingProxyType({a: v for a, v in self._listed.items() if a in keep})
            self._current = (version + 1, MappingProxyType(usage), MappingProxyType(status))
            with self._count_lock:
                self._requests = {k: v for k, v in self._requests.items() if k[0] in keep}
                self._poll_errors = {k: v for k, v in self._poll_errors.items() if k[0] in keep}
                self._counts_version += 1
            self._changed.notify_all()

    def mirror(
        self,
        usage: Mapping[AppKey, AppUsage],
        status: Mapping[AppKey, AppStatus],
        requests: Mapping[tuple[AppKey, str], int],
        poll_errors: Mapping[tuple[AppKey, str], int],
        state_saves: tuple[int, float | None] | None = None,
        listed: Mapping[AppKey, str | None] | None = None,
        discovery: Mapping[str, DiscoveryState] | None = None,
    ) -> None:
        """Take over another store's whole state (the serving side of a poll worker)."""
        with self._lock:
            version = self._current[0] + 1
            self._listed = MappingProxyType(dict(listed or {}))
            self._discovery = MappingProxyType(dict(discovery or {}))
            self._current = (version, MappingProxyType(dict(usage)), MappingProxyType(dict(status)))
            with self._count_lock:
                self._requests = dict(requests)
                self._poll_errors = dict(poll_errors)
                self._state_saves = state_saves
                self._counts_version += 1
            self._changed.notify_all()

    def view(self) -> View:
        """A consistent picture of all apps; never waits for a poll or a swap."""
        version, usage, status = self._current
        # dict() of a dict is one C-level copy under the GIL: safe against concurrent counts
        return View(
            version,
            usage,
            status,
            dict(self._requests),
            dict(self._poll_errors),
            self._state_saves,
            self._listed,
            self._discovery,
        )

    @property
    def live_version(self) -> tuple[int, int]:
        """Changes whenever anything the live metrics show changes (swaps and counts)."""
        return self._current[0], self._counts_version

    def usage_view(self) -> tuple[int, Mapping[AppKey, AppUsage]]:
        """The usage mapping with its version, without copying the request counters."""
        version, usage, _ = self._current
        return version, usage

    def wait_for_change(self, version: int, timeout: float | None = None) -> int:
        """Block until the store's version differs from ``version``; return the new version."""
        with self._changed:
            self._changed.wait_for(lambda: self._current[0] != version, timeout=timeout)
            return self._current[0]
