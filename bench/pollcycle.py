"""In-process poll-cycle harness: a process whose only work is exporter.cli.Exporter's polls.

Builds the exporter exactly as the daemon does (Exporter(config), no HTTP server), then times
``poller.poll_all()`` (all apps, concurrently on the poller's bounded pool, one session each)
followed by ``exposition.render_now()`` (the per-poll rendering of text + gzip), with wall time
(perf_counter) and process CPU time (time.process_time, all threads). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import time

from common import rss_mb

from exporter.cli import Exporter
from exporter.config import load_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", required=True)
    p.add_argument("--cycles", type=int, default=3)
    p.add_argument("--expect", type=int, required=True)
    args = p.parse_args()
    exporter = Exporter(load_config(args.config))
    cycles = []
    for _ in range(args.cycles):
        w0, c0 = time.perf_counter(), time.process_time()
        ok = exporter.poller.poll_all()
        w1, c1 = time.perf_counter(), time.process_time()
        exporter.exposition.render_now()
        w2, c2 = time.perf_counter(), time.process_time()
        if not ok:
            raise SystemExit("a poll failed")
        series = exporter.exposition.stored().count(b"\nscaleengine_vse_day_bytes{")
        if series != args.expect:
            raise SystemExit(f"{series} series after the poll, expected {args.expect}")
        cycles.append(
            {
                "poll_wall": w1 - w0,
                "poll_cpu": c1 - c0,
                "render_wall": w2 - w1,
                "render_cpu": c2 - c1,
                "wall": w2 - w0,
                "cpu": c2 - c0,
                "rss_mb": rss_mb(os.getpid()),
            }
        )
    exporter.poller.shutdown()
    print(json.dumps(cycles), flush=True)


if __name__ == "__main__":
    main()
