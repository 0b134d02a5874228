"""Fixtures: the exporter in demo mode and a real Prometheus scraping it.

Both run as subprocesses on loopback with ports picked at run time. Waits are bounded
and fail with the process's log tail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import free_port, start_prometheus, stop_process

ROOT = Path(__file__).resolve().parents[2]
ALERTS = ROOT / "prometheus" / "alerts.yml"

# The app whose daily budget the test config sets low: ScaleEngineDailyBudgetExceeded
# must fire for it (and only for it).
LOW_BUDGET_APP = "demo-origin"
DEMO_APPS = ("demo-origin", "live-events", "vod-library")
JOB = "scaleengine"


def http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


def wait_for(
    what: str,
    check: Callable[[], Any],
    timeout: float,
    proc: subprocess.Popen | None = None,
    log: Path | None = None,
    interval: float = 0.5,
) -> Any:
    """Call check() until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: process exited with {proc.returncode}\n{_tail(log)}")
        try:
            last = check()
            if last:
                return last
        except (OSError, ValueError, KeyError) as err:
            last = err
        time.sleep(interval)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})\n{_tail(log)}")


def _tail(log: Path | None, lines: int = 30) -> str:
    if log is None or not log.exists():
        return ""
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@dataclass
class Exporter:
    url: str  # http://127.0.0.1:PORT
    address: str  # 127.0.0.1:PORT
    proc: subprocess.Popen
    log: Path
    apps: tuple[str, ...] = DEMO_APPS
    low_budget_app: str = LOW_BUDGET_APP
    job: str = JOB

    def metrics(self) -> str:
        status, body = http_get(self.url + "/metrics")
        assert status == 200, status
        return body.decode()


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        status, body = http_get(f"{self.url}{path}?{query}" if query else self.url + path)
        data = json.loads(body)
        assert status == 200 and data.get("status") == "success", (path, params, data)
        return data["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("/api/v1/query", query=expr)["result"]

    def wait_for(self, what: str, check: Callable[[], Any], timeout: float) -> Any:
        return wait_for(what, check, timeout, self.proc, self.log)


@pytest.fixture(scope="module")
def exporter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Exporter]:
    """scaleengine-exporter --demo with a config that sets one app's daily budget low."""
    tmp = tmp_path_factory.mktemp("exporter")
    config = {
        "apps": [
            {
                "name": name,
                "daily_bytes_budget": "1KB" if name == LOW_BUDGET_APP else "1TiB",
                "monthly_bytes_budget": "100TiB",
            }
            for name in DEMO_APPS
        ],
        "poll": {"interval": "2s", "month_interval": "10s", "timezone": "UTC"},
        # discovery on (the demo's app list names these apps): its metrics are used by the
        # rules too
        "discovery": {"enabled": True},
        # with a state file, as in production: its metrics are used by the rules too
        "state": {"path": str(tmp / "state.json")},
    }
    config_path = tmp / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    config_path.chmod(0o600)
    address = f"127.0.0.1:{free_port()}"
    log = tmp / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--demo", "--config", str(config_path)]
            + ["--web.listen-address", address],
            cwd=ROOT,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    exp = Exporter(url=f"http://{address}", address=address, proc=proc, log=log)
    try:

        def polled() -> bool:
            status, body = http_get(exp.url + "/metrics")
            text = body.decode()
            return status == 200 and all(
                f'scaleengine_up{{account="4242",app="{app}"}} 1' in text for app in DEMO_APPS
            )

        wait_for("the exporter's first successful polls", polled, 30, proc, log)
        yield exp
    finally:
        stop_process(proc)


@pytest.fixture(scope="module")
def prometheus(
    exporter: Exporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Prometheus]:
    """Debian's prometheus scraping the exporter every second with alerts.yml loaded."""
    tmp = tmp_path_factory.mktemp("prometheus")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(ALERTS)],
        "scrape_configs": [{"job_name": JOB, "static_configs": [{"targets": [exporter.address]}]}],
    }
    config_path = tmp / "prometheus.yml"
    config_path.write_text(yaml.safe_dump(config))
    url, proc, log = start_prometheus(config_path, tmp / "data", tmp, "1h")
    prom = Prometheus(url=url, proc=proc, log=log)
    try:
        wait_for(
            "Prometheus /-/ready", lambda: http_get(prom.url + "/-/ready")[0] == 200, 60, proc, log
        )

        def scraped() -> bool:
            # Enough samples for rate() over a few seconds, for every app.
            result = prom.query(
                f'count_over_time(scaleengine_vse_bytes_total{{job="{JOB}"}}[1m]) >= 4'
            )
            return len(result) == len(DEMO_APPS)

        wait_for("four scrapes of the exporter", scraped, 60, proc, log)
        yield prom
    finally:
        stop_process(proc)
