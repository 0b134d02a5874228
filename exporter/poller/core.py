"""The :class:`Poller` itself: its set-up, and what concerns every app at once."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor as FuturesPool
from typing import TYPE_CHECKING

from ..appkey import AppKey
from ..scaleengine import ScaleEngineClient, client_for, warn_if_cleartext
from ..state import AppCounters, StateFile
from ..store import Store
from .applist import AppListing
from .apps import AppState
from .base import ClientFactory, Clock
from .counters import CounterKeeping
from .discovery import Discovering, pool_size
from .flow import PollFlow
from .overdue import OverdueWatch
from .reload import Reconfiguring
from .schedule import Scheduling

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import Config


class Poller(
    PollFlow, CounterKeeping, Scheduling, OverdueWatch, Reconfiguring, AppListing, Discovering
):
    """Polls every configured app on its schedule and publishes each run to the store."""

    def __init__(
        self,
        config: Config,
        store: Store,
        clock: Clock = time.time,
        client_factory: ClientFactory | None = None,
        state_file: StateFile | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.clock = clock
        self.tz = config.poll.tz
        self.state_file = state_file
        self._scheduler = None
        self._save_lock = threading.Lock()
        self._flight_lock = threading.Lock()
        self._in_flight = 0
        self._watch_stop = threading.Event()
        self._watcher = None
        self._app_list_lock = threading.Lock()
        self._warned_unlisted: dict[AppKey, str] = {}
        if client_factory is None:
            for account in config.accounts:
                warn_if_cleartext(account.api_url)
        factory = client_factory or self._default_client
        counters = self._load_counters()
        self._init_discovery(list(counters))  # discovery on: the apps discovered before
        self._apps: dict[AppKey, AppState] = {
            key: AppState(
                key=key,
                config=app,
                client=factory(key),
                counters=counters.get(key) or AppCounters(),
                lock=threading.Lock(),
            )
            for key, _, app in self._app_configs()
        }
        # fresh counters are exported from here on; loaded ones once confirmed by a poll
        for name, st in self._apps.items():
            self.store.publish(name, None, self._status(st, up=False, duration=None))
        if state_file is not None:
            self.store.record_state_save(None)

    def _default_client(self, app: AppKey) -> ScaleEngineClient:
        """The app's client, with its account's API settings and credentials."""
        account = self.config.account(app.account)
        assert account is not None
        return client_for(
            self.config,
            account,
            clock=self.clock,
            on_request=lambda outcome: self.store.count_request(app, outcome),
        )

    def poll_all(self) -> bool:
        """Poll every app once, concurrently (bounded by poll.concurrency); True if all ok."""
        workers = pool_size(self.config, len(self._apps))
        with FuturesPool(max_workers=workers, thread_name_prefix="poll") as pool:
            results = list(pool.map(self.poll_app, list(self._apps)))
        return all(results)

    @property
    def ready(self) -> bool:
        """True once every app has had a poll attempt finish (and, while discovery is on, a
        first listing has ended)."""
        return self._discovery_settled and all(st.polled for st in self._apps.values())

    @property
    def in_flight(self) -> int:
        """Polls running right now (a renderer waits for 0 to render a cycle once)."""
        return self._in_flight

    def shutdown(self) -> None:
        """Stop the scheduler without waiting for running polls, then save the state."""
        self._stop_scheduling()
        self.save_state()
        for st in self._apps.values():
            st.client.close()
