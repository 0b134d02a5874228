"""The daemon's memory footprint, as a user runs it: the two long-lived processes (the serving
process and its poll worker) hold at most 64 MB together at 1,000 series after their first
polls, and the serving process never loads pydantic or the poll stack.

The modules are read two ways the daemon cannot fake: the serving and worker processes'
/proc/PID/maps (pydantic_core's compiled module would be mapped there), and the list the
serving process writes of its own ``sys.modules`` as it exits
($SCALEENGINE_EXPORTER_MODULES_FILE).

The package's bytecode is written first, as pip writes it when it installs the exporter (the
Docker image has it): with PYTHONDONTWRITEBYTECODE set and no .pyc, each process would compile
our modules from source at start and keep about 0.3 MB more than an installed exporter does.
"""

from __future__ import annotations

import compileall
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, free_port, http_get, wait_for

from exporter.simulator import Simulator

KEY = "FOOTPRINTKEY0000000000000000000001"
SECRET = "footprint-secret-000000000000000000000000000000000000000000000000"
APPS = 10
SERIES = 1000  # videos over all apps, as bench/RESULTS.md counts series
# never in the serving process: config validation and the poll stack
NOT_SERVING = ("pydantic", "pydantic_core", "yaml", "requests", "urllib3", "tenacity",
               "apscheduler")  # fmt: skip


@pytest.fixture
def sim():
    per_app = SERIES // APPS
    rows = {
        f"app{a}": [(f"sestore/app{a}/video-{v:06d}.mp4", 1000 + v, 1 + v % 7)
                    for v in range(per_app)]
        for a in range(APPS)
    }  # fmt: skip
    with Simulator(
        api_key=KEY, api_secret=SECRET, apps={a: 1 for a in rows}, static_rows=rows
    ) as s:
        yield s


def _config(sim: Simulator, tmp_path: Path) -> Path:
    apps = "".join(f"  - {a}\n" for a in sim.apps)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(
        f"scaleengine:\n  api_url: {sim.url}\n  cdn_id: {sim.cdn_id}\n  api_key: {KEY}\n"
        f"  api_secret: {SECRET}\n  timeout: 5s\napps:\n{apps}"
        "poll:\n  interval: 1h\n  month_interval: off\n  late_data_window: off\n"
        f"limits:\n  max_videos_per_app: {SERIES}\n"
        f"state:\n  path: {tmp_path / 'state.json'}\n"
    )
    cfg.chmod(0o600)
    return cfg


def _children(pid: int) -> list[int]:
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(entry))
    return out


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for {pid}")


def _all_polled(url: str) -> bool:
    try:
        status, _, body = http_get(url + "/metrics", timeout=5)
    except OSError:
        return False
    return status == 200 and body.count(b"\nscaleengine_vse_day_bytes{") == SERIES


def test_serving_process_and_worker_fit_64_mb_and_serving_loads_no_poll_stack(tmp_path, sim):
    compileall.compile_dir(str(ROOT / "exporter"), quiet=1)  # as installed (see above)
    modules_file = tmp_path / "modules.txt"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    env["SCALEENGINE_EXPORTER_MODULES_FILE"] = str(modules_file)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "stderr.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(_config(sim, tmp_path)),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        wait_for(lambda: _all_polled(url), 60, "the first polls of all 1,000 series")
        # the command line became the serving process: same PID, the lean module
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes().split(b"\0")
        assert b"exporter.serving" in cmdline, cmdline
        workers = _children(proc.pid)
        assert len(workers) == 1, workers
        worker = workers[0]
        for pid in (proc.pid, worker):
            maps = Path(f"/proc/{pid}/maps").read_text()
            assert "pydantic_core" not in maps, f"pydantic loaded in {pid}"
        serving_kb, worker_kb = _rss_kb(proc.pid), _rss_kb(worker)
        assert serving_kb + worker_kb <= 64 * 1024, (serving_kb, worker_kb)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(15)
    assert code == 0, log_path.read_text()
    loaded = set(modules_file.read_text().split())
    assert {"exporter.web.server", "exporter.daemon"} <= loaded  # the real list, written at exit
    top = {name.split(".")[0] for name in loaded}
    assert not top.intersection(NOT_SERVING), sorted(top.intersection(NOT_SERVING))
    assert "Traceback" not in log_path.read_text()
