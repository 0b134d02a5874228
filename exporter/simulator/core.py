"""The :class:`Simulator`: the usage data, the answers, the faults and the server in one."""

from __future__ import annotations

from .data import DEMO_API_KEY, DEMO_API_SECRET, DEMO_CDN_ID, SimClock
from .faults import Faults
from .server import Serving


class Simulator(Faults, Serving):
    """The usage.vse API on loopback. Thread-safe; usable as a context manager.

    ``late_seconds``: the API reports traffic that late; ``timestamp_window``: the request
    timestamps it accepts, in seconds either side of its clock; ``max_page_size``: it sends
    at most that many rows per page whatever the limit asked; ``static_rows``: app -> rows
    (video, bytes, requests) served instead of the synthetic data (the benchmark).
    """

    def __init__(
        self,
        cdn_id: int = DEMO_CDN_ID,
        api_key: str = DEMO_API_KEY,
        api_secret: str = DEMO_API_SECRET,
        apps: dict[str, int] | None = None,
        clock: SimClock | None = None,
        tz: str = "UTC",
        seed: int = 0,
        late_seconds: float = 0,
        timestamp_window: float = 300,
        max_page_size: int | None = None,
        static_rows: dict[str, list[tuple[str, int, int]]] | None = None,
    ) -> None:
        self.cdn_id = cdn_id
        self.api_key = api_key
        self.api_secret = api_secret
        self.timestamp_window = float(timestamp_window)
        self._init_data(apps, clock, tz, seed, late_seconds, static_rows)
        self._init_answers(max_page_size)
        self._init_faults()
        self._init_server()
