"""The simulator in its own process (so its CPU is not the exporter's), pre-warmed.

Serves ``--size`` video series over 10 apps from fixed rows, with every page pre-encoded (the
simulator caches the JSON of each static page; this process fetches every page once before it
reports ready). Prints ``READY <api_url>`` and runs until its stdin closes.
"""

from __future__ import annotations

import argparse
import sys
import time

from common import API_KEY, API_SECRET, CDN_ID, PAGE_SIZE, app_names, make_rows

from exporter.scaleengine import ScaleEngineClient
from exporter.simulator import Simulator


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, required=True)
    p.add_argument("--port", type=int, default=0)
    args = p.parse_args()
    rows = make_rows(args.size)
    sim = Simulator(
        cdn_id=CDN_ID,
        api_key=API_KEY,
        api_secret=API_SECRET,
        apps={a: 1 for a in app_names()},
        static_rows=rows,
        timestamp_window=3600,
    )
    url = sim.start("127.0.0.1", args.port)
    started = time.perf_counter()
    with ScaleEngineClient(url, CDN_ID, API_KEY, API_SECRET, page_size=PAGE_SIZE) as client:
        for app in app_names():
            res = client.fetch_usage(app, None, 2026, 1, 1)
            assert len(res.videos) == len(rows[app]), (app, len(res.videos))
    sim.request_log.clear()
    sim._log = lambda entry: None  # type: ignore[method-assign]  # no unbounded log in long runs
    print(f"READY {url} warmed in {time.perf_counter() - started:.2f}s", flush=True)
    sys.stdin.read()  # until the parent closes our stdin (or dies)
    sim.stop()


if __name__ == "__main__":
    main()
