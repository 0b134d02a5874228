"""One fetch of a poll: a day (or a month) of one app, and the back-off while the API is busy."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..scaleengine import ApiError, UsageResult
from .apps import AppState
from .base import Clock, log

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import PollConfig


def fetch(
    st: AppState,
    poll: PollConfig,
    clock: Clock,
    year: int,
    month: int,
    day: int | None,
    deadline: float,
) -> UsageResult:
    """The app's usage of a day (``day`` None: the month); no request while backing off."""
    now = clock()
    if now < st.busy_until and st.busy_error is not None:
        # backing off: no request; the error says so and is not counted again
        err = st.busy_error
        left = st.busy_until - now
        skipped = ApiError(
            f"{err.message}; backing off, next request in {left:.0f}s",
            err.outcome,
            False,
            err.code,
            busy=True,
        )
        skipped.backing_off = True
        raise skipped
    try:
        result = st.client.fetch_usage(
            st.config.name, st.config.urls, year, month, day, deadline=deadline
        )
    except ApiError as err:
        if err.busy:
            back_off(st, poll, err, now)
        else:
            st.busy_delay = 0.0
        raise
    st.busy_delay = 0.0
    st.skipped_rows += result.skipped
    st.incomplete_rows += result.incomplete
    return result


def back_off(st: AppState, poll: PollConfig, err: ApiError, now: float) -> None:
    """Busy: wait poll.busy_backoff, doubling while it lasts, capped at busy_backoff_max;
    a longer Retry-After wins (capped too)."""
    delay = poll.busy_backoff if st.busy_delay <= 0 else st.busy_delay * 2
    delay = min(max(delay, err.retry_after or 0.0), poll.busy_backoff_max)
    st.busy_delay = delay
    st.busy_until = now + delay
    st.busy_error = err
    log.warning(
        "API busy, backing off",
        extra={**st.key._asdict(), "outcome": err.outcome, "seconds": round(delay)},
    )
