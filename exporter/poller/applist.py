"""app.list: does the account list each configured app? A typo in an app's name otherwise
polls as a healthy zero (issue 17). Checked at start, after each reload and every hour, on
the poll worker; the verdict goes to the store (scaleengine_app_listed, the landing page)."""

from __future__ import annotations

import difflib
import threading
import time
from typing import TYPE_CHECKING

from ..appkey import AppKey
from ..scaleengine import ApiError, client_for
from .base import PollerBase, log
from .discovery import discovery_of

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import AccountConfig, Config


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

    def check_app_list(self, force: bool = True) -> bool:
        """Ask each account's app.list (every account, or with ``force`` False only those
        whose interval has passed: the scheduled job), publish the verdicts and hand the
        names to discovery; True when every account asked answered. A failure logs one
        warning (discovery: counts it) and leaves that account's last verdict and discovered
        apps as they were; the other accounts and polling go on."""
        with self._app_list_lock:
            config = self.config
            ok = True
            for account in config.accounts:
                if not force and not self._listing_due(account):
                    continue
                ok = self._check_account(config, account) and ok
            return ok

    def _check_account(self, config: Config, account: AccountConfig) -> bool:
        names = self._list_account(config, account)
        if names is None:
            return False
        found = verdicts([a.name for a in account.apps], names)
        keyed = {AppKey(account.name, app): close for app, close in found.items()}
        self._warn_unlisted(keyed)
        # each account's verdict as it comes: a slow account does not hold it back
        self.store.set_listed({**self.store.view().listed, **keyed})
        return self._take_listing(account, names)

    def _list_account(self, config: Config, account: AccountConfig) -> list[str] | None:
        """The app names one account's app.list gives, or None when it failed."""
        self._listing_of(account.name).listed_at = time.monotonic()
        try:
            with client_for(config, account, clock=self.clock) as client:
                entries = client.list_apps(time.monotonic() + config.poll.timeout)
        except ApiError as err:
            if discovery_of(account).enabled:  # counted; logged as repeated events are
                self._listing_failed(account, err)
                return None
            log.warning(
                "app.list failed: cannot check the configured app names",
                extra={"account": account.name, "outcome": err.outcome, "err": err.message},
            )
            return None
        return [e["name"] for e in entries]

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
