"""ScaleEngineClient: one page with retries (tenacity), a whole fetch paged and read again until
consistent, all of it under the poll's deadline and within the fetch's memory bound; client_for
builds one from the config (the daemon's polls and backfill alike).

Nothing here ever puts the API key, the secret, a signature or a request body into an exception
message or a log line.
"""

from __future__ import annotations

import ipaddress
import logging
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import tenacity

from exporter import __version__
from exporter.config.defaults import (
    DEFAULT_MAX_FETCH_BYTES,
    DEFAULT_MAX_LABEL_LENGTH,
    DEFAULT_MAX_PAGES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PAGE_SIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
)
from exporter.phpjson import php_json_encode

from .errors import (
    ApiError,
    Scrub,
    api_failure,
    bad_response,
    poll_timeout,
    scrub_secrets,
    secret_forms,
    server_text,
)
from .paging import Read
from .parsing import Page, UsageResult, http_failure, parse_app_list, parse_page, retry_after
from .protocol import build_app_list_request, build_request, sign
from .transport import new_session, post, read_answer, read_error

if TYPE_CHECKING:
    import requests

    from exporter.config import Config, ScaleEngineConfig

log = logging.getLogger("exporter.scaleengine")

READS = 3  # full reads of a fetch before giving up on pages that keep moving

_current = threading.local()  # poll_deadline: the deadline of this thread's fetch


def _time_left(limit: float) -> float:
    """``limit`` cut to the time left before this thread's fetch deadline (see fetch_usage);
    ApiError(POLL_TIMEOUT) when there is none left."""
    deadline = getattr(_current, "poll_deadline", None)
    if deadline is None:
        return limit
    left = deadline - time.monotonic()
    if left <= 0:
        raise poll_timeout()
    return min(limit, left)


def _is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host.lower() in ("localhost", "localhost.localdomain") or host.lower().endswith(
        ".localhost"
    ):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def warn_if_cleartext(api_url: str) -> bool:
    """Log a warning when requests (and so the API key) would travel unencrypted.

    Loopback hosts (the built-in simulator of the demo, a local test API) are not warned about:
    the key does not leave the machine. True when a warning was logged.
    """
    parts = urlsplit(api_url)
    if parts.scheme != "http" or _is_loopback(parts.hostname):
        return False
    log.warning(
        "scaleengine.api_url is plain http: the API key and signed requests travel unencrypted;"
        " use https",
        extra={"host": server_text(parts.hostname or "", 100)},
    )
    return True


def _check_limits(**limits: int) -> None:
    """ValueError for the first limit below its minimum (retries 0, the others 1)."""
    for name, value in limits.items():
        if name == "retries":
            if value < 0:
                raise ValueError("retries must not be negative")
        elif value < 1:
            raise ValueError(f"{name} must be at least 1")


class ScaleEngineClient:
    """usage.vse client for one account; one HTTP session (keep-alive)."""

    def __init__(
        self,
        api_url: str,
        cdn_id: int,
        api_key: str,
        api_secret: str,
        timeout: float = DEFAULT_TIMEOUT,
        page_size: int = DEFAULT_PAGE_SIZE,
        max_pages: int = DEFAULT_MAX_PAGES,
        retries: int = DEFAULT_RETRIES,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        clock: Callable[[], float] = time.time,
        on_request: Callable[[str], None] | None = None,
        user_agent: str | None = None,
        max_response_bytes: int = DEFAULT_MAX_RESPONSE_BYTES,
        max_fetch_bytes: int = DEFAULT_MAX_FETCH_BYTES,
        max_label_length: int = DEFAULT_MAX_LABEL_LENGTH,
        include: re.Pattern[str] | None = None,
        exclude: re.Pattern[str] | None = None,
    ) -> None:
        _check_limits(
            page_size=page_size,
            max_pages=max_pages,
            retries=retries,
            max_response_bytes=max_response_bytes,
            max_fetch_bytes=max_fetch_bytes,
            max_label_length=max_label_length,
        )
        self.max_fetch_bytes = int(max_fetch_bytes)
        self.max_label_length = int(max_label_length)
        # limits.include/exclude: judged on each URL as sent, before the cut (UsageResult.folded)
        self.include = include
        self.exclude = exclude
        self.max_response_bytes = int(max_response_bytes)
        self.api_url = api_url
        self.cdn_id = int(cdn_id)
        self._api_key = api_key
        self._api_secret = api_secret
        self._secrets = secret_forms(api_secret, api_key)
        self.timeout = float(timeout)
        self.page_size = int(page_size)
        self.max_pages = int(max_pages)
        self.retries = int(retries)
        self.backoff_base = float(backoff_base)
        self.backoff_max = float(backoff_max)
        self.clock = clock
        self.on_request = on_request
        self.session = new_session(user_agent or f"scaleengine-exporter/{__version__}")

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
        return scrub_secrets(text, self._secrets)

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
        page = self._signed_exchange(request, f"usage.vse app={app} offset={offset}")
        log.debug(
            "usage.vse app=%s offset=%d rows=%d skipped=%d count=%d handle_time=%s",
            app, offset, len(page.rows), page.skipped, page.count, page.handle_time,
        )  # fmt: skip
        return page

    def _signed_exchange(
        self, request: dict, what: str, parse: Callable[[bytes, Scrub], Any] | None = None
    ) -> Any:
        """Sign ``request``, send it under the deadline and count its outcome; errors carry no
        secret, signature included (also as PHP escapes it in an echoed request)."""
        signature = sign(request, self._api_secret)
        body = php_json_encode({**request, "signature": signature})
        escaped = php_json_encode(signature)[1:-1]  # base64's "/" is "\\/" in an echoed request

        def scrub(text: str) -> str:
            return self._scrub(text).replace(signature, "***").replace(escaped, "***")

        try:
            result = self._exchange(body, scrub, _time_left(self.timeout), parse)
        except ApiError as err:
            if err.outcome == "api_0002":
                err = api_failure(err.code, "", self.clock())
            message = scrub(err.message)
            if message != err.message:
                err = ApiError(
                    message, err.outcome, err.retryable, err.code, err.busy, err.retry_after
                )
            self._notify(err.outcome)
            log.debug("%s failed: %s", what, err.outcome)
            raise err from None
        self._notify("success")
        return result

    def _timed_out(self, cut: bool = False) -> ApiError:
        if cut:  # by the poll's deadline, not by scaleengine.timeout
            return poll_timeout()
        return ApiError(
            f"API request took longer than scaleengine.timeout ({self.timeout:g}s, the whole"
            " request: connect, headers and body)",
            "timeout",
            True,
        )

    def _exchange(
        self,
        body: str,
        scrub: Scrub,
        limit: float | None = None,
        parse: Callable[[bytes, Scrub], Any] | None = None,
    ) -> Any:
        """One POST, bounded as a whole by ``timeout`` (or the shorter ``limit``: the time left
        of the poll, ApiError(POLL_TIMEOUT) when that cuts it) and in size by
        ``max_response_bytes``; a 2xx answer read by ``parse`` (default: a usage.vse page)."""
        seconds = self.timeout if limit is None else min(limit, self.timeout)
        cut = seconds < self.timeout
        return post(
            self.session,
            self.api_url,
            {"json": body},
            seconds,
            lambda resp: self._answer(resp, scrub, parse),
            lambda: self._timed_out(cut),
        )

    def _answer(
        self,
        resp: requests.Response,
        scrub: Scrub,
        parse: Callable[[bytes, Scrub], Any] | None = None,
    ) -> Any:
        status = resp.status_code
        if 200 <= status < 300:
            body = read_answer(resp, self.max_response_bytes)
            if parse is not None:
                return parse(body, scrub)
            return parse_page(body, scrub, self.max_label_length, self.include, self.exclude)
        # a non-2xx answer may still carry the API's JSON failure with its code
        wait = None
        if status in (429, 503):
            wait = retry_after(resp.headers.get("Retry-After"), time.time())
        text = read_error(resp, self.max_response_bytes)
        raise http_failure(status, resp.reason or "", wait, text, scrub)

    def fetch_page(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None, offset: int
    ) -> Page:
        """One page, with retries of transient errors (capped exponential backoff, jitter)."""
        retrying = self._retrying(before_sleep=self._before_sleep)
        return retrying(self._attempt, app, urls, year, month, day, offset)

    def _retrying(self, **extra: Any) -> tenacity.Retrying:
        """The retry policy of one request (a usage.vse page, app.list): retryable ApiErrors
        tried again up to ``retries`` times, capped exponential backoff with jitter, never
        sleeping past the fetch's deadline."""
        backoff = tenacity.wait_random_exponential(
            multiplier=self.backoff_base, max=self.backoff_max
        )
        return tenacity.Retrying(
            stop=tenacity.stop_after_attempt(self.retries + 1),
            wait=lambda state: min(backoff(state), _time_left(backoff.max)),
            retry=tenacity.retry_if_exception(lambda e: isinstance(e, ApiError) and e.retryable),
            reraise=True,
            **extra,
        )

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

    # -- app.list ------------------------------------------------------------------------

    def _list_attempt(self) -> list[dict[str, Any]]:
        request = build_app_list_request(self._api_key, self.cdn_id, self.clock())
        apps = self._signed_exchange(request, "app.list", parse_app_list)
        log.debug("app.list: %d app(s)", len(apps))
        return apps

    def list_apps(self, deadline: float | None = None) -> list[dict[str, Any]]:
        """The account's applications (app.list): each entry a dict with its ``name`` first
        and the fields the API gave. Retries transient failures like a usage.vse page; 1000
        (busy) is not retried; ``deadline`` as for :meth:`fetch_usage`. Raises ApiError."""
        retrying = self._retrying()
        outer = getattr(_current, "poll_deadline", None)
        _current.poll_deadline = deadline
        try:
            return retrying(self._list_attempt)
        finally:
            _current.poll_deadline = outer

    # -- a whole fetch -----------------------------------------------------------------

    def fetch_usage(
        self,
        app: str,
        urls: list[str] | None,
        year: int,
        month: int,
        day: int | None,
        deadline: float | None = None,
    ) -> UsageResult:
        """:meth:`_fetch_usage`, ended by ``deadline`` (a ``time.monotonic()`` value; the
        poller's poll.timeout) when given: no request starts after it, each request's time limit
        is cut to the time left, a retry does not sleep past it; ApiError(POLL_TIMEOUT) then."""
        outer = getattr(_current, "poll_deadline", None)
        _current.poll_deadline = deadline
        try:
            return self._fetch_usage(app, urls, year, month, day)
        finally:
            _current.poll_deadline = outer

    def _fetch_usage(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None
    ) -> UsageResult:
        """All rows of one app for a day (or a month when day is None), paginated.

        Live rows are ordered by bytes, so a video can move across a page boundary between two
        page requests: read naively it is counted twice while another goes missing. Each page
        after the first therefore starts one row early, and that overlapping row must be the
        one the previous page ended with; a ``count`` change, a short or empty page before
        ``count``, more rows than ``count`` or an overlap that differs mean the pages moved,
        and the whole fetch is read again (up to READS full reads). The same video_url on two
        pages is read again too, but accepted when the next read shows the same rows per URL
        (the API does repeat rows of one video, and they may straddle a page boundary). Only a
        consistent read is returned; otherwise ApiError(pagination). A server that ignores
        offset or a fetch beyond max_pages fails at once.
        """
        previous: tuple[dict[str, int], frozenset[str]] | None = None
        reasons: list[str] = []
        for attempt in range(1, READS + 1):
            result, moved, duplicates, shape = self._read(app, urls, year, month, day)
            result.reads = attempt
            if not moved and not duplicates:
                break
            # the same urls, each in as many rows as in the previous read
            signature = None if moved else (shape, frozenset(result.videos))
            if signature is not None and signature == previous:
                break  # the repeated URLs are stable: the API's own repeated rows
            previous = signature
            reasons.append(moved or duplicates)
            log.info(
                "usage.vse app=%s: the pages moved while being read (%s); reading again",
                app, reasons[-1],
            )  # fmt: skip
        else:
            raise ApiError(
                f"no consistent read in {READS} full reads: the pages kept moving"
                f" ({'; '.join(reasons)}) (app {app!r})",
                "pagination",
                False,
            )
        if result.skipped and not result.rows:
            # not a day without usage: reading zeros here would look healthy
            raise bad_response(
                f"all {result.skipped} rows of the answer are unusable (app {app!r})"
            )
        if result.skipped:
            log.warning("usage.vse app=%s: %d unusable rows skipped", app, result.skipped)
        return result

    def _read(
        self, app: str, urls: list[str] | None, year: int, month: int, day: int | None
    ) -> tuple[UsageResult, str, str, dict[str, int]]:
        """One full read: (result, why it moved or "", repeated URLs across pages or "",
        rows per URL). Raises ApiError(pagination) for inconsistencies a re-read cannot fix,
        ApiError(too_large) past max_fetch_bytes."""
        read = Read(
            app,
            self.page_size,
            self.max_pages,
            self.max_fetch_bytes,
            filtering=self.include is not None or self.exclude is not None,
        )
        while not read.done:
            offset = read.offset()
            moved = read.take(self.fetch_page(app, urls, year, month, day, offset), offset)
            if moved:
                return read.result, moved, "", read.shape
        return read.result, "", read.duplicated(), read.shape


def client_for(
    config: Config,
    account: ScaleEngineConfig,
    clock: Callable[[], float] = time.time,
    on_request: Callable[[str], None] | None = None,
) -> ScaleEngineClient:
    """The API client of one account (its URL, credentials, timeout and answer limits) as
    the config sets it up (the daemon's polls, app.list and backfill alike)."""
    se = account
    return ScaleEngineClient(
        api_url=se.api_url,
        cdn_id=se.cdn_id,
        api_key=se.api_key.get_secret_value(),
        api_secret=se.api_secret.get_secret_value(),
        timeout=se.timeout,
        page_size=config.poll.page_size,
        max_pages=config.poll.max_pages,
        retries=config.poll.retries,
        max_response_bytes=se.max_response_bytes,
        max_fetch_bytes=se.max_fetch_bytes,
        max_label_length=config.limits.max_label_length,
        include=config.limits.include,
        exclude=config.limits.exclude,
        clock=clock,
        on_request=on_request,
    )
