"""Discovery (issue 17) on the daemon as a user runs it: `python -m exporter` with
discovery on and no `apps:` serves the simulator's apps; an app created in the simulator shows
up after the next listing (a reload asks app.list at once, so the test need not wait for
discovery.interval's 60 s minimum) with counters starting from a baseline; a deleted one
leaves /metrics and the state file; a failed listing keeps the apps; a reload with new
discovery settings applies them; the landing page marks discovered apps."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, free_port, http_get, samples, sim_config, stop_process, wait_for

from exporter.simulator import Simulator

# usage only from add_traffic: nothing reported before 30 days have passed, so the counters
# can be checked to the byte
NO_ORGANIC = 30 * 86400


@pytest.fixture
def sim():
    with Simulator(apps={"news": 4, "sport": 3}, late_seconds=NO_ORGANIC) as s:
        yield s


def write_config(path: Path, sim, **discovery) -> None:
    data = sim_config(
        sim,
        poll={"interval": "1s", "retries": 0},
        discovery={"enabled": True, **discovery},
        state={"path": str(path.parent / "state.json")},
    )
    del data["apps"]
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)


def scrape(url: str) -> dict:
    status, _, body = http_get(url + "/metrics", timeout=5)
    assert status == 200
    return samples(body)


def state_apps(path: Path) -> set[str]:
    """The apps of the state file's one account (the simulator's cdn_id)."""
    (apps,) = json.loads(path.read_text())["accounts"].values()
    return set(apps)


def per_app(got: dict, name: str) -> dict[str, float]:
    return {dict(k[1])["app"]: v for k, v in got.items() if k[0] == name and k[1]}


@pytest.fixture
def daemon(tmp_path, sim):
    config = tmp_path / "config.yaml"
    write_config(config, sim)
    port = free_port()
    log = (tmp_path / "daemon.log").open("w")
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(config),
         "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
    )  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", config
    finally:
        stop_process(proc)
        log.close()


def up_apps(url: str) -> set[str]:
    try:
        return {a for a, v in per_app(scrape(url), "scaleengine_up").items() if v == 1}
    except OSError:
        return set()


def test_the_daemon_follows_the_accounts_apps(tmp_path, sim, daemon):
    proc, url, config = daemon
    wait_for(lambda: up_apps(url) == {"news", "sport"}, 30, "the simulator's apps")
    status, _, _ = http_get(url + "/-/ready")
    assert status == 200
    wait_for(lambda: marked(url) == 2, 15, "the landing page marking both")

    # an app created in the account: polled after the next listing, from a baseline
    sim.add_app("weather", videos=2)
    sim.add_traffic("weather", 9_000_000, 90)  # its day so far: never counted
    proc.send_signal(signal.SIGHUP)  # a reload lists at once
    wait_for(lambda: "weather" in up_apps(url), 30, "the new app")

    def counted():
        got = scrape(url)
        total = per_app(got, "scaleengine_vse_bytes_total").get("weather")
        return got if total is not None else None

    got = wait_for(counted, 30, "the new app's counter")
    assert per_app(got, "scaleengine_vse_app_day_bytes")["weather"] == 9_000_000
    assert per_app(got, "scaleengine_vse_bytes_total")["weather"] == 0
    sim.add_traffic("weather", 250_000, 3)
    wait_for(
        lambda: per_app(scrape(url), "scaleengine_vse_bytes_total")["weather"] == 250_000,
        30,
        "the new app's growth counted",
    )
    assert per_app(scrape(url), "scaleengine_vse_bytes_total")["weather"] == 250_000
    state = tmp_path / "state.json"
    wait_for(lambda: "weather" in state_apps(state), 10, "its state entry")

    # an app deleted in the account: its series and its state entry go
    sim.remove_app("sport")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: up_apps(url) == {"news", "weather"}, 30, "the deleted app gone")
    got = scrape(url)
    assert not [k for k in got if ("app", "sport") in k[1]]
    wait_for(lambda: "sport" not in state_apps(state), 10, "state entry")
    count = ("scaleengine_discovery_apps", (("account", str(sim.cdn_id)),))
    wait_for(lambda: scrape(url)[count] == 2, 10, "scaleengine_discovery_apps 2")

    # a failed listing keeps the apps, and says so
    sim.set_fault("app.list", "failure_0005")
    sim.remove_app("news")
    proc.send_signal(signal.SIGHUP)
    failures = (
        "scaleengine_discovery_failures_total",
        (("account", str(sim.cdn_id)), ("outcome", "api_0005")),
    )
    got = wait_for(lambda: (g := scrape(url)).get(failures) and g, 30, "the failure counted")
    assert got[failures] == 1
    assert up_apps(url) == {"news", "weather"}

    # a reload with new discovery settings applies them
    sim.set_fault("app.list", None)
    sim.add_app("news", videos=4)
    write_config(config, sim, exclude="^w")
    proc.send_signal(signal.SIGHUP)
    wait_for(lambda: up_apps(url) == {"news"}, 30, "the new exclude applied")
    wait_for(lambda: marked(url) == 1, 15, "the landing page with one discovered app")


def marked(url: str) -> int:
    """Apps the landing page marks as discovered (it may serve a page up to 5 s old)."""
    _, _, page = http_get(url + "/")
    return page.decode().count("discovered (app.list)")


def test_a_restarted_worker_goes_on_with_the_discovered_apps_and_failure_counts(sim, daemon):
    """kill -9 of the poll worker: the new one polls the apps discovered before (from the
    state file, its first listing failing) with their counters, and the failures counter
    goes on from the served value, never back to 1."""
    from test_cli import _worker_pid

    proc, url, _ = daemon
    wait_for(lambda: up_apps(url) == {"news", "sport"}, 30, "the simulator's apps")
    sim.add_traffic("news", 1_000, 1)
    total = ("scaleengine_vse_bytes_total", (("account", str(sim.cdn_id)), ("app", "news")))
    wait_for(lambda: scrape(url).get(total) == 1_000, 30, "news counted")
    sim.set_fault("app.list", "failure_0005")
    proc.send_signal(signal.SIGHUP)
    failures = (
        "scaleengine_discovery_failures_total",
        (("account", str(sim.cdn_id)), ("outcome", "api_0005")),
    )
    wait_for(lambda: scrape(url).get(failures) == 1, 30, "the first failure counted")
    first = wait_for(lambda: _worker_pid(proc.pid), 10, "the poll worker")
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: _worker_pid(proc.pid) not in (None, first), 20, "a new worker")
    wait_for(lambda: scrape(url).get(failures) == 2, 30, "its failed listing counted on")
    wait_for(lambda: up_apps(url) == {"news", "sport"}, 30, "the apps polled again")
    sim.add_traffic("news", 500, 1)
    wait_for(lambda: scrape(url).get(total) == 1_500, 30, "news counted on, not reset")
