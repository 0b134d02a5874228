"""The client's defaults, one constant each (pydantic-free: the poll worker imports them).

schema.py's fields default to these, and exporter.scaleengine's client takes them when it is
built without a config (tests, bench), so the two cannot drift apart.
"""

from __future__ import annotations

DEFAULT_TIMEOUT = 10.0  # seconds for a whole request (scaleengine.timeout)
DEFAULT_PAGE_SIZE = 1000  # rows asked per page (poll.page_size)
DEFAULT_MAX_PAGES = 1000  # pages of one fetch (poll.max_pages)
DEFAULT_RETRIES = 3  # retries of a transient failure of one page (poll.retries)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer, decompressed
DEFAULT_MAX_FETCH_BYTES = 256 * 1024 * 1024  # what one fetch holds
DEFAULT_MAX_LABEL_LENGTH = 1024  # bytes of UTF-8 per video_url label (limits.max_label_length)
