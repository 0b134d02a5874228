"""Configuration errors: :class:`ConfigError` and pydantic's errors turned into one line.

Every message names the offending field with a dotted path (``apps[2].name``), never a value
that could be a secret.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is loaded by the validating process only, never for ConfigError
    from pydantic import ValidationError

__all__ = [
    "ConfigError",
    "format_validation_error",
    "problems_error",
    "show",
    "validation_problems",
]


class ConfigError(Exception):
    """A configuration problem, with a one-line human message naming the field.

    ``field`` is the dotted path of the (first) offending field when there is one;
    ``problems`` every problem found, one line each (``path: reason``), for
    ``--check-config``, which prints them all (the message shows the first five).
    """

    def __init__(
        self, message: str, field: str | None = None, problems: tuple[str, ...] = ()
    ) -> None:
        super().__init__(message)
        self.field = field
        self.problems = problems or (message,)


def show(value: object, limit: int = 60) -> str:
    """repr() of a user value, shortened so messages stay one line."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _error_text(
    err: Mapping[str, Any], rename: Callable[[str], str] | None = None
) -> tuple[str, str]:
    """(path, reason) for one pydantic error dict."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    path = _loc_path(loc)
    if msg.startswith("Value error, @") and ": " in msg:  # a model-level validator's field
        sub, rest = msg[len("Value error, @") :].split(": ", 1)
        path = f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}" if path else sub
        msg = rest
    if rename is not None:
        path = rename(path)
    if kind == "extra_forbidden":
        return path, f"unknown field {path!r}"
    if kind == "missing":
        return path, "required field missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, "must be a mapping"
    if kind in ("list_type", "tuple_type"):  # accounts: is a tuple in the model
        return path, "must be a list"
    if kind == "int_parsing":
        return path, "expected a whole number, not text"
    if kind == "int_from_float":
        return path, "expected a whole number, not a fraction"
    if kind in ("int_type", "float_type", "float_parsing"):
        return path, "expected a number"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Input should be "):  # pydantic's bounds and choices, in our voice
        msg = "must be " + msg[len("Input should be ") :]
    return path, msg


def validation_problems(
    exc: ValidationError, rename: Callable[[str], str] | None = None
) -> list[tuple[str, str]]:
    """Every pydantic error as (path, "path: reason" or "unknown field ..."); ``rename``
    maps a path of the validated data to the one the user wrote."""
    out: list[tuple[str, str]] = []
    for err in exc.errors(include_input=False, include_url=False):
        path, reason = _error_text(err, rename)
        if reason.startswith("unknown field"):
            out.append((path, reason))
        else:
            out.append((path, f"{path}: {reason}" if path else reason))
    return out


def problems_error(source: str, problems: list[tuple[str, str]]) -> ConfigError:
    """One ConfigError for all ``problems`` ((path, text) pairs, in order, duplicates
    dropped): the message joins the first five on one line."""
    texts = list(dict.fromkeys(text for _, text in problems))
    text = "; ".join(texts[:5])
    if len(texts) > 5:
        text += f"; and {len(texts) - 5} more"
    first = problems[0][0] if problems else None
    return ConfigError(f"{source}: {text}", field=first or None, problems=tuple(texts))


def format_validation_error(
    exc: ValidationError, source: str, rename: Callable[[str], str] | None = None
) -> ConfigError:
    """Turn a pydantic ValidationError into a one-line ConfigError (with every problem)."""
    return problems_error(source, validation_problems(exc, rename))
