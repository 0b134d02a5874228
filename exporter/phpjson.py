"""Byte-for-byte PHP ``json_encode($value)`` (default flags) for Python values.

The ScaleEngine API signs the request as PHP's ``json_encode`` writes it, so the text we sign
and send must be exactly what PHP would produce:

* no spaces, keys in insertion order;
* ``/`` written ``\\/``;
* every non-ASCII character as a lowercase ``\\uXXXX`` escape (surrogate pairs beyond U+FFFF);
* ``\\b \\f \\n \\r \\t`` for those control characters, ``\\u00XX`` for the other C0 controls,
  DEL (0x7f) left as is;
* an array whose keys are exactly ``"0".."n-1"`` (including the empty one) is a PHP list and
  is written ``[...]``, so an empty dict is ``[]``;
* floats as PHP 7.1+ writes them with ``serialize_precision = -1`` (``1.0`` -> ``1``,
  ``1e25`` -> ``1.0e+25``).

Values PHP cannot encode raise ``ValueError``: strings that are not valid UTF-8 (lone
surrogates, surrogate-escaped bytes, undecodable ``bytes``), NaN/Inf, ints outside int64.

The work is done by ``json.dumps`` (C accelerated); its escapes match PHP's except for ``/``
and DEL, which are fixed afterwards. Verified against PHP 8.2 in tests/vectors/.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Any

__all__ = ["php_json_encode"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1

_dumps = json.JSONEncoder(
    ensure_ascii=True, separators=(",", ":"), allow_nan=False, check_circular=True
).encode

# Walks the escape sequences of json.dumps output left to right: "\\\\" pairs are consumed
# whole so that a literal backslash followed by "u007f" is never mistaken for DEL.
_DEL_ESCAPE = re.compile(r"\\(?:\\|u007f)")


def _del_fix(match: re.Match[str]) -> str:
    text = match.group()
    return "\x7f" if text == "\\u007f" else text


def _php_float(f: float) -> str:
    """A float as PHP json_encode writes it (serialize_precision = -1)."""
    if f != f or f in (float("inf"), float("-inf")):
        raise ValueError("Inf and NaN cannot be JSON encoded")
    if f == 0.0:
        return "-0" if str(f).startswith("-") else "0"
    sign, digits_t, exp = Decimal(repr(f)).as_tuple()
    digits = "".join(map(str, digits_t)).rstrip("0")
    assert isinstance(exp, int)
    exp += len("".join(map(str, digits_t))) - len(digits)
    decpt = len(digits) + exp  # position of the decimal point, as zend_dtoa reports it
    neg = "-" if sign else ""
    if decpt < -3 or decpt > 17:
        mant = digits[0] + "." + (digits[1:] or "0")
        e = decpt - 1
        return f"{neg}{mant}e{'+' if e >= 0 else '-'}{abs(e)}"
    if decpt <= 0:
        return f"{neg}0.{'0' * -decpt}{digits}"
    if len(digits) <= decpt:
        return neg + digits + "0" * (decpt - len(digits))
    return f"{neg}{digits[:decpt]}.{digits[decpt:]}"


def _check_str(s: str) -> None:
    if not s.isascii():
        try:
            s.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("Malformed UTF-8 characters, possibly incorrectly encoded") from None


def _is_php_list(d: dict) -> bool:
    for i, k in enumerate(d):
        if k != str(i):
            return False
    return True


class _Walk:
    """Checks a value for what json.dumps would get wrong; converts what it must."""

    __slots__ = ("floats", "strings")

    def __init__(self, strings: bool) -> None:
        self.floats = False
        self.strings = strings

    def value(self, v: Any) -> Any:
        t = type(v)
        if t is str:
            if self.strings:
                _check_str(v)
            return v
        if t is int:
            if not _INT64_MIN <= v <= _INT64_MAX:
                raise ValueError(f"integer out of the 64-bit range: {v}")
            return v
        if t is dict:
            return self.dict(v)
        if t is list or t is tuple:
            return self.list(v)
        if v is None or t is bool:
            return v
        if t is float:
            self.floats = True
            return v
        if isinstance(v, bytes):
            try:
                return self.value(v.decode("utf-8"))
            except UnicodeDecodeError:
                raise ValueError(
                    "Malformed UTF-8 characters, possibly incorrectly encoded"
                ) from None
        if isinstance(v, str):
            return self.value(str(v))
        if isinstance(v, bool):
            return bool(v)
        if isinstance(v, int):
            return self.value(int(v))
        if isinstance(v, float):
            return self.value(float(v))
        if isinstance(v, dict):
            return self.dict(dict(v))
        if isinstance(v, list | tuple):
            return self.list(list(v))
        raise TypeError(f"Type is not supported: {t.__name__}")

    def list(self, items: list | tuple) -> list | tuple:
        new: list | None = None
        for i, item in enumerate(items):
            out = self.value(item)
            if out is not item and new is None:
                new = list(items[:i])
            if new is not None:
                new.append(out)
        return items if new is None else new

    def dict(self, d: dict) -> dict | list:
        out: dict | None = None
        for i, (k, item) in enumerate(d.items()):
            k2 = k
            if type(k) is not str:
                if isinstance(k, bytes | bool) or k is None or not isinstance(k, str | int):
                    raise TypeError(f"keys must be str or int, not {type(k).__name__}")
                k2 = str(int(k)) if isinstance(k, int) else str(k)
            elif self.strings:
                _check_str(k)
            new = self.value(item)
            if out is None and (new is not item or k2 is not k):
                out = dict(list(d.items())[:i])
            if out is not None:
                out[k2] = new
        result = d if out is None else out
        if _is_php_list(result):
            return list(result.values())
        return result


def _slow_encode(v: Any) -> str:
    """Used only when floats are present: json.dumps cannot write PHP's float format."""
    if isinstance(v, float):
        return _php_float(v)
    if isinstance(v, dict):
        return "{" + ",".join(_slow_encode(k) + ":" + _slow_encode(x) for k, x in v.items()) + "}"
    if isinstance(v, list | tuple):
        return "[" + ",".join(_slow_encode(x) for x in v) + "]"
    return _dumps(v)


def php_json_encode(value: Any) -> str:
    """Return exactly what PHP ``json_encode($value)`` returns (default flags).

    Raises ``ValueError`` where PHP's json_encode fails (invalid UTF-8, lone surrogates,
    NaN/Inf) or the value cannot be a PHP value (int outside int64), ``TypeError`` for types
    that have no PHP equivalent.
    """
    walk = _Walk(strings=False)
    value = walk.value(value)
    out = _slow_encode(value) if walk.floats else _dumps(value)
    if "\\ud" in out:
        # Surrogate escapes come from characters beyond U+FFFF (fine) or from lone/paired
        # surrogate code points in a str (not valid UTF-8: PHP fails). Tell them apart.
        _Walk(strings=True).value(value)
    if "\\u007f" in out:
        out = _DEL_ESCAPE.sub(_del_fix, out)
    return out.replace("/", "\\/")
