"""The usual Python exporter, for comparison: the same rows (fetched once through the same
simulator) set row by row into prometheus_client Gauges with labels, and generate_latest at every
scrape via prometheus_client's start_http_server (which gzips when asked). Same metric names.

Prints ``READY <json>`` (load and set timings) and runs until its stdin closes.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from common import API_KEY, API_SECRET, CDN_ID, PAGE_SIZE, app_names
from prometheus_client import Gauge, start_http_server

from exporter.scaleengine import ScaleEngineClient


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--api-url", required=True)
    p.add_argument("--port", type=int, required=True)
    args = p.parse_args()
    day_bytes = Gauge(
        "scaleengine_vse_day_bytes", "Bytes delivered today per video.", ["app", "video_url"]
    )
    day_requests = Gauge(
        "scaleengine_vse_day_requests", "Requests received today per video.", ["app", "video_url"]
    )
    app_bytes = Gauge("scaleengine_vse_app_day_bytes", "Bytes delivered today by the app.", ["app"])
    app_requests = Gauge(
        "scaleengine_vse_app_day_requests", "Requests received today by the app.", ["app"]
    )
    app_videos = Gauge("scaleengine_vse_app_day_videos", "Videos with usage today.", ["app"])
    fetched = {}
    t0 = time.perf_counter()
    with ScaleEngineClient(args.api_url, CDN_ID, API_KEY, API_SECRET, page_size=PAGE_SIZE) as c:
        for app in app_names():
            fetched[app] = c.fetch_usage(app, None, 2026, 1, 1).videos
    t1 = time.perf_counter()
    for app, videos in fetched.items():
        total_b = total_r = 0
        for url, (b, r) in videos.items():
            day_bytes.labels(app, url).set(b)
            day_requests.labels(app, url).set(r)
            total_b += b
            total_r += r
        app_bytes.labels(app).set(total_b)
        app_requests.labels(app).set(total_r)
        app_videos.labels(app).set(len(videos))
    t2 = time.perf_counter()
    del fetched
    start_http_server(args.port, addr="127.0.0.1")
    print("READY " + json.dumps({"fetch_s": t1 - t0, "set_s": t2 - t1}), flush=True)
    sys.stdin.read()


if __name__ == "__main__":
    main()
