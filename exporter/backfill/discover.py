"""Backfill with discovery: an account with ``discovery.enabled`` is read for the apps its
app.list names (filtered and capped as the daemon does), beside its configured ones."""

from __future__ import annotations

import time

from ..config import AccountConfig, AppConfig, Config
from ..poller.discovery import discovery_of, select
from ..scaleengine import ApiError, client_for


class DiscoveryError(Exception):
    """An account's app.list failed: backfill reads nothing rather than part of an account."""


def with_discovered(config: Config) -> Config:
    """``config`` with each discovering account's listed apps added (no budgets, all urls);
    raises DiscoveryError naming the account when its app.list fails."""
    if not any(discovery_of(a).enabled for a in config.accounts):
        return config
    return config.model_copy(
        update={"accounts": tuple(_account(config, a) for a in config.accounts)}
    )


def _account(config: Config, account: AccountConfig) -> AccountConfig:
    settings = discovery_of(account)
    if not settings.enabled:
        return account
    try:
        with client_for(config, account) as client:
            entries = client.list_apps(time.monotonic() + config.poll.timeout)
    except ApiError as err:
        raise DiscoveryError(
            f"cannot list the apps of account {account.name} (discovery): {err.message}"
        ) from None
    configured = {a.name for a in account.apps}
    found = select([e["name"] for e in entries], configured, settings).apps
    apps = [*account.apps, *(AppConfig(name=name) for name in found)]
    return account.model_copy(update={"apps": apps})
