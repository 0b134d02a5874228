"""Exposition: the usage series rendered once per poll, the small live part at scrape time.

The per-video usage series (tens of thousands of lines for a large library) only change when a
poll swaps in a new snapshot, so :class:`Exposition` renders them then (the daemon's worker
once per poll cycle): one text fragment per app and metric family, joined into one body and
compressed once. A scrape
sends those stored bytes as they are and renders only the live self-metrics (up, counters, poll
durations, request outcomes, process metrics) through prometheus_client, which is a few dozen
lines. For gzip the stored part is kept as a sync-flushed raw deflate stream, so a scrape appends
the live part's deflate blocks and a trailer instead of recompressing megabytes: the result is
one ordinary gzip member.

The stored part contains gauges only, whose lines read the same in the Prometheus text format and
in OpenMetrics; the live part is rendered in whichever format the scraper negotiated, and ends
with OpenMetrics' ``# EOF``, so the stored part goes first.

The modules, each with one job:

- ``usage``: the stored usage families (:func:`usage_families`, their help texts) and the
  rendering of each app's fragments (:func:`render_app`, :func:`render_budgets`,
  :func:`escape_label`).
- ``live``: the live part's collectors, read at scrape time (:class:`LiveCollector` from the
  store, :class:`WorkerCollector` from the poll worker's /proc).
- ``exposition``: :class:`Exposition` (the stored part rendered and compressed once per
  change, a scrape's payload put together), :class:`StoredFile` (stored bytes handed over as
  a file) and content negotiation (:func:`negotiate`).

The names load on first use, and prometheus_client only with the live part: the poll worker,
which renders the stored part only, never loads it (about 1.5 MB of its memory).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .exposition import (
        GZIP_LEVEL,
        LIVE_TTL,
        OPENMETRICS_CONTENT_TYPE,
        RENDER_OUTCOME,
        TEXT_CONTENT_TYPE,
        Chunk,
        Exposition,
        StoredFile,
        negotiate,
    )
    from .live import LiveCollector, WorkerCollector
    from .usage import (
        Family,
        app_labels,
        escape_label,
        render_app,
        render_budgets,
        usage_families,
    )

_MODULES = {
    "exposition": [
        "GZIP_LEVEL",
        "LIVE_TTL",
        "OPENMETRICS_CONTENT_TYPE",
        "RENDER_OUTCOME",
        "TEXT_CONTENT_TYPE",
        "Chunk",
        "Exposition",
        "StoredFile",
        "negotiate",
    ],
    "live": ["LiveCollector", "WorkerCollector"],
    "usage": [
        "Family",
        "app_labels",
        "escape_label",
        "render_app",
        "render_budgets",
        "usage_families",
    ],
}
__all__ = [
    "GZIP_LEVEL",
    "LIVE_TTL",
    "OPENMETRICS_CONTENT_TYPE",
    "RENDER_OUTCOME",
    "TEXT_CONTENT_TYPE",
    "Chunk",
    "Exposition",
    "Family",
    "LiveCollector",
    "StoredFile",
    "WorkerCollector",
    "app_labels",
    "escape_label",
    "negotiate",
    "render_app",
    "render_budgets",
    "usage_families",
]


__getattr__, __dir__ = lazy_names(__name__, _MODULES, globals())
