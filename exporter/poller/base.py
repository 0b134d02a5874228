"""The attributes the parts of :class:`~exporter.poller.Poller` share (set in its __init__)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler

from ..scaleengine import ApiError, ScaleEngineClient
from ..state import StateFile
from ..store import Store
from .apps import AppState

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AppConfig, Config

# one logger for the package, named as before it was split
log = logging.getLogger("exporter.poller")

Clock = Callable[[], float]
ClientFactory = Callable[[str], ScaleEngineClient]


class PollerBase:
    """What the mixins of the Poller read; each calls the others' methods through ``self``
    (``poll_app``, ``_status``, ``save_state``, ``start``, ``_start_watch``, ``_reschedule``,
    ``_unschedule``, ``_default_client``, ``check_app_list``)."""

    config: Config
    store: Store
    clock: Clock
    tz: ZoneInfo
    state_file: StateFile | None
    _apps: dict[str, AppState]
    _scheduler: BackgroundScheduler | None
    _save_lock: threading.Lock
    _flight_lock: threading.Lock
    _in_flight: int
    _watch_stop: threading.Event
    _watcher: threading.Thread | None
    _apps_lock: threading.RLock

    def check_app_list(self) -> bool:  # AppListing
        raise NotImplementedError

    def _take_listing(self, names: list[str]) -> bool:  # Discovering
        raise NotImplementedError

    def _listing_failed(self, err: ApiError) -> None:  # Discovering
        raise NotImplementedError

    def _app_configs(self) -> list[AppConfig]:  # Discovering: configured and discovered
        raise NotImplementedError

    def _swap_apps(self, new_client: bool) -> tuple[set[str], set[str]]:  # Reconfiguring
        raise NotImplementedError

    def _add_job(self, name: str, first_run: datetime) -> None:  # Scheduling
        raise NotImplementedError

    def save_state(self) -> None:  # CounterKeeping
        raise NotImplementedError
