"""Reading usage.vse answers: a 2xx answer into a Page (rows, count, the numbers each row must
hold to be usable), a non-2xx one into its ApiError; the label cut of a video_url (cut_url),
and the include/exclude verdict on each URL as sent, before that cut.

Raises only ApiError; server text in it passes the client's scrub.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass, field
from datetime import UTC
from decimal import Decimal
from typing import Any, NamedTuple

from .errors import ApiError, Scrub, api_failure, bad_response, server_text

# the largest count a float64 (a Prometheus sample) holds exactly, and all below it: a row with
# a bigger number is not usable (its bytes would be rounded)
MAX_EXACT = 2**53
LABEL_HASH_CHARS = 16  # hex digits of SHA-256 appended to a cut label

_HANDLE_TIME_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
# A "failure" without a code whose message says there is no usage: an empty day (docs/API.md:
# some PHP backends answer an empty result that way). Anything else without a code is api_other.
_NO_USAGE_RE = re.compile(r"\s*no\s+(?:video\s+)?usage(?:\s+data)?\s+found\W*", re.IGNORECASE)
# a number written out in a string: digits, a fraction, an exponent (no sign, no spaces)
_DECIMAL_RE = re.compile(r"[0-9]+(?:\.[0-9]+)?(?:[eE][-+]?[0-9]{1,6})?")
_SURROGATE = re.compile("[\ud800-\udfff]")

Row = tuple[str, int, int]  # video_url, bytes, requests


class Page(NamedTuple):
    """One parsed usage.vse answer."""

    rows: list[Row]
    count: int
    skipped: int
    handle_time: float | None
    message: str = ""
    incomplete: int = 0  # rows kept with requests 0 because requests_total was null or missing
    # video_url of the answer's first and last row when those rows were usable (rows[0] and
    # rows[-1] then): how a fetch checks that consecutive pages overlap as they should
    lead: str | None = None
    tail: str | None = None
    lead_incomplete: bool = False  # the first row is one of the incomplete ones
    # video_url (as in rows) of the rows that limits.include/exclude fold away, judged on the
    # URL as sent before it was cut
    folded: frozenset[str] = frozenset()


@dataclass
class UsageResult:
    """Usage of one app for one period; rows of the same video_url summed."""

    videos: dict[str, tuple[int, int]] = field(default_factory=dict)
    pages: int = 0
    rows: int = 0
    skipped: int = 0
    count: int = 0
    incomplete: int = 0
    reads: int = 0  # full reads made (more than 1 when the pages moved while being read)
    # the videos limits.include/exclude fold away, judged on each URL as sent (the keys of
    # videos are cut); None when the client was given no filters
    folded: set[str] | None = None


# -- numbers -------------------------------------------------------------------------------


def _integral(value: Decimal) -> int | None:
    """``value`` as an int when it is a whole number in [0, 2**53]; None otherwise."""
    if not value.is_finite() or value.is_signed() and value != 0 or value > MAX_EXACT:
        return None
    n = int(value)
    return n if n == value else None


def _number(value: object) -> int | None:
    """A usable count: a whole number from 0 to 2**53 (a float64 holds it exactly).

    ASCII digits or a JSON integer; also written with a fraction of zeros or an exponent, in a
    string or as a JSON number ("2000.0", 2000.0, "2e3"); not "2000.5", a sign or spaces."""
    t = type(value)
    if t is str:
        if value.isdigit() and value.isascii() and len(value) <= 16:  # type: ignore[union-attr]
            n = int(value)  # type: ignore[arg-type]
            return n if n <= MAX_EXACT else None
        if len(value) <= 40 and _DECIMAL_RE.fullmatch(value):  # type: ignore[arg-type]
            return _integral(Decimal(value))  # type: ignore[arg-type]
        return None
    if t is int:
        return value if 0 <= value <= MAX_EXACT else None  # type: ignore[operator,return-value]
    if t is Decimal:  # a JSON number with a fraction or an exponent (see loads)
        return _integral(value)  # type: ignore[arg-type]
    return None


def _handle_time(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float | Decimal):
        f = float(value)
    elif isinstance(value, str):
        m = _HANDLE_TIME_RE.match(value)
        if not m:
            return None
        try:
            f = float(m.group(0))
        except ValueError:
            return None
    else:
        return None
    return f if math.isfinite(f) and f >= 0 else None


class _Huge:
    """Stands for a JSON integer too long to be a usable number (a row with it is skipped)."""

    __slots__ = ()


_HUGE = _Huge()


def _parse_int(text: str) -> int | _Huge:
    # json.loads would raise on ints over 4300 digits and fail the whole page: keep it per row
    return int(text) if len(text) <= 40 else _HUGE


def _parse_float(text: str) -> Decimal | _Huge:
    # exact, so that 9007199254740993.0 is not read as 2**53; a long one is as unusable as a
    # long integer (and Decimal would take time on it)
    return Decimal(text) if len(text) <= 40 else _HUGE


def loads(body: bytes | bytearray | str) -> Any:
    """JSON with numbers kept exact (Decimal) and overlong ones marked unusable, per value."""
    return json.loads(body, parse_int=_parse_int, parse_float=_parse_float)


def _no_code(code: object) -> bool:
    return code is None or (isinstance(code, str) and not code.strip())


# -- the label cut -------------------------------------------------------------------------


def cut_url(url: str, max_bytes: int) -> str:
    """``url`` as the label it will have, the one cut of a long video_url (the client cuts each
    row with it, ``poller.label_value`` labels with it): the same object when its UTF-8 fits in
    ``max_bytes`` (a lone surrogate is left for the label step to replace); otherwise cut on a
    character boundary, each lone surrogate made U+FFFD, with ``~`` and 16 hex digits of the
    SHA-256 of the whole URL (as sent) appended, so distinct long URLs stay distinct."""
    if len(url) * 4 <= max_bytes or (url.isascii() and len(url) <= max_bytes):
        return url
    raw = url.encode("utf-8", "surrogatepass")
    if len(raw) <= max_bytes:
        return url
    suffix = "~" + hashlib.sha256(raw).hexdigest()[:LABEL_HASH_CHARS]
    clean = _SURROGATE.sub("\ufffd", url).encode()
    return clean[: max(0, max_bytes - len(suffix))].decode("utf-8", "ignore") + suffix


def without_surrogates(text: str) -> str:
    """``text`` with each lone UTF-16 surrogate (valid JSON, not encodable) made U+FFFD; the
    same object when it has none."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return _SURROGATE.sub("\ufffd", text)
    return text


def _cut_urls(rows: list[Row], max_bytes: int) -> None:
    """Every row's video_url cut to its label, in place: a page of long URLs is not held."""
    shortest = max_bytes // 4  # no URL of this many characters or fewer can need a cut
    for i, (url, b, r) in enumerate(rows):
        if len(url) > shortest:
            rows[i] = (cut_url(url, max_bytes), b, r)


def _judge_and_cut(
    rows: list[Row],
    include: re.Pattern[str] | None,
    exclude: re.Pattern[str] | None,
    max_bytes: int | None,
) -> frozenset[str]:
    """The video_urls of the rows that ``include``/``exclude`` fold away, each judged on the
    URL as sent, then (with ``max_bytes``) cut in place as :func:`_cut_urls` cuts them."""
    folded = set()
    shortest = -1 if max_bytes is None else max_bytes // 4  # as in _cut_urls
    for i, (url, b, r) in enumerate(rows):
        out = (include is not None and include.search(url) is None) or (
            exclude is not None and exclude.search(url) is not None
        )
        if max_bytes is not None and len(url) > shortest:
            url = cut_url(url, max_bytes)
            rows[i] = (url, b, r)
        if out:
            folded.add(url)
    return frozenset(folded)


# -- a 2xx answer --------------------------------------------------------------------------


class _Rows(NamedTuple):
    rows: list[Row]
    skipped: int
    incomplete: int
    lead_bad: bool  # the first row is unusable
    tail_ok: bool  # the last row is usable
    lead_incomplete: bool


def _object(body: bytes | bytearray) -> dict[str, Any]:
    try:
        obj = loads(body)
    except (ValueError, RecursionError, TypeError):
        raise ApiError("answer is not JSON", "invalid_json", False) from None
    if type(obj) is not dict:
        raise ApiError(
            f"answer is JSON but not an object ({type(obj).__name__})", "invalid_json", False
        )
    return obj


def _failure(obj: dict[str, Any], scrub: Scrub | None) -> Page:
    """The empty page of a "No Video Usage Found" failure; ApiError for any other failure."""
    message = obj.get("message")
    if _no_code(obj.get("code")) and isinstance(message, str) and _NO_USAGE_RE.fullmatch(message):
        return Page(
            [], 0, 0, _handle_time(obj.get("handle_time")), server_text(message, scrub=scrub)
        )
    raise api_failure(obj.get("code"), message, scrub=scrub)


def _count_and_usage(obj: dict[str, Any]) -> tuple[int, list[Any]]:
    count = obj.get("count")
    usage = obj.get("usage")
    if count is None and (usage is None or usage == []):
        count = 0  # an empty day may come without a count
    if type(count) is str and count.isdigit() and count.isascii() and len(count) <= 19:
        count = int(count)
    if type(count) is not int or count < 0:
        raise bad_response("answer has no valid count")
    if usage is None and count == 0:
        usage = []
    if type(usage) is not list:
        raise bad_response(f"usage is not a list ({type(usage).__name__})")
    return count, usage


def _rows(usage: list[Any]) -> _Rows:
    """The usable rows; the unusable ones counted (one loop: this is a poll's hot path)."""
    rows: list[Row] = []
    append = rows.append
    skipped = incomplete = 0
    num = _number
    lead_bad = tail_ok = lead_incomplete = False
    for row in usage:
        tail_ok = False
        if type(row) is dict:
            url = row.get("video_url")
            b = row.get("bytes_total")
            r = row.get("requests_total")
            # Fast path: the documented form, strings of at most 15 ASCII digits (< 2**53).
            if (
                type(b) is str
                and type(r) is str
                and type(url) is str
                and b.isdigit()
                and r.isdigit()
                and len(b) < 16
                and len(r) < 16
                and b.isascii()
                and r.isascii()
            ):
                append((url, int(b), int(r)))
                tail_ok = True
                continue
            b = num(b)
            if b is not None and type(url) is str:
                if r is None:  # null or missing: bytes are what budgets are about, keep them
                    if not rows and not skipped:
                        lead_incomplete = True
                    append((url, b, 0))
                    incomplete += 1
                    tail_ok = True
                    continue
                r = num(r)
                if r is not None:
                    append((url, b, r))
                    tail_ok = True
                    continue
        if not rows and not skipped:
            lead_bad = True
        skipped += 1
    return _Rows(rows, skipped, incomplete, lead_bad, tail_ok, lead_incomplete)


def parse_page(
    body: bytes | bytearray,
    scrub: Scrub | None = None,
    max_label_length: int | None = None,
    include: re.Pattern[str] | None = None,
    exclude: re.Pattern[str] | None = None,
) -> Page:
    """Parse one usage.vse answer. Raises only ApiError; server text in it passes ``scrub``.

    With ``max_label_length``, each video_url comes cut as :func:`cut_url` cuts it. With
    ``include``/``exclude``, the rows they fold away are named in ``folded``, judged on the
    URL as sent (before the cut).

    Rows whose numbers are unusable are skipped and counted in ``skipped``; rows with good bytes
    but a null or missing ``requests_total`` are kept with 0 requests and counted in
    ``incomplete``. An empty day may come as ``usage`` [] or null with ``count`` 0, "0" or
    missing, or as a failure without a code saying "No Video Usage Found": all are an empty page.
    """
    obj = _object(body)
    status = obj.get("status")
    if status == "failure":
        return _failure(obj, scrub)
    if status != "success":
        if isinstance(status, str):
            raise bad_response(f"unknown status {server_text(status, scrub=scrub)!r}")
        raise bad_response("answer has no status")
    count, usage = _count_and_usage(obj)
    got = _rows(usage)
    rows = got.rows
    folded: frozenset[str] = frozenset()
    if include is not None or exclude is not None:
        folded = _judge_and_cut(rows, include, exclude, max_label_length)
    elif max_label_length is not None:
        _cut_urls(rows, max_label_length)
    return Page(
        rows,
        count,
        got.skipped,
        _handle_time(obj.get("handle_time")),
        server_text(obj.get("message"), scrub=scrub),
        got.incomplete,
        rows[0][0] if rows and not got.lead_bad else None,
        rows[-1][0] if rows and got.tail_ok else None,
        got.lead_incomplete,
        folded,
    )


# -- a non-2xx answer ----------------------------------------------------------------------


def retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); None if unusable."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit() and value.isascii():
        return float(min(int(value[:12]), 10**9))
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - now)


def http_failure(
    status: int, reason: str, wait: float | None, text: bytes | bytearray, scrub: Scrub
) -> ApiError:
    """The ApiError of a non-2xx answer: the API's JSON failure with its code when ``text``
    (the start of the body) carries one; busy when it asks to come back in ``wait`` seconds
    (Retry-After of a 429 or 503); otherwise http_status, retryable for 5xx and 429."""
    what = f"API answered HTTP {status} {server_text(reason, 80, scrub)}".rstrip()
    try:
        obj = loads(text) if text else None
    except (ValueError, RecursionError, TypeError):
        obj = None
    if type(obj) is dict and obj.get("status") == "failure" and not _no_code(obj.get("code")):
        err = api_failure(obj.get("code"), obj.get("message"), scrub=scrub)
        out = ApiError(f"{what}: {err.message}", err.outcome, err.retryable, err.code, err.busy)
        if err.busy:
            out.retry_after = wait
        return out
    if wait is not None:
        return ApiError(
            f"{what}, Retry-After {wait:g}s: the server asks to come back later",
            "http_status",
            False,
            busy=True,
            retry_after=wait,
        )
    if status == 404:  # most likely a wrong address: say where it is set
        what += " (check scaleengine.api_url: the API's address ends in /stable/ or /dev/)"
    return ApiError(what, "http_status", status >= 500 or status == 429)


# -- app.list ------------------------------------------------------------------------------

# app.list's answer shape is not published (docs/API.md): where the list and a name may be
APP_LIST_KEYS = ("data", "apps")
APP_NAME_KEYS = ("name", "app_name", "app")
MAX_APP_NAME = 1024

_log = logging.getLogger("exporter.scaleengine")


def _keys_seen(value: object, scrub: Scrub | None) -> str:
    """The keys of an object (never its values), cut and scrubbed, to report a shape."""
    if not isinstance(value, dict):
        return f"(a {type(value).__name__}, no keys)"
    names = [server_text(k, 40, scrub) for k in list(value)[:20]]
    more = ", ..." if len(value) > 20 else ""
    return ", ".join(repr(n) for n in names) + more


def _app_name(entry: object) -> str | None:
    if isinstance(entry, dict):
        entry = next((entry[k] for k in APP_NAME_KEYS if isinstance(entry.get(k), str)), None)
    if isinstance(entry, str) and entry.strip() and len(entry) <= MAX_APP_NAME:
        return entry
    return None


def _app_entries(listed: object) -> list[Any] | None:
    """The entries of the list under data/apps: a list, or an object of objects (its keys
    the names when the objects do not carry one); None for any other shape."""
    if isinstance(listed, list):
        return listed
    if isinstance(listed, dict) and all(isinstance(v, dict) for v in listed.values()):
        return [v if _app_name(v) else {"name": k, **v} for k, v in listed.items()]
    return None


def _shape_error(obj: dict[str, Any], what: str, scrub: Scrub | None) -> ApiError:
    keys = _keys_seen(obj, scrub)
    _log.warning(
        "app.list: unrecognised answer shape (%s); top-level keys seen: %s. Please report"
        " these keys (not the values) so that the exporter learns the real shape",
        what,
        keys,
    )
    return bad_response(f"app.list answer of an unknown shape ({what}; top-level keys: {keys})")


def parse_app_list(body: bytes | bytearray, scrub: Scrub | None = None) -> list[dict[str, Any]]:
    """The entries of an app.list answer, each a dict with its ``name`` (a string) first and
    the fields it came with. Raises only ApiError: a failure maps as for usage.vse; an
    unknown shape is ``bad_response`` after a warning naming the top-level keys seen."""
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError, TypeError):
        raise ApiError("app.list answer is not JSON", "invalid_json", False) from None
    if type(obj) is not dict:
        raise ApiError(
            f"app.list answer is JSON but not an object ({type(obj).__name__})",
            "invalid_json",
            False,
        )
    status = obj.get("status")
    if status == "failure":
        raise api_failure(obj.get("code"), obj.get("message"), scrub=scrub)
    if status is not None and status != "success":
        raise _shape_error(obj, "unknown status", scrub)
    key = next((k for k in APP_LIST_KEYS if k in obj), None)
    entries = None if key is None else _app_entries(obj[key])
    if entries is None:
        raise _shape_error(obj, "no list under data or apps", scrub)
    out: list[dict[str, Any]] = []
    for entry in entries:
        name = _app_name(entry)
        if name is None:
            raise _shape_error(
                obj, f"an entry without a name: its keys {_keys_seen(entry, scrub)}", scrub
            )
        fields = {k: v for k, v in entry.items() if k != "name"} if isinstance(entry, dict) else {}
        out.append({"name": name, **fields})
    return out
