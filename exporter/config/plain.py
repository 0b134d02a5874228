"""A validated config as plain, pydantic-free objects: what the daemon's long-lived processes
run on.

pydantic validates the config (and stays the one schema) in short-lived processes only: the
command line before it becomes the serving process, and the child each reload runs. They hand
on :func:`to_plain`'s copy, which the serving process and the poll worker read exactly as
they would the model (``config.poll.interval``, ``config.poll.tz``, ``config.apps[0].name``,
``config.secret_values()``, ``model_copy(update=...)``) without loading pydantic (about 20 MB
of each process's memory).

The conversion is generic: every model field, recursively (lists, tuples and dicts of models
included), plus the value of every property the model's classes define (e.g. ``poll.tz``);
a new field or section needs nothing here. Secrets become :class:`Secret`, whose repr never
shows the value. This module imports no pydantic: models are recognised by their
``model_fields``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from typing import Any

from .views import VIEWS

__all__ = ["Secret", "Settings", "to_plain"]


class Secret:
    """A secret string (pydantic's ``SecretStr`` made plain): the value only through
    :meth:`get_secret_value`; repr and str show stars."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        object.__setattr__(self, "_value", value)

    def get_secret_value(self) -> str:
        return self._value

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError("Secret is immutable")

    def __repr__(self) -> str:
        return "Secret('**********')"

    def __str__(self) -> str:
        return "**********"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> tuple[Any, ...]:
        return (Secret, (self._value,))


class Settings:
    """One validated model (the config or a section) as plain attributes, frozen.

    ``kind`` is the model's class name; ``fields`` its fields in order; ``derived`` the values
    of its properties, computed at conversion. A copy with changed fields
    (:meth:`model_copy`) drops the derived values, which only the model could recompute:
    reading one then raises AttributeError rather than answer from the old fields. Derived
    values travel pickled on their own and are unpickled when one is first read: a process
    that never reads ``poll.tz`` (the serving process) does not load zoneinfo.
    """

    __slots__ = ("_kind", "_fields", "_derived")

    def __init__(self, kind: str, fields: dict[str, Any], derived: dict[str, Any] | bytes) -> None:
        object.__setattr__(self, "_kind", kind)
        object.__setattr__(self, "_fields", fields)
        object.__setattr__(self, "_derived", derived)

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in Settings.__slots__:
            raise AttributeError(name)
        if name in self._fields:
            return self._fields[name]
        derived = self._derived
        if isinstance(derived, bytes):  # as it came: unpickled on first use
            derived = pickle.loads(derived)  # noqa: S301 - our own settings
            object.__setattr__(self, "_derived", derived)
        if name in derived:
            return derived[name]
        view = VIEWS.get(self._kind)  # what the model answers beyond its fields (views.py)
        if view is not None and callable(getattr(view, name, None)):
            return getattr(view, name).__get__(self)
        raise AttributeError(f"{self._kind} settings have no attribute {name!r}")

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{self._kind} settings are frozen")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Settings):
            return NotImplemented
        return (self._kind, self._fields) == (other._kind, other._fields)

    __hash__ = None  # type: ignore[assignment]  # fields may hold lists

    def __repr__(self) -> str:
        inner = ", ".join(f"{k}={v!r}" for k, v in self._fields.items())
        return f"{self._kind}({inner})"

    def __reduce__(self) -> tuple[Any, ...]:
        derived = self._derived
        if not isinstance(derived, bytes):
            derived = pickle.dumps(derived, protocol=pickle.HIGHEST_PROTOCOL)
        return (Settings, (self._kind, self._fields, derived))

    def model_copy(self, update: dict[str, Any] | None = None) -> Settings:
        """A copy with ``update``'s fields replaced (pydantic's ``model_copy``); unknown
        names are refused, as the frozen model would."""
        update = update or {}
        unknown = set(update) - set(self._fields)
        if unknown:
            raise ValueError(f"{self._kind} has no field {sorted(unknown)[0]!r}")
        changed = any(self._fields[k] != v for k, v in update.items())
        return Settings(self._kind, {**self._fields, **update}, {} if changed else self._derived)

    def secret_values(self) -> list[str]:
        """Every secret's value, in field order (the API key and secret), for the log
        redaction filter: :meth:`Config.secret_values` for any number of accounts."""
        return [s.get_secret_value() for s in _secrets(self)]


def _secrets(value: Any) -> Iterator[Secret]:
    if isinstance(value, Secret):
        yield value
    elif isinstance(value, Settings):
        for item in value._fields.values():
            yield from _secrets(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _secrets(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _secrets(item)


def _property_names(cls: type) -> list[str]:
    """The properties the model's own classes define (not pydantic's BaseModel's)."""
    names: list[str] = []
    for klass in cls.__mro__:
        if klass.__module__.startswith("pydantic") or klass is object:
            continue
        names += [n for n, v in vars(klass).items() if isinstance(v, property) and n not in names]
    return names


def to_plain(value: Any) -> Any:
    """``value`` with every pydantic model in it as :class:`Settings` and every secret
    (``get_secret_value``) as :class:`Secret`; other values as they are (lists and tuples
    copied, dicts too). Runs where pydantic is loaded; the result pickles without it."""
    if hasattr(type(value), "model_fields") and not isinstance(value, type):
        cls = type(value)
        fields = {name: to_plain(getattr(value, name)) for name in cls.model_fields}
        derived = {name: to_plain(getattr(value, name)) for name in _property_names(cls)}
        computed = getattr(cls, "model_computed_fields", {}) or {}
        derived.update({name: to_plain(getattr(value, name)) for name in computed})
        return Settings(cls.__name__, fields, derived)
    if hasattr(value, "get_secret_value") and not isinstance(value, Secret):
        return Secret(value.get_secret_value())
    if isinstance(value, list):
        return [to_plain(v) for v in value]
    if isinstance(value, tuple):
        return tuple(to_plain(v) for v in value)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    return value
