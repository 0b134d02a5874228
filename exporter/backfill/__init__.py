"""``scaleengine-exporter backfill``: past days of usage.vse as OpenMetrics for promtool.

For every configured app and every day D of the range, usage.vse is read with the daemon's
client (signing, pagination and its checks, retries) and the day's final values are written as
samples at the last second of D in ``poll.timezone``, under the same series names and labels
the daemon exports. ``promtool tsdb create-blocks-from openmetrics`` turns the file into TSDB
blocks, so that ``max_over_time(scaleengine_vse_app_day_bytes[1d])`` at each midnight gives that
day's total for backfilled and for live days alike.

Choices (see the README's "History" section):

- Month to date must be exact, so it is the sum of the day totals of days 1..D. ``--from`` is
  therefore taken back to the first day of its month; those extra days are read and written
  too (they are as final as the others).
- The output file is also the record of what has been read: a rerun reads it, keeps every
  complete (app, day) it holds, fetches only the rest and writes the merged file again. The
  file is replaced atomically (temporary file, fsync, rename) every ``CHECKPOINT_SECONDS`` and at
  the end, so an interrupted or failed run loses at most that much and a rerun never writes a
  sample twice.

Modules:

- ``plan``: the days of a range (from the first of ``--from``'s month, at most 400), one day
  of one app fetched (error 1000 waited out) and folded like the daemon folds it.
- ``output``: the output file: read back (only complete app-days, refused if not ours),
  rendered as OpenMetrics with month to date, written atomically.
- ``progress``: days done per app on stderr, a bar on a terminal.
- ``runner``: :func:`run`: the apps' threads, checkpoints, Ctrl-C, the closing summary.
- ``command``: the flags and :func:`main` (``cli.py`` dispatches ``backfill`` to it).
"""

from .command import build_parser, main
from .output import (
    FAMILIES,
    MAX_OUTPUT_BYTES,
    OutputError,
    month_to_date,
    read_output,
    render,
    write_output,
)
from .plan import (
    BUSY_TRIES,
    DEFAULT_BUSY_BACKOFF,
    FATAL_OUTCOMES,
    MAX_DAYS,
    PROG,
    DayUsage,
    Key,
    check_range,
    day_timestamp,
    day_usage,
    fetch_day,
    plan_days,
)
from .progress import Progress
from .runner import CHECKPOINT_SECONDS, Failure, run

__all__ = [
    "BUSY_TRIES",
    "CHECKPOINT_SECONDS",
    "DEFAULT_BUSY_BACKOFF",
    "FAMILIES",
    "FATAL_OUTCOMES",
    "MAX_DAYS",
    "MAX_OUTPUT_BYTES",
    "PROG",
    "DayUsage",
    "Failure",
    "Key",
    "OutputError",
    "Progress",
    "build_parser",
    "check_range",
    "day_timestamp",
    "day_usage",
    "fetch_day",
    "main",
    "month_to_date",
    "plan_days",
    "read_output",
    "render",
    "run",
    "write_output",
]
