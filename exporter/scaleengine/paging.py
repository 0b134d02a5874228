"""One full read of a fetch, page by page: whether the pages moved while being read (so the
client reads again), the rows summed per video_url, and the fetch's memory bound.

Each page after the first starts one row early: that overlapping row must be the one the
previous page ended with (see ScaleEngineClient._fetch_usage).
"""

from __future__ import annotations

from typing import NamedTuple

from .errors import ApiError, server_text
from .parsing import Page, Row, UsageResult

# what one distinct video costs a fetch besides its URL's characters: its dict entries, tuple
# and ints (measured: about 250 bytes on CPython 3.11)
VIDEO_COST = 256


class _Step(NamedTuple):
    rows: list[Row]  # the page's rows not read before (the overlapping one dropped)
    returned: int  # rows the page adds, the unusable ones included
    incomplete: int


class Read:
    """The state of one full read; :meth:`take` each page asked at :meth:`offset` until
    ``done`` or until it names why the pages moved."""

    def __init__(
        self, app: str, page_size: int, max_pages: int, max_fetch_bytes: int, filtering: bool
    ) -> None:
        self.app = app
        self.page_size = page_size
        self.max_pages = max_pages
        self.max_fetch_bytes = max_fetch_bytes
        self.result = UsageResult(folded=set() if filtering else None)
        self.shape: dict[str, int] = {}  # rows per url, for the urls with more than one row
        self._first_page: dict[str, int] = {}  # url -> index of the page it was first seen on
        self._duplicates: list[str] = []
        self.count: int | None = None
        self.position = 0  # rows read so far (distinct positions)
        self.overlap: str | None = None  # the url the next page must start with
        self.size: int | None = None  # the server's page size, when it caps below page_size
        self.previous: list[Row] | None = None
        self.held = 0  # what the distinct videos cost (see VIDEO_COST), against max_fetch_bytes
        self.done = False

    def offset(self) -> int:
        """Where the next page starts: on the last row read, to see whether the pages moved."""
        return self.position - 1 if self.overlap is not None else self.position

    def take(self, page: Page, offset: int) -> str:
        """Add the page asked at ``offset``; why the pages moved, or "" (``done`` says whether
        the read is complete). ApiError for what reading again cannot fix."""
        self.result.pages += 1
        step = self._check(page, offset)
        if isinstance(step, str):
            return step
        if step is None:
            self.done = True
            return ""
        self._add(page, step.rows)
        result = self.result
        result.rows += len(step.rows)
        result.skipped += page.skipped
        result.incomplete += step.incomplete
        self.position += step.returned
        if self.position >= (self.count or 0):
            self.done = True
            return ""
        if result.pages >= self.max_pages:
            raise ApiError(
                f"max_pages ({self.max_pages}) reached at {self.position} of {self.count} rows"
                f" (app {self.app!r})",
                "pagination",
                False,
            )
        self.previous = page.rows
        self.overlap = page.tail if (self.size or 0) > 1 else None
        return ""

    def _check(self, page: Page, offset: int) -> _Step | str | None:
        """The page's new rows; why the pages moved; None when the read is complete."""
        if self.count is None:
            self.count = self.result.count = page.count
        elif page.count != self.count:
            return f"count changed from {self.count} to {page.count}"
        count, position = self.count, self.position
        rows = page.rows
        returned = len(rows) + page.skipped
        incomplete = page.incomplete
        if self.previous is not None and rows and rows == self.previous:
            raise ApiError(
                f"page at offset {offset} repeats the previous page: the API seems to"
                f" ignore offset (app {self.app!r})",
                "pagination",
                False,
            )
        if self.overlap is not None:
            if returned != 0 and page.lead != self.overlap:
                return f"the row before offset {position} changed"
            if returned != 0:
                rows = rows[1:]
                returned -= 1
                incomplete -= page.lead_incomplete
        if returned == 0:
            return (
                f"empty page at offset {offset} before count {count}" if position < count else None
            )
        if position + returned > count:
            return f"more rows than count ({position + returned} > {count})"
        page_len = returned + (1 if self.overlap is not None else 0)
        if self.size is None:
            self.size = page_len if page_len < self.page_size else self.page_size
        elif page_len < self.size and position + returned < count:
            return f"short page at offset {offset} ({page_len} < {self.size} rows)"
        return _Step(rows, returned, incomplete)

    def _add(self, page: Page, rows: list[Row]) -> None:
        """The rows summed per video_url; ApiError(too_large) past max_fetch_bytes."""
        if self.result.folded is not None:
            self.result.folded.update(page.folded)
        videos = self.result.videos
        pages = self.result.pages
        first_page = self._first_page
        for url, b, r in rows:
            old = videos.get(url)
            if old is None:
                videos[url] = (b, r)
                first_page[url] = pages
                self.held += len(url) + VIDEO_COST
                continue
            videos[url] = (old[0] + b, old[1] + r)
            self.shape[url] = self.shape.get(url, 1) + 1
            if first_page[url] != pages and len(self._duplicates) < 3:
                self._duplicates.append(url)
        if self.held > self.max_fetch_bytes:
            raise ApiError(
                f"the fetch would hold more than scaleengine.max_fetch_bytes"
                f" ({self.max_fetch_bytes} bytes: {len(videos)} videos after {pages} pages"
                f" of {self.count} rows): refused (app {self.app!r})",
                "too_large",
                False,
            )

    def duplicated(self) -> str:
        """The video_urls seen on two pages (at most 3), or ""."""
        if not self._duplicates:
            return ""
        return "the same video_url on two pages: " + ", ".join(
            repr(server_text(u, 80)) for u in self._duplicates
        )
