"""Client of ScaleEngine's ``usage.vse`` API: signing, requests, parsing, pagination, retries.

The request is signed and sent exactly as the documented PHP example does (see phpjson.py and
/work/shared/REFERENCE.md). Nothing here ever puts the API key, the secret, a signature or a
request body into an exception message or a log line.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, NamedTuple

import requests
import tenacity

from exporter import __version__
from exporter.phpjson import php_json_encode

__all__ = [
    "ApiError",
    "Page",
    "ScaleEngineClient",
    "UsageResult",
    "build_request",
    "encode_body",
    "parse_page",
    "sign",
]

log = logging.getLogger("exporter.scaleengine")

COMMAND = "usage.vse"

INT64_MAX = 2**63 - 1

# Published error codes: (meaning, retryable).
API_CODES: dict[str, tuple[str, bool]] = {
    "0000": ("unrecognized API command", False),
    "0001": ("CDN authorization failed: check cdn_id and api_key", False),
    "0002": ("timestamp outside the valid range", False),
    "0003": ("HMAC-SHA256 signature failed: check api_secret", False),
    "0004": ("unexpected error on the API side", True),
    "0005": ("unauthorized access to the API", False),
    "0006": ("one or more required fields missing or invalid", False),
    "1000": ("servers under heavy traffic, try again in a few minutes", True),
}

_CODE_RE = re.compile(r"[0-9A-Za-z_]{1,16}")
_HANDLE_TIME_RE = re.compile(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")
_MAX_SERVER_TEXT = 200


class ApiError(Exception):
    """A failed usage.vse request or fetch.

    ``outcome`` is a short label (used as a Prometheus label value), ``retryable`` says whether
    trying again later may help, ``code`` is the API's error code when it sent one.
    """

    def __init__(self, message: str, outcome: str, retryable: bool, code: str | None = None):
        super().__init__(message)
        self.outcome = outcome
        self.retryable = retryable
        self.code = code

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class Page(NamedTuple):
    """One parsed usage.vse answer."""

    rows: list[tuple[str, int, int]]
    count: int
    skipped: int
    handle_time: float | None
    message: str = ""


@dataclass
class UsageResult:
    """Usage of one app for one period; rows of the same video_url summed."""

    videos: dict[str, tuple[int, int]] = field(default_factory=dict)
    pages: int = 0
    rows: int = 0
    skipped: int = 0
    count: int = 0


def sign(request: dict, secret: str) -> str:
    """base64(HMAC-SHA256(key=secret, msg=php_json_encode(request)))."""
    msg = php_json_encode(request).encode("ascii")
    digest = hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_body(request: dict, secret: str) -> str:
    """The ``json`` form field: the request with its signature appended last, PHP-encoded."""
    if "signature" in request:
        raise ValueError("request already has a signature")
    signed = dict(request)
    signed["signature"] = sign(request, secret)
    return php_json_encode(signed)


def build_request(
    api_key: str,
    cdn_id: int,
    app: str,
    urls: list[str] | None,
    year: int,
    month: int,
    day: int | None,
    limit: int,
    offset: int,
    timestamp: float,
) -> dict[str, Any]:
    """A usage.vse request with its keys in the documented order (signature not included)."""
    request: dict[str, Any] = {
        "command": COMMAND,
        "api_key": api_key,
        "timestamp": int(timestamp),
        "cdn": int(cdn_id),
        "app": app,
    }
    if urls is not None:
        if isinstance(urls, str):
            raise TypeError("urls must be a list of strings, not a string")
        if not urls:
            raise ValueError("urls must not be empty (use None for all videos)")
        request["url"] = list(urls)
    request["year"] = int(year)
    request["month"] = int(month)
    if day is not None:
        request["day"] = int(day)
    request["limit"] = int(limit)
    request["offset"] = int(offset)
    return request


def _server_text(value: object) -> str:
    """Text from the server, made safe to log: printable, short."""
    if not isinstance(value, str):
        return ""
    text = "".join(c if c.isprintable() else " " for c in value[: _MAX_SERVER_TEXT * 2])
    text = text.strip()
    if len(text) > _MAX_SERVER_TEXT:
        text = text[:_MAX_SERVER_TEXT] + "..."
    return text


def api_failure(code: object, server_message: object, now: float | None = None) -> ApiError:
    """The ApiError for a ``"status": "failure"`` answer."""
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 9999:
        code_s: str | None = f"{code:04d}"
    elif isinstance(code, str) and _CODE_RE.fullmatch(code):
        code_s = code
    else:
        code_s = None
    meaning, retryable = API_CODES.get(code_s or "", ("unknown error code", False))
    text = _server_text(server_message)
    msg = f"API error {code_s or '(no code)'}: {meaning}"
    if code_s == "0002":
        t = time.time() if now is None else now
        local = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        msg += (
            f"; the local clock is probably off (local UTC time {local},"
            f" timestamp {int(t)}): sync it with NTP"
        )
    if text:
        msg += f" (server said: {text!r})"
    return ApiError(msg, f"api_{code_s}" if code_s else "api_unknown", retryable, code_s)


def _bad(message: str) -> ApiError:
    return ApiError(message, "bad_response", False)


def _number(value: object) -> int | None:
    """A usable bigint: ASCII digits or a plain non-negative int within int64."""
    t = type(value)
    if t is str:
        if value.isdigit() and value.isascii() and len(value) <= 19:  # type: ignore[union-attr]
            n = int(value)  # type: ignore[arg-type]
            return n if n <= INT64_MAX else None
        return None
    if t is int:
        return value if 0 <= value <= INT64_MAX else None  # type: ignore[operator,return-value]
    return None


def _handle_time(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
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


def parse_page(body: bytes) -> Page:
    """Parse one usage.vse answer. Raises only ApiError.

    Rows whose numbers are unusable are skipped and counted in ``skipped``.
    """
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError, TypeError):
        raise ApiError("answer is not JSON", "invalid_json", False) from None
    if type(obj) is not dict:
        raise ApiError(
            f"answer is JSON but not an object ({type(obj).__name__})", "invalid_json", False
        )
    status = obj.get("status")
    if status == "failure":
        raise api_failure(obj.get("code"), obj.get("message"))
    if status != "success":
        if isinstance(status, str):
            raise _bad(f"unknown status {_server_text(status)!r}")
        raise _bad("answer has no status")
    count = obj.get("count")
    if type(count) is str and count.isdigit() and count.isascii() and len(count) <= 19:
        count = int(count)
    if type(count) is not int or count < 0:
        raise _bad("answer has no valid count")
    usage = obj.get("usage")
    if usage is None and count == 0:
        usage = []
    if type(usage) is not list:
        raise _bad(f"usage is not a list ({type(usage).__name__})")
    rows: list[tuple[str, int, int]] = []
    append = rows.append
    skipped = 0
    num = _number
    for row in usage:
        if type(row) is dict:
            url = row.get("video_url")
            b = row.get("bytes_total")
            r = row.get("requests_total")
            # Fast path: the documented form, strings of at most 18 ASCII digits (< 2**63).
            if (
                type(b) is str
                and type(r) is str
                and type(url) is str
                and b.isdigit()
                and r.isdigit()
                and len(b) < 19
                and len(r) < 19
                and b.isascii()
                and r.isascii()
            ):
                append((url, int(b), int(r)))
                continue
            b = num(b)
            r = num(r)
            if b is not None and r is not None and type(url) is str:
                append((url, b, r))
                continue
        skipped += 1
    return Page(
        rows, count, skipped, _handle_time(obj.get("handle_time")), _server_text(obj.get("message"))
    )


class ScaleEngineClient:
    """usage.vse client for one account; one HTTP session (keep-alive)."""

    def __init__(
        self,
        api_url: str,
        cdn_id: int,
        api_key: str,
        api_secret: str,
        timeout: float = 10.0,
        page_size: int = 1000,
        max_pages: int = 1000,
        retries: int = 3,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_request: Callable[[str], None] | None = None,
        user_agent: str | None = None,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        if max_pages < 1:
            raise ValueError("max_pages must be at least 1")
        if retries < 0:
            raise ValueError("retries must not be negative")
        self.api_url = api_url
        self.cdn_id = int(cdn_id)
        self._api_key = api_key
        self._api_secret = api_secret
        self.timeout = float(timeout)
        self.page_size = int(page_size)
        self.max_pages = int(max_pages)
        self.retries = int(retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.clock = clock
        self.on_request = on_request
        self.session = requests.Session()
        self.session.headers["User-Agent"] = user_agent or f"scaleengine-exporter/{__version__}"
        self.session.headers["Accept"] = "application/json"
        self.session.verify = True

    def __repr__(self) -> str:
        return f"ScaleEngineClient(api_url={self.api_url!r}, cdn_id={self.cdn_id})"

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> ScaleEngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one HTTP request ------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        for secret in (self._api_secret, self._api_key):
            if secret and len(secret) >= 4 and secret in text:
                text = text.replace(secret, "***")
        return text

    def _notify(self, outcome: str) -> None:
        if self.on_request is not None:
            try:
                self.on_request(outcome)
            except Exception:  # a metrics callback must not break the fetch
                log.exception("on_request callback failed")

    def _attempt(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None, offset: int
    ) -> Page:
        request = build_request(
            self._api_key, self.cdn_id, app, urls, year, month, day,
            self.page_size, offset, self.clock(),
        )  # fmt: skip
        signature = sign(request, self._api_secret)
        body = php_json_encode({**request, "signature": signature})
        try:
            try:
                resp = self.session.post(
                    self.api_url,
                    data={"json": body},
                    timeout=(self.timeout, self.timeout),
                    allow_redirects=False,
                )
            except requests.Timeout as exc:
                raise ApiError(
                    f"API request timed out after {self.timeout:g}s ({type(exc).__name__})",
                    "timeout",
                    True,
                ) from None
            except requests.RequestException as exc:
                reason = exc.args[0] if exc.args else exc
                if "timed out" in str(reason).lower():
                    raise ApiError(
                        f"API request timed out after {self.timeout:g}s while reading",
                        "timeout",
                        True,
                    ) from None
                raise ApiError(
                    f"cannot talk to the API: {type(exc).__name__}: {str(reason)[:300]}",
                    "connection",
                    True,
                ) from None
            status = resp.status_code
            if not 200 <= status < 300:
                raise ApiError(
                    f"API answered HTTP {status} {resp.reason or ''}".rstrip(),
                    "http_status",
                    status >= 500 or status == 429,
                )
            try:
                content = resp.content
            except requests.RequestException as exc:
                raise ApiError(
                    f"connection lost while reading the answer ({type(exc).__name__})",
                    "connection",
                    True,
                ) from None
            page = parse_page(content)
        except ApiError as err:
            if err.outcome == "api_0002":
                err = api_failure(err.code, "", self.clock())
            message = self._scrub(err.message).replace(signature, "***")
            if message != err.message:
                err = ApiError(message, err.outcome, err.retryable, err.code)
            self._notify(err.outcome)
            log.debug("usage.vse app=%s offset=%d failed: %s", app, offset, err.outcome)
            raise err from None
        self._notify("success")
        log.debug(
            "usage.vse app=%s offset=%d rows=%d skipped=%d count=%d handle_time=%s",
            app, offset, len(page.rows), page.skipped, page.count, page.handle_time,
        )  # fmt: skip
        return page

    def fetch_page(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None, offset: int
    ) -> Page:
        """One page, with retries of transient errors (capped exponential backoff, jitter)."""
        retrying = tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=tenacity.wait_random_exponential(
                multiplier=self.backoff_base, max=self.backoff_max
            ),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ApiError) and e.retryable),
            reraise=True,
            before_sleep=self._before_sleep,
        )
        return retrying(self._attempt, app, urls, year, month, day, offset)

    @staticmethod
    def _before_sleep(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        wait = state.next_action.sleep if state.next_action else 0.0
        log.info(
            "usage.vse attempt %d failed (%s), retrying in %.2fs",
            state.attempt_number,
            getattr(exc, "outcome", "error"),
            wait,
            extra={"app": state.args[0] if state.args else "?"},  # _attempt(app, ...)
        )

    # -- a whole fetch -----------------------------------------------------------------

    def fetch_usage(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None
    ) -> UsageResult:
        """All rows of one app for a day (or a month when day is None), paginated.

        Raises ApiError(pagination) when the pages are inconsistent (server ignoring offset,
        count changing, empty page before count, max_pages reached): counting the rows anyway
        could double count or miss some, so the whole fetch should be retried later.
        """
        result = UsageResult()
        videos = result.videos
        offset = 0
        count: int | None = None
        previous: list[tuple[str, int, int]] | None = None
        while True:
            page = self.fetch_page(app, urls, year, month, day, offset)
            result.pages += 1
            if count is None:
                count = page.count
                result.count = count
            elif page.count != count:
                raise ApiError(
                    f"count changed from {count} to {page.count} between pages (app {app!r})",
                    "pagination",
                    False,
                )
            returned = len(page.rows) + page.skipped
            if returned == 0:
                if offset < count:
                    raise ApiError(
                        f"empty page at offset {offset} although count is {count} (app {app!r})",
                        "pagination",
                        False,
                    )
                break
            if previous is not None and page.rows == previous:
                raise ApiError(
                    f"page at offset {offset} repeats the previous page: the API seems to"
                    f" ignore offset (app {app!r})",
                    "pagination",
                    False,
                )
            if offset + returned > count:
                raise ApiError(
                    f"more rows than count ({offset + returned} > {count}) (app {app!r})",
                    "pagination",
                    False,
                )
            for url, b, r in page.rows:
                old = videos.get(url)
                videos[url] = (b, r) if old is None else (old[0] + b, old[1] + r)
            result.rows += len(page.rows)
            result.skipped += page.skipped
            offset += returned
            if offset >= count:
                break
            if result.pages >= self.max_pages:
                raise ApiError(
                    f"max_pages ({self.max_pages}) reached at {offset} of {count} rows"
                    f" (app {app!r})",
                    "pagination",
                    False,
                )
            previous = page.rows
        if result.skipped:
            log.warning("usage.vse app=%s: %d unusable rows skipped", app, result.skipped)
        return result
