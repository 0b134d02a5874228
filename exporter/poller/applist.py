"""app.list: does the account list each configured app? A typo in an app's name otherwise
polls as a healthy zero (issue 17). Checked at start, after each reload and every hour, on
the poll worker; the verdict goes to the store (scaleengine_app_listed, the landing page)."""

from __future__ import annotations

import difflib
import threading
import time

from ..appkey import AppKey
from ..config import AccountConfig, Config
from ..scaleengine import ApiError, client_for
from .base import PollerBase, log

APP_LIST_INTERVAL = 3600.0  # seconds between two app.list checks


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
    _warned_unlisted: dict[AppKey, str]

    def check_app_list(self) -> bool:
        """Ask each account's app.list once and publish the verdicts; True when every
        account answered. A failure logs one warning and leaves that account's last verdict
        (or none) as it was; the other accounts and polling go on."""
        with self._app_list_lock:
            config = self.config
            ok = True
            for account in config.accounts:
                found = self._list_account(config, account)
                if found is None:
                    ok = False
                    continue
                self._warn_unlisted(found)
                # each account's verdict as it comes: a slow account does not hold it back
                self.store.set_listed({**self.store.view().listed, **found})
            return ok

    def _list_account(
        self, config: Config, account: AccountConfig
    ) -> dict[AppKey, str | None] | None:
        """The verdict of each configured app of one account, or None when app.list failed."""
        try:
            with client_for(config, account, clock=self.clock) as client:
                entries = client.list_apps(time.monotonic() + config.poll.timeout)
        except ApiError as err:
            log.warning(
                "app.list failed: cannot check the configured app names",
                extra={"account": account.name, "outcome": err.outcome, "err": err.message},
            )
            return None
        found = verdicts([a.name for a in account.apps], [e["name"] for e in entries])
        return {AppKey(account.name, app): close for app, close in found.items()}

    def _warn_unlisted(self, found: dict[AppKey, str | None]) -> None:
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
                f"app {app.app} is not in the account's app list (app.list, account"
                f" {app.account}): its usage will read as zero; check its name in the"
                f" config{hint}",
                extra=app._asdict(),
            )
