"""The standalone simulator: ``python -m exporter.simulator [--port 8099] ...``.

It prints its URL and the demo credentials, serves until SIGTERM or SIGINT (its own handlers:
a shell's background job starts with SIGINT ignored), then stops and exits 0. A port it cannot
listen on is a one-line error and exit code 2.
"""

from __future__ import annotations

import argparse
import errno
import signal
import sys
import threading
from collections.abc import Sequence
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .core import Simulator

PROG = "python -m exporter.simulator"


def _port(text: str) -> int:
    port = int(text)
    if not 0 <= port <= 65535:
        raise ValueError(text)
    return port


_port.__name__ = "port"  # argparse's message: "invalid port value"


def _time_zone(text: str) -> str:
    try:
        ZoneInfo(text)
    except (ZoneInfoNotFoundError, ValueError):
        raise argparse.ArgumentTypeError(f"unknown time zone {text!r}") from None
    return text


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="A stand-in for ScaleEngine's usage.vse API with demo data and credentials.",
    )
    p.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    p.add_argument(
        "--port", type=_port, default=8099,
        help="port to listen on, 0: any free port (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of the synthetic usage data (default: %(default)s)",
    )
    p.add_argument(
        "--tz", type=_time_zone, default="UTC",
        help="time zone of the API's days, an IANA name (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--late-seconds", type=float, default=0.0,
        help="report traffic this many seconds late, as the API's late data (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--timestamp-window", type=float, default=300.0,
        help="accept request timestamps this many seconds either side of the clock"
        " (default: %(default)s)",
    )  # fmt: skip
    p.add_argument(
        "--max-page-size", type=int, default=None,
        help="send at most this many rows per page, whatever the limit asked (default: no cap)",
    )  # fmt: skip
    return p


def _print_banner(sim: Simulator, url: str) -> None:
    print(f"ScaleEngine usage.vse simulator listening on {url}", flush=True)
    print("demo credentials (fake):", flush=True)
    print(f"  cdn_id:     {sim.cdn_id}", flush=True)
    print(f"  api_key:    {sim.api_key}", flush=True)
    print(f"  api_secret: {sim.api_secret}", flush=True)
    print(f"  apps:       {', '.join(sim.apps)}", flush=True)


def _fail(message: str) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator standalone until SIGTERM or SIGINT; the exit code."""
    args = build_parser().parse_args(argv)
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        stop.set()

    # our own handlers, first: SIGINT may come in ignored (a shell's background job)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    sim = Simulator(
        seed=args.seed, tz=args.tz, late_seconds=args.late_seconds,
        timestamp_window=args.timestamp_window, max_page_size=args.max_page_size,
    )  # fmt: skip
    try:
        url = sim.start(args.host, args.port)
    except OSError as err:
        hint = ""
        if err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
            hint = " (choose another with --host and --port, e.g. --port 8100)"
        return _fail(f"cannot listen on {args.host}:{args.port}: {err.strerror or err}{hint}")
    try:
        _print_banner(sim, url)
        while not stop.wait(1.0):
            pass
    finally:
        sim.stop()
    return 0
