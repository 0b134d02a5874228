"""Fault modes: the hostile and odd answers tests use; the demo never sets one.

``Simulator.set_fault(app, mode)`` makes requests for an app (or every app) fail with one of
:data:`FAULT_MODES`; ``set_day_fault`` does so for one day of an app (backfill tests). A mode
is an early answer (an API failure, an HTTP error, a body that is not JSON), a page changed
on the way out (bad rows, hostile labels, moving pages, odd empty days), or an answer the HTTP
handler sends itself (resets, timeouts, drips, a gzip bomb, endless or huge bodies).
"""

from __future__ import annotations

import json
import threading
import time
from datetime import date
from typing import Any

from exporter.phpjson import php_json_encode

from .answers import (
    EMPTY_DAY_SHAPES,
    NO_USAGE_FAILURE,
    Answers,
    empty_day_answer,
    success_answer,
    usage_row,
)
from .checks import FAILURE_MESSAGES
from .hostile import gzip_bomb, serve_hostile
from .server import Handler

ROW_FAULTS = {
    "missing_fields",
    "negative_bytes",
    "fractional_bytes",
    "non_numeric_bytes",
    "huge_bytes",
    "bool_bytes",
    "long_digits",  # a number of 5000 digits (more than json.loads takes by default)
}
# label fault modes: the first row of the answer keeps its numbers but gets a hostile video_url
# (valid JSON that PHP's json_encode would not write, so spliced into the encoded answer)
LABEL_FAULTS = {"surrogate_url"}
_SURROGATE_MARK = "@@SURROGATE@@"
# A hostile or merely big answer, served by the HTTP handler itself (see hostile.py).
HTTP_FAULTS = {
    "reset",
    "timeout",
    "drip",  # a valid answer, one byte per ``drip_interval`` seconds
    "drip_headers",  # the status line and headers, one byte per ``drip_interval`` seconds
    "gzip_bomb",  # about 1 MB of gzip (Content-Encoding: gzip) inflating to 1 GiB
    "huge_body",  # a 200 MB body (spaces, then a valid empty answer), with Content-Length
    "endless_body",  # a chunked body that never ends
    "http_429",  # HTTP 429 with Retry-After: ``retry_after`` seconds
    "long_reason",  # HTTP 502 whose reason phrase is 10 kB with control characters
}
# Answers of the shapes an empty day may take (docs/API.md): read as an empty day.
EMPTY_FAULTS = set(EMPTY_DAY_SHAPES)
# The pages move while they are read: after the first page (shift_first) or the second
# (shift_later) of a read, the last row jumps to the top, as a video climbing the by-bytes
# order on a live day does. With ``times``, it happens during that many reads (requests at
# offset 0), then never again.
SHIFT_FAULTS = {"shift_first", "shift_later"}
FAULT_MODES = frozenset(
    {
        *LABEL_FAULTS,
        "http_500",
        "http_503",
        "http_500_json",  # HTTP 500 with the API's JSON failure 0004 as its body
        "invalid_json",
        "not_object",
        "usage_not_list",
        "ignore_offset",
        "count_changes",
        "empty_page_early",
        "partial_rows",  # requests_total null or missing in every row: bytes still good
        "failure_unknown_code",  # a failure with a code the API page does not list
        "failure_long_message",  # failure 0004 with a 10 kB message full of control characters
        *ROW_FAULTS,
        *HTTP_FAULTS,
        *EMPTY_FAULTS,
        *SHIFT_FAULTS,
        *(f"failure_{c}" for c in FAILURE_MESSAGES),
    }
)


def bad_row(app: str, mode: str, k: int) -> dict[str, Any]:
    """The ``k``-th bad row of a row fault mode (not part of the truth)."""
    row: dict[str, Any] = {
        "video_url": f"sestore/{app}/corrupt-{k}.mp4",
        "bytes_total": "1000",
        "requests_total": "1",
    }
    if mode == "missing_fields":
        del row["bytes_total"]
    elif mode == "negative_bytes":
        row["bytes_total"] = "-1000" if k % 2 == 0 else -1000
    elif mode == "fractional_bytes":
        row["bytes_total"] = "1000.5" if k % 2 == 0 else 1000.5
    elif mode == "non_numeric_bytes":
        row["bytes_total"] = "12abc" if k % 2 == 0 else None
    elif mode == "huge_bytes":
        row["bytes_total"] = str(2**64) if k % 2 == 0 else str(2**63)
    elif mode == "bool_bytes":
        row["bytes_total"] = True
    elif mode == "long_digits":
        row["bytes_total"] = "__LONG_DIGITS__"  # replaced by 5000 digits once encoded
    return row


def _http_error(status: int) -> bytes:
    reason = "Internal Server Error" if status == 500 else "Service Unavailable"
    return (
        f"<html><head><title>{status}</title></head><body><h1>{status} {reason}</h1></body></html>"
    ).encode()


class Faults(Answers):
    """The fault part of :class:`~exporter.simulator.Simulator` (a mixin): it overrides the
    fault hooks of ``Answers`` and of the server."""

    _stopping: threading.Event  # the server's (set when it stops)

    def _init_faults(self) -> None:
        self.fault_delay = 30.0
        self.drip_interval = 1.0
        self.retry_after = 120
        # tests: failure messages quote the request, as debugging PHP backends do, so that
        # tests can check that the client keeps the key and signature out of its logs
        self.echo_requests = False
        self._faults: dict[str | None, list[Any]] = {}  # app -> [mode, remaining or None]
        self._day_faults: dict[tuple[str, date], str] = {}  # (app, day) -> mode (backfill)
        self._shift_step: dict[str, int] = {}
        # app -> seconds each of its good answers waits before it goes out (a slow, valid API)
        self.page_delay: dict[str, float] = {}

    def _slow_page(self, app: object) -> None:
        delay = self.page_delay.get(app) if isinstance(app, str) else None
        if delay:  # a slow but valid API: each page of this app after ``delay`` seconds
            self._stopping.wait(delay)

    def set_fault(self, app: str | None, mode: str | None, times: int | None = None) -> None:
        """Make requests for ``app`` (None: every app) fail with ``mode``; None clears.

        ``times``: only the next N requests, then healthy again.
        """
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
        if mode == "gzip_bomb":
            gzip_bomb()  # built now (a few seconds, once), not while a client waits
        with self._lock:
            if mode is None:
                if app is None:
                    self._faults.clear()
                else:
                    self._faults.pop(app, None)
            else:
                self._faults[app] = [mode, times]

    def _take_fault(self, app: Any, offset: int = 0) -> str | None:
        with self._lock:
            key: str | None = app if isinstance(app, str) and app in self._faults else None
            entry = self._faults.get(key)
            if entry is None:
                return None
            mode, remaining = entry
            if mode in SHIFT_FAULTS:  # ``times`` counts reads: requests at offset 0
                if offset == 0 and remaining is not None:
                    if remaining <= 0:
                        del self._faults[key]
                        return None
                    entry[1] = remaining - 1
                return mode
            if remaining is not None:
                if remaining <= 1:
                    del self._faults[key]
                else:
                    entry[1] = remaining - 1
            return mode

    # -- faults keyed by the day asked (backfill tests) --

    def set_day_fault(self, app: str, day: date, mode: str | None) -> None:
        """Make every request for ``app``'s ``day`` (a day query) fail with ``mode``; None clears.

        Checked after the per-app faults of :meth:`set_fault`; month queries are not affected.
        """
        if mode is not None and mode not in FAULT_MODES:
            raise ValueError(f"unknown fault mode {mode!r}; known: {sorted(FAULT_MODES)}")
        with self._lock:
            if mode is None:
                self._day_faults.pop((app, day), None)
            else:
                self._day_faults[(app, day)] = mode

    def _take_day_fault(self, req: dict[str, Any]) -> str | None:
        if not self._day_faults or "day" not in req or not isinstance(req["app"], str):
            return None
        with self._lock:
            return self._day_faults.get((req["app"], date(req["year"], req["month"], req["day"])))

    # -- the hooks of Answers --

    def _pick_fault(self, req: dict[str, Any], offset: int) -> str | None:
        return self._take_fault(req["app"], offset) or self._take_day_fault(req)

    def _echo(self, text: str) -> str:
        """The request quoted for a failure message, signature first (a short message keeps it)."""
        if not self.echo_requests:
            return ""
        try:
            loose = json.loads(text)
        except ValueError:
            loose = None
        signature = loose.get("signature") if isinstance(loose, dict) else None
        return f"(got signature {signature}; request {text})"

    def _fault_answer(self, mode: str, echo: str) -> tuple[int, str, bytes, str, Any] | None:
        """An answer that is no page: (status, content type, body, outcome, code); or None."""
        json_type = "application/json"
        if mode == "failure_no_usage":
            return 200, json_type, NO_USAGE_FAILURE, "success", None
        if mode == "failure_unknown_code":
            body = b'{"status":"failure","code":"9999","message":"Quota exceeded"}'
            return 200, json_type, body, "failure", "9999"
        if mode == "failure_long_message":
            msg = "Unexpected Error \x1b[31m\x07\r\n" + "\x00x\u202e" * 3000
            body = php_json_encode({"status": "failure", "code": "0004", "message": msg}).encode()
            return 200, json_type, body, "failure", "0004"
        if mode.startswith("failure_"):
            code = mode[len("failure_") :]
            return 200, json_type, self._failure(code, echo), "failure", code
        if mode == "http_500_json":
            return 500, json_type, self._failure("0004", "database gone"), "failure", "0004"
        if mode in ("http_500", "http_503"):
            status = int(mode[-3:])
            return status, "text/html; charset=UTF-8", _http_error(status), mode, None
        if mode == "invalid_json":
            body = b"<br />\n<b>Fatal error</b>: Allowed memory size exhausted in api.php"
            return 200, "text/html; charset=UTF-8", body, mode, None
        if mode == "not_object":
            return 200, json_type, b'["success",[],0]', mode, None
        if mode in HTTP_FAULTS - {"drip", "drip_headers"}:
            return 200, json_type, b"", mode, None  # the handler answers (serve_fault)
        return None

    def _fault_page(
        self, mode: str, apps: list[str], rows: list[Any], offset: int, size: int | None,
        started: float,
    ) -> bytes:  # fmt: skip
        """A page changed by ``mode`` on its way out."""
        if mode in ROW_FAULTS:
            rows = self._with_bad_rows(apps[0], mode, rows, size)
        if mode in SHIFT_FAULTS:
            rows = self._shifted(apps[0], mode, rows, offset)
        count = len(rows)
        start = 0 if mode == "ignore_offset" else offset
        end = count if size is None else start + size
        chosen = rows[start:end]
        if mode == "empty_page_early" and offset > 0:
            chosen = []
        if mode == "count_changes":
            count += 1 + offset
        usage = _hostile_usage(
            mode, [r if isinstance(r, dict) else usage_row(r) for r in chosen], offset
        )
        answer = success_answer(usage, count, time.perf_counter() - started)
        if mode in EMPTY_FAULTS:
            answer = empty_day_answer(mode)
        body = php_json_encode(answer).encode("ascii")
        if mode == "surrogate_url":  # a lone UTF-16 surrogate
            body = body.replace(_SURROGATE_MARK.encode(), b"bad\\ud800url")
        if mode == "long_digits":
            body = body.replace(b'"__LONG_DIGITS__"', b"9" * 5000)
        return body

    def _with_bad_rows(self, app: str, mode: str, rows: list[Any], size: int | None) -> list[Any]:
        """One bad row at the start of every page."""
        step = max(1, (size or len(rows) + 1) - 1)
        mixed: list[Any] = []
        for k, i in enumerate(range(0, max(len(rows), 1), step)):
            mixed.append(bad_row(app, mode, k))
            mixed.extend(rows[i : i + step])
        return mixed

    def _shifted(self, app: str, mode: str, rows: list[Any], offset: int) -> list[Any]:
        """The last row on top, from the first (shift_first) or second (shift_later) page on."""
        with self._lock:
            step = 0 if offset == 0 else self._shift_step.get(app, 0) + 1
            self._shift_step[app] = step
        if step >= (1 if mode == "shift_first" else 2) and len(rows) > 1:
            return [rows[-1], *rows[:-1]]
        return rows

    # -- the hook of the server --

    def _serve_fault(self, handler: Handler, mode: str, body: bytes) -> bool:
        """Answer a request of an HTTP fault mode from the handler; False: not one."""
        if mode not in HTTP_FAULTS:
            return False
        serve_hostile(self, handler, mode, body)
        return True


def _hostile_usage(mode: str, usage: list[dict[str, Any]], offset: int) -> Any:
    """The ``usage`` list changed by a label or shape fault mode."""
    if mode == "surrogate_url" and usage and offset == 0:
        usage[0] = {**usage[0], "video_url": usage[0]["video_url"] + _SURROGATE_MARK}
    if mode == "usage_not_list":
        return {str(i + 1): r for i, r in enumerate(usage)} or {"1": None}
    if mode == "partial_rows":
        for k, row in enumerate(usage):
            if k % 2:
                row["requests_total"] = None
            else:
                del row["requests_total"]
    return usage
