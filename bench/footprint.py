"""The daemon's memory footprint alone: VmRSS of the serving process and of its poll worker
after the first poll, at each size (the full benchmark, bench/run.sh, measures it too, beside
the scrapes). Quick (about 10 s a size), so a change's effect on memory can be seen at once:

    .venv/bin/python bench/footprint.py [--sizes 1000,10000,100000] [--settle 2]

Prints one JSON line per size: {"size", "serving_mb", "worker_mb", "total_mb"}.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from common import precompile, rss_split_mb, wait_http
from run import BENCH, PY, ROOT, Proc, start_exporter, wait_complete, write_config


def measure(size: int, tmp: Path, settle: float) -> dict[str, float]:
    """Start the simulator and the daemon with ``size`` series; RSS after the first poll."""
    procs: list[Proc] = []
    try:
        sim = Proc(f"sim-{size}", [PY, str(BENCH / "sim_server.py"), "--size", str(size)], tmp,
                   stdin_pipe=True)  # fmt: skip
        procs.append(sim)
        api_url = sim.ready_line(timeout=120).split()[0]
        cfg = tmp / f"bench-{size}.yaml"
        write_config(cfg, api_url, size, "1h")
        exp, port, t0 = start_exporter(tmp, f"exporter-{size}", cfg)
        procs.append(exp)
        wait_http(port, "/metrics", t0 + 30)
        wait_complete(port, size, t0 + 120, exp)
        time.sleep(settle)  # the worker's last shipment and malloc_trim
        serving, worker = rss_split_mb(exp.pid)
        return {
            "size": size,
            "serving_mb": round(serving, 1),
            "worker_mb": round(worker, 1),
            "total_mb": round(serving + worker, 1),
        }
    finally:
        for p in reversed(procs):
            p.stop()


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="1000,10000,100000")
    p.add_argument("--settle", type=float, default=2.0, help="seconds after the first poll")
    args = p.parse_args()
    precompile(ROOT)
    with tempfile.TemporaryDirectory(prefix="footprint-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            print(json.dumps(measure(size, Path(tmp), args.settle)), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
