"""Discovery (issue 17): poll every app the account's app.list names, filtered by
``discovery.include``/``exclude`` and capped at ``discovery.max_apps``, beside the apps the
config lists (which keep their budgets and url lists).

The listing is the one app.list check of :mod:`.applist` (at start, every
``discovery.interval`` while discovery is on, at once after a reload). An app that appears is
added as a reload adds one (its counters start from a baseline); one that goes is removed as
a reload removes one (its series and its state entry go). A failed listing, or one naming no
app at all, keeps the last good list. After a restart the apps discovered before (those the
state file holds, with their counters) are polled until the first listing answers.

:func:`discovery_of` is the one place the settings are read.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING
from datetime import UTC, datetime

from ..config.plain import Settings
from ..scaleengine import ApiError
from ..store import DiscoveryState
from .base import PollerBase, log

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AppConfig, Config, DiscoveryConfig

APP_LIST_INTERVAL = 3600.0  # seconds between two app.list checks while discovery is off
EMPTY_OUTCOME = "empty"  # a listing that names no app at all: kept as a failure


def discovery_of(config: Config) -> DiscoveryConfig:
    """The discovery settings of the apps this poller polls (the one place they are read)."""
    return config.discovery


def listing_interval(config: Config) -> float:
    """Seconds between two app.list listings: discovery.interval when on, else hourly."""
    settings = discovery_of(config)
    return settings.interval if settings.enabled else APP_LIST_INTERVAL


def pool_size(config: Config, apps: int) -> int:
    """Poll threads: poll.concurrency, or fewer for fewer apps when the app set is fixed."""
    if discovery_of(config).enabled:
        return config.poll.concurrency
    return max(1, min(config.poll.concurrency, apps))


def should_log(n: int) -> bool:
    """Whether the n-th occurrence of a repeated event is logged: 1, 10, 100, every 1000th."""
    return n in (1, 10, 100) or n % 1000 == 0


@dataclass(frozen=True)
class Selection:
    """What one listing gives discovery."""

    apps: tuple[str, ...]  # the discovered apps to poll, sorted by name
    left_out: int  # matched the filters but past max_apps
    unusable: int  # names no app config could have (empty, spaces around, control chars)


def usable(name: str) -> bool:
    """Whether an app config could hold the name: AppConfig's rule (not empty, no spaces
    around it, no control characters), without a model per name (a listing may hold
    100,000)."""
    return bool(name.strip()) and name == name.strip() and name.isprintable()


def select(
    names: Iterable[str], configured: Collection[str], settings: DiscoveryConfig
) -> Selection:
    """The apps a listing adds to the configured ones: named, not configured, kept by
    include/exclude (``re.search`` on the name), the first ``max_apps`` by name."""
    usable_names = {n for n in names if usable(n)}
    unusable = len(set(names) - usable_names)
    candidates = sorted(
        n
        for n in usable_names
        if n not in configured
        and (settings.include is None or settings.include.search(n))
        and not (settings.exclude is not None and settings.exclude.search(n))
    )
    cap = settings.max_apps
    return Selection(tuple(candidates[:cap]), max(0, len(candidates) - cap), unusable)


def app_configs(config: Config, discovered: Iterable[str]) -> list[AppConfig]:
    """The apps to poll: the configured ones, then the discovered ones (no budgets, all urls)."""
    return [*config.apps, *(discovered_app(n) for n in discovered)]


def discovered_app(name: str) -> AppConfig:
    """A discovered app's settings: AppConfig's defaults (all urls, no budgets) as plain
    Settings, built without pydantic (the poll worker runs without it; a test checks these
    equal the model's)."""
    fields = {"name": name, "urls": None, "daily_bytes_budget": None, "monthly_bytes_budget": None}
    return Settings("AppConfig", fields, {})  # type: ignore[return-value]


def _names(names: Collection[str], most: int = 20) -> str:
    """Names for a log line: the first ``most`` by name, then how many more."""
    shown = sorted(names)[:most]
    more = f" and {len(names) - most} more" if len(names) > most else ""
    return (",".join(shown) or "none") + more


class Discovering(PollerBase):
    _discovered: tuple[str, ...]
    _apps_lock: threading.RLock

    def _init_discovery(self, loaded: Collection[str]) -> None:
        """Before the apps are built: the apps the state file holds beyond the configured
        ones are the last discovered list (filtered by today's settings)."""
        self._apps_lock = threading.RLock()
        self._listing: tuple[str, ...] | None = None  # the last good listing's names
        self._listing_settled = False  # a first listing ended (well or not)
        self._fail_counts: dict[str, int] = {}
        self._warned: tuple[int, int] = (0, 0)  # (left_out, unusable) last warned about
        self._discovered = ()
        settings = discovery_of(self.config)
        if settings.enabled:
            configured = {a.name for a in self.config.apps}
            self._discovered = select(loaded, configured, settings).apps
            # a restarted worker goes on from the served failure counts
            state = self.store.discovery or DiscoveryState()
            self.store.set_discovery(dataclasses.replace(state, apps=frozenset(self._discovered)))

    @property
    def discovering(self) -> bool:
        """Whether discovery is on (the apps app.list names are polled)."""
        return discovery_of(self.config).enabled

    def _app_configs(self) -> list[AppConfig]:
        return app_configs(self.config, self._discovered)

    @property
    def _discovery_settled(self) -> bool:
        """Ready needs the first listing to have ended while discovery is on."""
        return self._listing_settled or not discovery_of(self.config).enabled

    def _rediscover(self) -> None:
        """A reload: the last good listing judged by the new settings (the listing that
        follows the reload at once judges a fresh one)."""
        settings = discovery_of(self.config)
        if not settings.enabled:
            self._discovered = ()
            self.store.set_discovery(None)
            return
        configured = {a.name for a in self.config.apps}
        names = self._listing if self._listing is not None else self._discovered
        selection = select(names, configured, settings)
        self._discovered = selection.apps
        state = self.store.discovery or DiscoveryState()
        left_out = selection.left_out if self._listing is not None else state.left_out
        self.store.set_discovery(
            DiscoveryState(frozenset(selection.apps), left_out, state.last_success, state.failures)
        )

    def _take_listing(self, names: list[str]) -> bool:
        """A good app.list answer: discovered apps added and removed (nothing while off).
        False when discovery does not take it (it names no app at all)."""
        settings = discovery_of(self.config)
        if not settings.enabled:
            return True
        if not names:
            self._listing_failed(ApiError("app.list named no app", EMPTY_OUTCOME, False))
            return False
        with self._apps_lock:
            self._listing_settled = True
            self._listing = tuple(names)
            if self._fail_counts:
                log.info("app.list answers again: discovery goes on", extra={"apps": len(names)})
                self._fail_counts = {}
            configured = {a.name for a in self.config.apps}
            selection = select(names, configured, settings)
            self._warn_selection(selection, settings)
            if selection.apps != self._discovered:
                self._apply_discovered(selection.apps)
            state = self.store.discovery or DiscoveryState()
            self.store.set_discovery(
                DiscoveryState(
                    frozenset(selection.apps), selection.left_out, self.clock(), state.failures
                )
            )
        return True

    def _apply_discovered(self, discovered: tuple[str, ...]) -> None:
        """The discovered apps become ``discovered``: added ones polled at once, gone ones
        stopped, their series and state entries dropped."""
        self._discovered = discovered
        added, removed = self._swap_apps(False)
        if self._scheduler is not None and self._scheduler.running:
            now = datetime.now(UTC)
            for name in sorted(added):
                self._add_job(name, now)
        self.save_state()
        log.info(
            "discovery: app set changed",
            extra={
                "apps": len(self._apps),
                "added": _names(added),
                "removed": _names(removed),
            },
        )

    def _warn_selection(self, selection: Selection, settings: DiscoveryConfig) -> None:
        """One warning when apps start being left out past max_apps (or their number
        changes), and one when the listing names apps no config could name."""
        left_out, unusable = self._warned
        if selection.left_out and selection.left_out != left_out:
            log.warning(
                f"discovery: app.list names more apps than discovery.max_apps; the first"
                f" {settings.max_apps} by name are polled, {selection.left_out} left out",
                extra={"max_apps": settings.max_apps, "left_out": selection.left_out},
            )
        if selection.unusable and selection.unusable != unusable:
            log.warning(
                "discovery: app.list names apps that cannot be polled (empty names, spaces"
                " around them or control characters); they are left out",
                extra={"count": selection.unusable},
            )
        self._warned = (selection.left_out, selection.unusable)

    def _listing_failed(self, err: ApiError) -> None:
        """A failed listing keeps the last good list; counted, logged as repeated events
        are (1st, 10th, 100th, every 1000th of each kind)."""
        self._listing_settled = True
        self.store.count_discovery_failure(err.outcome)
        n = self._fail_counts[err.outcome] = self._fail_counts.get(err.outcome, 0) + 1
        if should_log(n):
            log.warning(
                "app.list failed: discovery keeps the last good list of apps",
                extra={"outcome": err.outcome, "err": err.message, "count": n},
            )
