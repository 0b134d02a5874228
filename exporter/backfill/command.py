"""`scaleengine-exporter backfill`'s command line: flags, checks before reading, exit codes."""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import date, datetime, timedelta
from datetime import time as dtime
from typing import IO

from .. import __version__
from ..config import Config, ConfigError, load_config
from ..logs import add_client_log_flags, log_level_of, set_secrets, setup_logging
from .discover import DiscoveryError, with_discovered
from .output import OutputError
from .plan import PROG, check_range
from .runner import run

_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")

DESCRIPTION = (
    "Read past days of usage.vse for every configured app (and, with discovery.enabled, "
    "every app app.list names) and write them as OpenMetrics "
    "with timestamps (one sample per series at the last second of each day in "
    "poll.timezone), for `promtool tsdb create-blocks-from openmetrics`. Month-to-date "
    "series need every day of the month, so reading starts on the first day of "
    "--from's month. Rerunning with the same --output keeps the days the file already "
    "holds and reads only the missing ones. Error 1000 (API busy) waits "
    "poll.busy_backoff (2 minutes when unset) and tries again, up to 5 times."
)
EPILOG = (
    "Exit status: 0 every day was read; 1 some app-day could not be read after retries "
    "(named on stderr; every other day is written: rerun to fill the gaps), or an "
    "account's app.list failed with discovery on (nothing read); 2 bad "
    "arguments or config. Progress goes to stderr."
)


def _day(value: str) -> date:
    if not _DATE_RE.fullmatch(value):
        raise argparse.ArgumentTypeError(f"{value!r} is not a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError as err:
        raise argparse.ArgumentTypeError(f"{value!r}: {err}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "--config",
        metavar="FILE",
        default="config.yaml",
        help="the exporter's YAML config: API credentials, apps, poll.timezone, "
        "poll.concurrency (apps read at once), limits (default config.yaml)",
    )
    p.add_argument(
        "--from",
        dest="start",
        metavar="YYYY-MM-DD",
        type=_day,
        required=True,
        help="first day to backfill (in poll.timezone); at most 400 days before --to",
    )
    p.add_argument(
        "--to",
        dest="end",
        metavar="YYYY-MM-DD",
        type=_day,
        help="last day to backfill, before today (default: yesterday in poll.timezone)",
    )
    p.add_argument(
        "--output",
        metavar="PATH",
        required=True,
        help="OpenMetrics file to write ('-' for stdout, which cannot resume); an existing "
        "file written by this command is kept and completed",
    )
    add_client_log_flags(p)
    p.add_argument("--version", action="version", version=f"scaleengine-exporter {__version__}")
    return p


def _check_output(parser: argparse.ArgumentParser, output: str) -> None:
    """--output's folder must exist and be writable: found out now, not after hours of reading."""
    if output == "-":
        return
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        parser.error(f"--output: directory {directory} does not exist")
    try:
        with tempfile.TemporaryFile(dir=directory):
            pass
    except OSError as err:
        parser.error(f"--output: cannot write in {directory}: {err.strerror or err}")


def _warn_late_data(config: Config, end: date, today: date, now: float, stream: IO[str]) -> None:
    """Yesterday may still receive late data: say for how long, since a rerun skips it."""
    late = config.poll.late_data_window
    midnight = datetime.combine(today, dtime(0), config.poll.tz).timestamp()
    if end == today - timedelta(days=1) and now - midnight < late:
        stream.write(
            f"{PROG}: warning: {end.isoformat()} may still receive late data for"
            f" {(late - (now - midnight)) / 60:.0f} more minutes (poll.late_data_window);"
            " its values are read as they are now and a rerun will not read it again\n"
        )


def main(
    argv: Sequence[str] | None = None,
    now: Callable[[], float] = time.time,
    stderr: IO[str] | None = None,
) -> int:
    """Entry point of ``scaleengine-exporter backfill``."""
    stream = stderr or sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    formatter = setup_logging(log_level_of(args), args.log_format, stream=stream)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        stream.write(f"{PROG}: error: {err}\n")
        return 2
    set_secrets(formatter, config.secret_values())
    today = datetime.fromtimestamp(now(), config.poll.tz).date()
    try:
        end = check_range(args.start, args.end, today)
    except ValueError as err:
        parser.error(str(err))
    _check_output(parser, args.output)
    _warn_late_data(config, end, today, now(), stream)
    try:
        config = with_discovered(config)
    except DiscoveryError as err:
        stream.write(f"{PROG}: error: {err}\n")
        return 1
    try:
        return run(config, args.start, end, args.output, stderr=stream)
    except OutputError as err:
        stream.write(f"{PROG}: error: {err}\n")
        return 2
    except OSError as err:  # writing the output failed (disk full, ...)
        stream.write(f"{PROG}: error: cannot write {args.output}: {err.strerror or err}\n")
        return 1
