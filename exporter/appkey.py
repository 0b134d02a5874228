""":class:`AppKey`, the key of everything kept per app: the account and the app's name.

An app name may appear in two accounts (two series, two counters, two state entries), so the
poller, the store, the metrics, the state file and backfill all key by (account, app). This
module imports nothing, so every stage may import it.
"""

from __future__ import annotations

from typing import NamedTuple

__all__ = ["AppKey"]


class AppKey(NamedTuple):
    """One app of one account: ``account`` is the account's name (its label value)."""

    account: str
    app: str

    def __str__(self) -> str:
        return f"{self.account}/{self.app}"
