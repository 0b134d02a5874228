"""The simulator's answers: success pages, the API's failure JSON, empty-day shapes, and the
request log.

:class:`Answers` turns the ``json`` form field of a request into (HTTP status, content type,
body). A refused request gets the documented failure JSON with HTTP 200, as the real API
answers. Fault modes are not handled here: the hooks ``_pick_fault``, ``_fault_answer``,
``_fault_page`` and ``_echo`` answer no fault by default, and ``faults.Faults`` overrides them.
"""

from __future__ import annotations

import json
import time
from collections import deque
from typing import Any

from exporter.phpjson import php_json_encode

from .checks import APP_LIST, FAILURE_MESSAGES, Reject, validate
from .data import UsageData

# The usual answer for a day without usage.
EMPTY_ANSWER = b'{"status":"success","usage":[],"count":0,"message":"No Video Usage Found"}'
# The other shapes an answer for a day without usage may take (docs/API.md): clients read
# each as an empty day. "failure_no_usage" is a failure without a code.
EMPTY_DAY_SHAPES = ("empty_no_count", "empty_count_string", "empty_usage_null", "failure_no_usage")
NO_USAGE_FAILURE = b'{"status":"failure","message":"No Video Usage Found"}'


def failure_body(code: str, detail: str) -> bytes:
    """The API's failure JSON for ``code``, its message followed by ``detail`` if any."""
    msg = FAILURE_MESSAGES.get(code, "Unexpected Error")
    if detail:
        msg = f"{msg}: {detail}"
    return php_json_encode({"status": "failure", "code": code, "message": msg}).encode()


def usage_row(row: tuple[str, int, int]) -> dict[str, Any]:
    """One row of the ``usage`` list: the API sends its numbers as strings."""
    return {"video_url": row[0], "bytes_total": str(row[1]), "requests_total": str(row[2])}


def success_answer(usage: Any, count: Any, elapsed: float) -> dict[str, Any]:
    """A success answer, keys in the API's order."""
    return {
        "status": "success",
        "usage": usage,
        "count": count,
        "message": "Found Video Usage" if count else "No Video Usage Found",
        "handle_time": f"{elapsed:.4f} seconds",
    }


def empty_day_answer(shape: str) -> dict[str, Any]:
    """An answer of one of the empty-day shapes but "failure_no_usage" (NO_USAGE_FAILURE)."""
    answer: dict[str, Any] = {"status": "success", "usage": [], "message": "No Video Usage Found"}
    if shape == "empty_count_string":
        answer["count"] = "0"
    elif shape == "empty_usage_null":
        answer["usage"] = None
    return answer


def page_body(
    rows: list[tuple[str, int, int]], offset: int, size: int | None, elapsed: float
) -> bytes:
    """A success page: ``size`` rows (None: all) from ``offset``, with the count of all."""
    count = len(rows)
    end = count if size is None else offset + size
    usage = [usage_row(r) for r in rows[offset:end]]
    return php_json_encode(success_answer(usage, count, elapsed)).encode("ascii")


def app_list_body(apps: list[str]) -> bytes:
    """The simulator's app.list answer. The real shape is not published (docs/API.md); this
    is the simulator's choice: ``{"status":"success","message":"Found N applications",
    "data":[{"name":"demo-origin","type":"origin"}, ...]}``, names sorted."""
    answer = {
        "status": "success",
        "message": f"Found {len(apps)} applications",
        "data": [{"name": a, "type": "origin"} for a in sorted(apps)],
    }
    return php_json_encode(answer).encode("ascii")


class Answers(UsageData):
    """The answering part of :class:`~exporter.simulator.Simulator` (a mixin)."""

    cdn_id: int
    api_key: str
    api_secret: str
    timestamp_window: float

    def _init_answers(self, max_page_size: int | None) -> None:
        self.max_page_size = max_page_size
        # bounded: the demo runs for days
        self.request_log: deque[dict[str, Any]] = deque(maxlen=100_000)
        # tests: keep each request's json field in its log entry ("body"), so that they can be
        # checked by real PHP afterwards; off by default (the demo runs for days)
        self.record_bodies = False
        self._page_cache: dict[tuple[Any, ...], bytes] = {}
        # tests: an app.list answer served instead of the simulator's own (app_list_body),
        # after the same checks; to try the shapes the real API may answer in
        self.app_list_override: bytes | None = None

    # -- the request log --

    def requests_for(self, app: str) -> int:
        with self._lock:
            return sum(1 for e in self.request_log if e.get("app") == app)

    def clear_log(self) -> None:
        with self._lock:
            self.request_log.clear()

    def _log(self, entry: dict[str, Any]) -> None:
        with self._lock:
            self.request_log.append(entry)

    # -- fault hooks: no fault here (see faults.Faults) --

    def _pick_fault(self, req: dict[str, Any], offset: int) -> str | None:
        return None

    def _fault_answer(self, mode: str, echo: str) -> tuple[int, str, bytes, str, Any] | None:
        return None

    def _slow_page(self, app: object) -> None:
        """Hold a good answer back before it goes out (faults: a slow but valid API)."""

    def _fault_page(
        self, mode: str, apps: list[str], rows: list[Any], offset: int, size: int | None,
        started: float,
    ) -> bytes:  # fmt: skip
        raise ValueError(f"unknown fault mode {mode!r}")

    def _echo(self, text: str) -> str:
        return ""

    # -- answering --

    def answer(self, text: str) -> tuple[int, str, bytes]:
        """Answer one request (the ``json`` form field): (HTTP status, content type, body).

        Fault modes "reset" and "timeout" are handled by the HTTP handler (see ``handle``).
        """
        return self._answer(text)[:3]

    def _answer(self, text: str) -> tuple[int, str, bytes, str | None]:
        started = time.perf_counter()
        entry: dict[str, Any] = {"app": None, "day": None, "offset": None, "limit": None}
        entry["timestamp"] = self.clock.now()
        if self.record_bodies:
            entry["body"] = text
        echo = self._echo(text)
        try:
            req = validate(
                text, self.cdn_id, self.api_key, self.api_secret, self.clock.now(),
                self.timestamp_window,
            )  # fmt: skip
        except Reject as rej:
            return self._refused(entry, text, rej, echo)
        if req["command"] == APP_LIST:
            return self._app_list(req, entry, echo)
        app = req["app"]
        entry.update(
            app=app if isinstance(app, str) else tuple(app),
            day=req.get("day"),
            year=req["year"],
            month=req["month"],
            offset=req.get("offset", 0),
            limit=req.get("limit"),
            request_timestamp=req["timestamp"],
        )
        mode = self._pick_fault(req, entry["offset"])
        entry["fault"] = mode
        special = None if mode is None else self._fault_answer(mode, echo)
        if special is not None:
            status, ctype, body, outcome, code = special
            entry.update(outcome=outcome, code=code)
            self._log(entry)
            return status, ctype, body, mode
        body = self._page(req, mode, started)
        entry.update(outcome="success", code=None)
        self._log(entry)
        self._slow_page(app)
        return 200, "application/json", body, mode

    def _app_list(
        self, req: dict[str, Any], entry: dict[str, Any], echo: str
    ) -> tuple[int, str, bytes, str | None]:
        """app.list: the configured apps; its faults are set for the app name "app.list"
        (or for every app: set_fault(None, ...)); only the non-page fault modes apply."""
        entry.update(command=APP_LIST, request_timestamp=req["timestamp"])
        mode = self._pick_fault({"app": APP_LIST}, 0)
        entry["fault"] = mode
        special = None if mode is None else self._fault_answer(mode, echo)
        if special is not None:
            status, ctype, body, outcome, code = special
            entry.update(outcome=outcome, code=code)
            self._log(entry)
            return status, ctype, body, mode
        body = self.app_list_override or app_list_body(list(self.apps))
        entry.update(outcome="success", code=None)
        self._log(entry)
        return 200, "application/json", body, mode

    def _refused(
        self, entry: dict[str, Any], text: str, rej: Reject, echo: str
    ) -> tuple[int, str, bytes, str | None]:
        entry.update(outcome="failure", code=rej.code, detail=rej.detail)
        try:  # log the app when it is readable, to help tests
            loose = json.loads(text)
            if isinstance(loose, dict):
                entry["app"] = loose.get("app")
        except ValueError:
            pass
        self._log(entry)
        detail = f"{rej.detail} {echo}".strip()
        return 200, "application/json", self._failure(rej.code, detail), None

    def _failure(self, code: str, detail: str) -> bytes:
        return failure_body(code, detail)

    def _page(self, req: dict[str, Any], mode: str | None, started: float) -> bytes:
        apps = [req["app"]] if isinstance(req["app"], str) else req["app"]
        offset = req.get("offset", 0)
        size = req.get("limit")
        if self.max_page_size is not None:
            size = self.max_page_size if size is None else min(size, self.max_page_size)
        url = req.get("url")
        cache_key = None
        if self.static_rows is not None and mode is None and url is None:
            cache_key = (tuple(apps), offset, size, req.get("day") is None)
            with self._lock:
                cached = self._page_cache.get(cache_key)
            if cached is not None:
                return cached
        rows = self._request_rows(apps, req["year"], req["month"], req.get("day"), url)
        if mode is None:
            body = page_body(rows, offset, size, time.perf_counter() - started)
        else:
            body = self._fault_page(mode, apps, rows, offset, size, started)
        if cache_key is not None:
            with self._lock:
                self._page_cache[cache_key] = body
        return body

    def _request_rows(
        self, apps: list[str], year: int, month: int, day: int | None, url: Any
    ) -> list[tuple[str, int, int]]:
        """The rows a request asks for: its apps' (by bytes when several), its urls only."""
        rows: list[tuple[str, int, int]] = []
        for a in apps:
            rows.extend(self._rows(a, year, month, day))
        if len(apps) > 1:
            rows.sort(key=lambda r: (-r[1], r[0]))
        if url is not None:
            wanted = {url} if isinstance(url, str) else set(url)
            rows = [r for r in rows if r[0] in wanted]
        return rows
