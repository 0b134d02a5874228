"""The whole configuration: :class:`Config` and its accounts (:class:`AccountConfig`).

A file takes one of two forms. The single form (today's): ``scaleengine:`` (the API
settings, with an optional ``account:`` name), ``apps:`` and ``discovery:``. The accounts
form: ``accounts:``, a list of accounts, each with ``name``, the same API settings, its
``apps`` and its ``discovery``. Both load into one structure, ``Config.accounts`` (the single
form is one account named by ``scaleengine.account`` or, by default, its cdn_id): the rest of
the exporter reads only that. :func:`single_form_to_accounts` is the one conversion.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import BaseModel, BeforeValidator, field_validator, model_validator

from .errors import show as _show
from .schema import (
    _MODEL_CONFIG,
    AppConfig,
    DiscoveryConfig,
    LimitsConfig,
    PollConfig,
    ScaleEngineConfig,
    StateConfig,
    Str,
    WebServerConfig,
    apps_before,
)
from .views import AccountViews, ConfigViews

__all__ = [
    "MAX_ACCOUNT_NAME",
    "NOT_IN_SCALEENGINE",
    "SINGLE_FORM_KEYS",
    "AccountConfig",
    "Config",
    "single_form_to_accounts",
]

MAX_ACCOUNT_NAME = 64  # characters of an account's name (its label value)
SINGLE_FORM_KEYS = ("scaleengine", "apps", "discovery")  # the keys accounts: replaces
# keys of scaleengine: that an account has but the single form takes at the top level
NOT_IN_SCALEENGINE = ("name", "apps", "discovery")


def first_repeat(names: list[str]) -> int | None:
    """The index of the first name given a second time, or None."""
    seen: set[str] = set()
    for index, name in enumerate(names):
        if name in seen:
            return index
        seen.add(name)
    return None


def check_account_name(value: str) -> str:
    """An account's name: non-empty, printable, no surrounding spaces, at most 64 chars."""
    if not value.strip():
        raise ValueError("account name must not be empty")
    if value != value.strip() or any(not c.isprintable() for c in value):
        raise ValueError(f"account name {_show(value)} has surrounding spaces or control chars")
    if len(value) > MAX_ACCOUNT_NAME:
        raise ValueError(f"account name is {len(value)} characters, at most 64 allowed")
    return value


class AccountConfig(AccountViews, ScaleEngineConfig):
    """One ScaleEngine account: its name (the ``account`` label), its API settings, its apps
    and its discovery."""

    name: Str
    apps: Annotated[list[AppConfig], BeforeValidator(apps_before)] = []
    discovery: DiscoveryConfig = DiscoveryConfig()

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        return check_account_name(value)

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, value: list[AppConfig]) -> list[AppConfig]:
        index = first_repeat([app.name for app in value])
        if index is not None:
            raise ValueError(f"@[{index}].name: app {_show(value[index].name)} is listed twice")
        return value

    @model_validator(mode="after")
    def _some_apps(self) -> AccountConfig:
        if not self.apps and not self.discovery.enabled:
            raise ValueError(
                "@apps: must list at least one app (or set discovery.enabled beside it)"
            )
        return self


def _default_name(section: dict[Any, Any]) -> object:
    """The single form's account name: scaleengine.account, else the cdn_id as text."""
    if "account" in section:
        return section["account"]
    cdn_id = section.get("cdn_id")
    if isinstance(cdn_id, int) and not isinstance(cdn_id, bool):
        return str(cdn_id)
    if isinstance(cdn_id, str) and cdn_id.strip().isdigit():
        return cdn_id.strip()
    return "default"  # the cdn_id is wrong anyway and reported as such


def single_form_to_accounts(data: dict[Any, Any]) -> dict[Any, Any]:
    """The single form's ``scaleengine``/``apps``/``discovery`` as one entry of
    ``accounts`` (the data unchanged when it has ``accounts`` or no ``scaleengine``).

    The account's fields keep their order; keys of ``scaleengine`` that only an account
    entry has (``name``, ``apps``, ``discovery``) are refused as unknown fields there.
    """
    if "accounts" in data or "scaleengine" not in data:
        return data
    out = {k: v for k, v in data.items() if k not in SINGLE_FORM_KEYS}
    section = data["scaleengine"]
    if not isinstance(section, dict):
        out["accounts"] = [section]  # reported as "must be a mapping"
        return out
    for key in NOT_IN_SCALEENGINE:
        if key in section:
            raise ValueError(f"@scaleengine.{key}: unknown field 'scaleengine.{key}'")
    account = {"name": _default_name(section)}
    account.update((k, v) for k, v in section.items() if k != "account")
    for key in ("apps", "discovery"):
        if key in data:
            account[key] = data[key]
    out["accounts"] = [account]
    return out


class Config(ConfigViews, BaseModel):
    """The whole exporter configuration: the accounts (each with its apps) and what all of
    them share (poll, limits, web, state)."""

    model_config = _MODEL_CONFIG

    accounts: tuple[AccountConfig, ...]
    poll: PollConfig = PollConfig()
    limits: LimitsConfig = LimitsConfig()
    web: WebServerConfig = WebServerConfig()
    state: StateConfig = StateConfig()

    @model_validator(mode="before")
    @classmethod
    def _one_form(cls, data: object) -> object:
        if not isinstance(data, dict):
            return data
        given = [k for k in SINGLE_FORM_KEYS if k in data]
        if "accounts" in data and given:
            raise ValueError(f"@{given[0]}: {both_forms_message(given[0])}")
        return single_form_to_accounts(data)

    @field_validator("accounts")
    @classmethod
    def _unique_names(cls, value: tuple[AccountConfig, ...]) -> tuple[AccountConfig, ...]:
        if not value:
            raise ValueError("must list at least one account")
        index = first_repeat([account.name for account in value])
        if index is not None:
            raise ValueError(f"@[{index}].name: {duplicate_account_message(value[index].name)}")
        return value

    def secret_values(self) -> list[str]:
        """Every account's API key and secret, for a log redaction filter."""
        return [
            value.get_secret_value()
            for account in self.accounts
            for value in (account.api_key, account.api_secret)
        ]


def both_forms_message(key: str) -> str:
    """The error of a file giving ``accounts:`` and a single-form key."""
    return f"give either accounts: or {key}: (the single-account form), not both"


def duplicate_account_message(name: str) -> str:
    """The error of a second account with the same name."""
    return f"account {_show(name)} is named twice"
