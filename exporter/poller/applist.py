"""app.list: does the account list each configured app? A typo in an app's name otherwise
polls as a healthy zero (issue 17). Checked at start, after each reload and every hour, on
the poll worker; the verdict goes to the store (scaleengine_app_listed, the landing page)."""

from __future__ import annotations

import difflib
import threading
import time

from ..scaleengine import ApiError, client_for
from .base import PollerBase, log
from .discovery import discovery_of


def verdicts(configured: list[str], listed: list[str]) -> dict[str, str | None]:
    """Per configured app: None when listed, else the closest listed name ("" when none)."""
    names = set(listed)
    out: dict[str, str | None] = {}
    for app in configured:
        if app in names:
            out[app] = None
        else:
            close = difflib.get_close_matches(app, listed, n=1)
            out[app] = close[0] if close else ""
    return out


class AppListing(PollerBase):
    _app_list_lock: threading.Lock
    _warned_unlisted: dict[str, str]

    def check_app_list(self) -> bool:
        """Ask app.list once and publish the verdict; True when it answered. A failure logs
        one warning and leaves the last verdict (or none) as it was; polling goes on."""
        with self._app_list_lock:
            config = self.config
            try:
                with client_for(config, clock=self.clock) as client:
                    entries = client.list_apps(time.monotonic() + config.poll.timeout)
            except ApiError as err:
                if discovery_of(config).enabled:  # counted; logged as repeated events are
                    self._listing_failed(err)
                    return False
                log.warning(
                    "app.list failed: cannot check the configured app names",
                    extra={"outcome": err.outcome, "err": err.message},
                )
                return False
            configured = [a.name for a in config.apps]
            names = [e["name"] for e in entries]
            found = verdicts(configured, names)
            self._warn_unlisted(found)
            self.store.set_listed(found)
            return self._take_listing(names)

    def _warn_unlisted(self, found: dict[str, str | None]) -> None:
        """One warning per unlisted app (again only when its suggestion changes)."""
        for app, close in found.items():
            if close is None:
                self._warned_unlisted.pop(app, None)
                continue
            if self._warned_unlisted.get(app) == close:
                continue
            self._warned_unlisted[app] = close
            hint = f"; did you mean {close}?" if close else ""
            log.warning(
                f"app {app} is not in the account's app list (app.list): its usage will read"
                f" as zero; check its name in the config{hint}",
                extra={"app": app},
            )
