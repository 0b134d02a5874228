"""The attributes the parts of :class:`~exporter.poller.Poller` share (set in its __init__)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from zoneinfo import ZoneInfo

from apscheduler.schedulers.background import BackgroundScheduler

from ..appkey import AppKey
from ..config import Config
from ..scaleengine import ScaleEngineClient
from ..state import StateFile
from ..store import Store
from .apps import AppState

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

    def check_app_list(self) -> bool:  # AppListing
        raise NotImplementedError
