"""The attributes the parts of :class:`~exporter.poller.Poller` share (set in its __init__)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler

from ..appkey import AppKey
from ..scaleengine import ApiError, ScaleEngineClient
from ..state import StateFile
from ..store import Store
from .apps import AppState

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AccountConfig, Config

# one logger for the package, named as before it was split
log = logging.getLogger("exporter.poller")

Clock = Callable[[], float]
ClientFactory = Callable[[AppKey], ScaleEngineClient]


class PollerBase:
    """What the mixins of the Poller read; each calls the others' methods through ``self``
    (``poll_app``, ``_status``, ``save_state``, ``start``, ``_start_watch``, ``_reschedule``,
    ``_unschedule``, ``_default_client``, ``check_app_list``)."""

    config: Config
    store: Store
    clock: Clock
    tz: ZoneInfo
    state_file: StateFile | None
    _apps: dict[AppKey, AppState]
    _scheduler: BackgroundScheduler | None
    _save_lock: threading.Lock
    _flight_lock: threading.Lock
    _in_flight: int
    _watch_stop: threading.Event
    _watcher: threading.Thread | None
    _apps_lock: threading.RLock

    def check_app_list(self, force: bool = True) -> bool:  # AppListing
        raise NotImplementedError

    def _take_listing(self, account: AccountConfig, names: list[str]) -> bool:  # Discovering
        raise NotImplementedError

    def _listing_failed(self, account: AccountConfig, err: ApiError) -> None:  # Discovering
        raise NotImplementedError

    def _listing_due(self, account: AccountConfig) -> bool:  # Discovering
        raise NotImplementedError

    def _listing_of(self, account: str) -> Any:  # Discovering: its AccountListing
        raise NotImplementedError

    def _app_configs(self) -> list[tuple[AppKey, Any, Any]]:  # Discovering: configured+found
        raise NotImplementedError

    def _swap_apps(  # Reconfiguring
        self, new_client: Callable[[AccountConfig], bool] = lambda account: False
    ) -> tuple[set[AppKey], set[AppKey]]:
        raise NotImplementedError

    def _add_job(self, name: AppKey, first_run: datetime) -> None:  # Scheduling
        raise NotImplementedError

    def save_state(self) -> None:  # CounterKeeping
        raise NotImplementedError
