"""The overdue watch: a thread of its own, outside the poll pool, that marks an app down
(outcome ``overdue``) when its polls stop ending on time."""

from __future__ import annotations

import dataclasses
import threading
import time

from ..appkey import AppKey
from ..store import AppStatus
from .apps import AppState
from .base import PollerBase, log

OVERDUE_OUTCOME = "overdue"  # poll error outcome of an app whose polls stopped ending on time
WATCH_EVERY = 1.0  # seconds between two looks for overdue apps


class OverdueWatch(PollerBase):
    def _start_watch(self) -> None:
        if self._watcher is None:
            self._watcher = threading.Thread(target=self._watch, name="overdue", daemon=True)
            self._watcher.start()

    def _watch(self) -> None:
        """Apps whose polls stopped ending on time (every pool thread held, a poll stuck where
        no deadline reaches) must not look fresh: a thread of its own, outside the pool."""
        while not self._watch_stop.wait(WATCH_EVERY):
            for name, st in list(self._apps.items()):
                try:
                    self._check_overdue(name, st)
                except Exception:  # noqa: BLE001 - a bug here must not end the watch
                    log.exception("checking for overdue polls failed")

    def _check_overdue(self, name: AppKey, st: AppState) -> None:
        """No poll of the app has ended for 2 x poll.interval + poll.timeout: it is down
        (``overdue``, counted once), and its usage goes once it is older than stale_after."""
        poll = self.config.poll
        limit = 2 * poll.interval + poll.timeout
        with st.publish_lock:
            late = time.monotonic() - st.last_end
            if late <= limit:
                return
            view = self.store.view()
            usage = view.usage.get(name)
            stale = usage is not None and (
                st.last_success is None or self.clock() - st.last_success > poll.stale_after
            )
            if st.overdue and not stale:
                return
            if not st.overdue:
                st.overdue = True
                self.store.count_poll_error(name, OVERDUE_OUTCOME)
                log.warning(
                    "poll overdue: no poll of the app ended in time",
                    extra={**name._asdict(), "seconds": round(late), "limit": round(limit)},
                )
            status = dataclasses.replace(
                view.status.get(name) or AppStatus(key=name),
                up=False,
                last_error=f"{OVERDUE_OUTCOME}: no poll ended for {late:.0f}s"
                f" (2 x poll.interval + poll.timeout = {limit:g}s)",
            )
            self.store.publish(name, None if stale else usage, status)
