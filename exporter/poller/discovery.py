"""Discovery (issue 17): poll every app an account's app.list names, filtered by its
``discovery.include``/``exclude`` and capped at its ``discovery.max_apps``, beside the apps
the config lists (which keep their budgets and url lists). Each account discovers on its own:
its listing, its failures and its apps never touch another account's.

The listing is the one app.list check of :mod:`.applist` (at start, every account's
``discovery.interval`` while its discovery is on, hourly otherwise, at once after a reload).
An app that appears is added as a reload adds one (its counters start from a baseline); one
that goes is removed as a reload removes one (its series and its state entry go). A failed
listing, or one naming no app at all, keeps the account's last good list. After a restart
the apps discovered before (those the state file holds, with their counters) are polled until
the account's first listing answers.

:func:`discovery_of` is the one place the settings are read.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from ..appkey import AppKey
from ..config.plain import Settings
from ..scaleengine import ApiError
from ..store import DiscoveryState
from .base import PollerBase, log

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AccountConfig, AppConfig, Config, DiscoveryConfig

APP_LIST_INTERVAL = 3600.0  # seconds between two app.list checks while discovery is off
EMPTY_OUTCOME = "empty"  # a listing that names no app at all: kept as a failure


DUE_SLACK = 1.0  # seconds: a listing this close to its account's interval is due


def discovery_of(account: AccountConfig) -> DiscoveryConfig:
    """An account's discovery settings (the one place they are read)."""
    return account.discovery


def discovering(config: Config) -> bool:
    """Whether any account has discovery on."""
    return any(discovery_of(a).enabled for a in config.accounts)


def account_interval(account: AccountConfig) -> float:
    """Seconds between two listings of one account: discovery.interval when on, else hourly."""
    settings = discovery_of(account)
    return settings.interval if settings.enabled else APP_LIST_INTERVAL


def listing_interval(config: Config) -> float:
    """Seconds between two runs of the listing job: the shortest account interval (each
    account is listed when its own interval has passed)."""
    return min((account_interval(a) for a in config.accounts), default=APP_LIST_INTERVAL)


def pool_size(config: Config, apps: int) -> int:
    """Poll threads: poll.concurrency, or fewer for fewer apps when the app set is fixed."""
    if discovering(config):
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


def app_configs(
    config: Config, discovered: Mapping[str, Iterable[str]]
) -> list[tuple[AppKey, AccountConfig, AppConfig]]:
    """The apps to poll with their keys and accounts: the configured ones, then each
    account's discovered ones (no budgets, all urls)."""
    out = list(config.apps())
    for account in config.accounts:
        for name in discovered.get(account.name, ()):
            out.append((AppKey(account.name, name), account, discovered_app(name)))
    return out


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


@dataclass
class AccountListing:
    """What discovery remembers of one account's listings."""

    listing: tuple[str, ...] | None = None  # the last good listing's names
    discovered: tuple[str, ...] = ()  # the discovered apps polled
    settled: bool = False  # a first listing ended (well or not)
    fail_counts: dict[str, int] = field(default_factory=dict)
    warned: tuple[int, int] = (0, 0)  # (left_out, unusable) last warned about
    listed_at: float | None = None  # time.monotonic() of the last listing


class Discovering(PollerBase):
    _listings: dict[str, AccountListing]
    _apps_lock: threading.RLock

    def _init_discovery(self, loaded: Collection[AppKey]) -> None:
        """Before the apps are built: the apps the state file holds beyond the configured
        ones are each account's last discovered list (filtered by today's settings)."""
        self._apps_lock = threading.RLock()
        self._listings = {}
        for account in self.config.accounts:
            listing = self._listings[account.name] = AccountListing()
            settings = discovery_of(account)
            if not settings.enabled:
                continue
            configured = {a.name for a in account.apps}
            names = [k.app for k in loaded if k.account == account.name]
            listing.discovered = select(names, configured, settings).apps
            # a restarted worker goes on from the served failure counts
            state = self.store.discovery.get(account.name) or DiscoveryState()
            self.store.set_discovery(
                account.name, dataclasses.replace(state, apps=frozenset(listing.discovered))
            )

    @property
    def discovering(self) -> bool:
        """Whether discovery is on for any account (the apps app.list names are polled)."""
        return discovering(self.config)

    def _app_configs(self) -> list[tuple[AppKey, Any, Any]]:
        found = {name: listing.discovered for name, listing in self._listings.items()}
        return app_configs(self.config, found)

    @property
    def _discovery_settled(self) -> bool:
        """Ready needs each discovering account's first listing to have ended."""
        return all(
            self._listing_of(a.name).settled
            for a in self.config.accounts
            if discovery_of(a).enabled
        )

    def _listing_of(self, account: str) -> AccountListing:
        listing = self._listings.get(account)
        if listing is None:
            listing = self._listings[account] = AccountListing()
        return listing

    def _listing_due(self, account: AccountConfig) -> bool:
        """Whether the account's interval has passed since its last listing."""
        listed_at = self._listing_of(account.name).listed_at
        if listed_at is None:
            return True
        return time.monotonic() - listed_at >= account_interval(account) - DUE_SLACK

    def _rediscover(self) -> None:
        """A reload: each account's last good listing judged by its new settings (the
        listing that follows the reload at once judges a fresh one); accounts gone or with
        discovery off drop their discovered apps."""
        accounts = {a.name: a for a in self.config.accounts}
        for name in list(self._listings):
            if name not in accounts:
                del self._listings[name]
                self.store.set_discovery(name, None)
        for account in accounts.values():
            listing = self._listing_of(account.name)
            listing.listed_at = None  # listed again at once
            settings = discovery_of(account)
            if not settings.enabled:
                listing.discovered = ()
                self.store.set_discovery(account.name, None)
                continue
            configured = {a.name for a in account.apps}
            names = listing.listing if listing.listing is not None else listing.discovered
            selection = select(names, configured, settings)
            listing.discovered = selection.apps
            state = self.store.discovery.get(account.name) or DiscoveryState()
            left_out = selection.left_out if listing.listing is not None else state.left_out
            self.store.set_discovery(
                account.name,
                DiscoveryState(
                    frozenset(selection.apps), left_out, state.last_success, state.failures
                ),
            )

    def _take_listing(self, account: AccountConfig, names: list[str]) -> bool:
        """A good app.list answer of one account: its discovered apps added and removed
        (nothing while its discovery is off). False when discovery does not take it (it
        names no app at all)."""
        settings = discovery_of(account)
        if not settings.enabled:
            return True
        if not names:
            self._listing_failed(account, ApiError("app.list named no app", EMPTY_OUTCOME, False))
            return False
        with self._apps_lock:
            listing = self._listing_of(account.name)
            listing.settled = True
            listing.listing = tuple(names)
            if listing.fail_counts:
                log.info(
                    "app.list answers again: discovery goes on",
                    extra={"account": account.name, "apps": len(names)},
                )
                listing.fail_counts = {}
            configured = {a.name for a in account.apps}
            selection = select(names, configured, settings)
            self._warn_selection(account.name, selection, settings)
            if selection.apps != listing.discovered:
                self._apply_discovered(account.name, selection.apps)
            state = self.store.discovery.get(account.name) or DiscoveryState()
            self.store.set_discovery(
                account.name,
                DiscoveryState(
                    frozenset(selection.apps), selection.left_out, self.clock(), state.failures
                ),
            )
        return True

    def _apply_discovered(self, account: str, discovered: tuple[str, ...]) -> None:
        """The account's discovered apps become ``discovered``: added ones polled at once,
        gone ones stopped, their series and state entries dropped."""
        self._listing_of(account).discovered = discovered
        added, removed = self._swap_apps()
        if self._scheduler is not None and self._scheduler.running:
            now = datetime.now(UTC)
            for key in sorted(added):
                self._add_job(key, now)
        self.save_state()
        log.info(
            "discovery: app set changed",
            extra={
                "account": account,
                "apps": sum(1 for key in self._apps if key.account == account),
                "added": _names({k.app for k in added}),
                "removed": _names({k.app for k in removed}),
            },
        )

    def _warn_selection(
        self, account: str, selection: Selection, settings: DiscoveryConfig
    ) -> None:
        """One warning when apps start being left out past max_apps (or their number
        changes), and one when the listing names apps no config could name."""
        listing = self._listing_of(account)
        left_out, unusable = listing.warned
        if selection.left_out and selection.left_out != left_out:
            log.warning(
                f"discovery: app.list names more apps than discovery.max_apps; the first"
                f" {settings.max_apps} by name are polled, {selection.left_out} left out",
                extra={
                    "account": account,
                    "max_apps": settings.max_apps,
                    "left_out": selection.left_out,
                },
            )
        if selection.unusable and selection.unusable != unusable:
            log.warning(
                "discovery: app.list names apps that cannot be polled (empty names, spaces"
                " around them or control characters); they are left out",
                extra={"account": account, "count": selection.unusable},
            )
        listing.warned = (selection.left_out, selection.unusable)

    def _listing_failed(self, account: AccountConfig, err: ApiError) -> None:
        """A failed listing keeps the account's last good list; counted, logged as repeated
        events are (1st, 10th, 100th, every 1000th of each kind)."""
        listing = self._listing_of(account.name)
        listing.settled = True
        self.store.count_discovery_failure(account.name, err.outcome)
        n = listing.fail_counts[err.outcome] = listing.fail_counts.get(err.outcome, 0) + 1
        if should_log(n):
            kept = listing.listing is not None or listing.discovered
            log.warning(
                "app.list failed: discovery keeps the last good list of apps"
                if kept
                else "app.list failed: discovery has no list of apps yet",
                extra={
                    "account": account.name,
                    "outcome": err.outcome,
                    "err": err.message,
                    "count": n,
                },
            )
