"""``client_for``: the API client as the config sets it up (moving to the client package)."""

from __future__ import annotations

import time
from collections.abc import Callable

from ..config import Config
from ..scaleengine import ScaleEngineClient

Clock = Callable[[], float]


def client_for(
    config: Config,
    clock: Clock = time.time,
    on_request: Callable[[str], None] | None = None,
) -> ScaleEngineClient:
    """The API client as the config sets it up (the daemon's polls and backfill alike)."""
    se = config.scaleengine
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
