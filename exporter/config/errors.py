"""Configuration errors: :class:`ConfigError` and pydantic's errors turned into one line.

Every message names the offending field with a dotted path (``apps[2].name``), never a value
that could be a secret.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic is loaded by the validating process only, never for ConfigError
    from pydantic import ValidationError

__all__ = ["ConfigError", "format_validation_error", "show"]


class ConfigError(Exception):
    """A configuration problem, with a one-line human message naming the field.

    ``field`` is the dotted path of the (first) offending field when there is one.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


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


def _error_text(err: Mapping[str, Any]) -> tuple[str, str]:
    """(path, reason) for one pydantic error dict."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    path = _loc_path(loc)
    if kind == "extra_forbidden":
        return path, f"unknown field {path!r}"
    if kind == "missing":
        return path, "required field missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, "must be a mapping"
    if kind == "list_type":
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
    # A model-level validator names the field itself ("stale_after: ...").
    if msg.startswith("@") and ": " in msg:
        sub, msg = msg[1:].split(": ", 1)
        path = f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}" if path else sub
    return path, msg


def format_validation_error(exc: ValidationError, source: str) -> ConfigError:
    """Turn a pydantic ValidationError into a one-line ConfigError."""
    parts: list[str] = []
    first_path: str | None = None
    errors = exc.errors(include_input=False, include_url=False)
    for err in errors[:5]:
        path, reason = _error_text(err)
        if first_path is None:
            first_path = path
        if reason.startswith("unknown field"):
            parts.append(reason)
        else:
            parts.append(f"{path}: {reason}" if path else reason)
    text = "; ".join(parts)
    if len(errors) > 5:
        text += f"; and {len(errors) - 5} more"
    return ConfigError(f"{source}: {text}", field=first_path)
