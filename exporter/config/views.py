"""What the code asks of a config beyond its fields, written once for the pydantic model and
for its plain copy (:mod:`.plain`): the model classes inherit these, and a plain
:class:`~.plain.Settings` of the same kind answers them too. Reads attributes only; imports
no pydantic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..appkey import AppKey

__all__ = ["AccountViews", "ConfigViews", "VIEWS"]


class ConfigViews:
    """The whole config's apps with their keys, and an account by name."""

    def apps(self) -> Iterator[tuple[AppKey, Any, Any]]:
        """Every configured app of every account, in config order, with its key."""
        for account in self.accounts:  # type: ignore[attr-defined]
            for app in account.apps:
                yield AppKey(account.name, app.name), account, app

    def app_keys(self) -> list[AppKey]:
        """The (account, app) keys of every configured app, in config order."""
        return [key for key, _, _ in self.apps()]

    def account(self, name: str) -> Any:
        """The account named ``name``, or None."""
        return next((a for a in self.accounts if a.name == name), None)  # type: ignore[attr-defined]


class AccountViews:
    """One account's app keys."""

    def keys(self) -> list[AppKey]:
        """The (account, app) keys of the configured apps, in config order."""
        return [AppKey(self.name, a.name) for a in self.apps]  # type: ignore[attr-defined]


# a plain Settings answers its kind's views (by the model class's name)
VIEWS: dict[str, type] = {"Config": ConfigViews, "AccountConfig": AccountViews}
