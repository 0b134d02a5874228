"""The dashboard's queries as Grafana sends them, evaluated by a real Prometheus.

Two setups:

- Rate panels with the default 5 m poll and a 30 s scrape, scaled down by 60 (poll.interval
  5 s, scrape every 0.5 s): the exporter polls the simulator over HTTP, Prometheus scrapes the
  exporter, and every point of each rate panel's query must lie near the simulator's true
  delivery rate. The query the dashboard had before (no min interval) reads 0, 0, 0, spike.
- Two accounts sharing an app name (an exposition with the `account` label, as the exporter
  writes it with several accounts, served to Prometheus from a file): with one account
  chosen no query returns the other's series, and with All the two never mix.

Grafana is emulated where it fills in variables: ``$__interval`` is the larger of the panel's
min interval (variables substituted; without one, the datasource's scrape interval) and
range / max data points (Grafana's rounding of the latter is left out: the min interval
dominates in every case here); ``$__rate_interval`` is max($__interval + scrape interval,
4 x scrape interval), as Grafana documents it; a query variable's value is its query's
result as Grafana lists it ("{} 13 1700000000000") through the variable's regex.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from helpers import free_port, sim_config, start_prometheus, stop_process

from exporter.simulator import Simulator

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "grafana" / "scaleengine-usage.json"

POLL = 5.0  # poll.interval: the default 5 m, divided by 60
SCRAPE = 0.5  # Prometheus' scrape interval and the datasource's: 30 s divided by 60
RANGE = 30.0  # seconds of the panel evaluated, ending now
MAX_DATA_POINTS = 1000
# Every point of a rate panel within this factor of the truth: with 2.5 poll intervals and
# a scrape per window, a window holds 2 or 3 counter steps (0.70..1.24 of the truth with the
# scheduler's 10 % jitter); a window holding none reads 0, one holding a single step 2.5x.
FACTOR = 1.5


# --------------------------------------------------------------------------- Prometheus


@dataclass
class Prometheus:
    url: str
    proc: subprocess.Popen
    log: Path

    def api(self, path: str, **params: str) -> dict | list:
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            pytest.fail(f"{path} {params}: HTTP {err.code}: {err.read()[:500]!r}")
        assert body["status"] == "success", body
        return body["data"]

    def query(self, expr: str) -> list[dict]:
        return self.api("/api/v1/query", query=expr)["result"]


def wait_for(what: str, check: Callable[[], object], timeout: float, *procs, log=None) -> None:
    """check() until truthy; fail after ``timeout`` s or when one of ``procs`` has exited."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for proc in procs:
            if proc.poll() is not None:
                pytest.fail(f"{what}: {proc.args[0]} exited\n{_tail(log)}")
        try:
            if check():
                return
        except (OSError, AssertionError, pytest.fail.Exception):
            pass
        time.sleep(0.3)
    pytest.fail(f"timed out after {timeout:g}s waiting for {what}\n{_tail(log)}")


def _tail(log: Path | None) -> str:
    return log.read_text(errors="replace")[-3000:] if log is not None and log.exists() else ""


def ready(url: str) -> bool:
    with urllib.request.urlopen(url + "/-/ready", timeout=5) as resp:
        return resp.status == 200


# --------------------------------------------------------------------------- Grafana


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def panel(title: str) -> dict:
    for p in dashboard()["panels"]:
        if p.get("title") == title:
            return p
    raise AssertionError(f"no panel {title!r}")


def variable(name: str) -> dict:
    return {v["name"]: v for v in dashboard()["templating"]["list"]}[name]


def seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h|d)", duration)
    assert match, f"unexpected duration {duration!r}"
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(match.group(1)) * units[match.group(2)]


def query_variable_value(prom: Prometheus, var: dict) -> str:
    """A query_result() variable's value: the first result as Grafana lists it, through the
    variable's regex (its first group)."""
    match = re.fullmatch(r"query_result\((.*)\)", var["query"])
    assert match, var["query"]
    result = prom.query(match.group(1))
    assert result, f"variable {var['name']}: no result for {var['query']}"
    first = result[0]
    labels = ",".join(f'{k}="{v}"' for k, v in first["metric"].items() if k != "__name__")
    listed = f"{first['metric'].get('__name__', '')}{{{labels}}} {first['value'][1]} "
    listed += str(int(first["value"][0] * 1000))
    regex = re.fullmatch(r"/(.*)/", var["regex"])
    assert regex, var["regex"]
    picked = re.search(regex.group(1), listed)
    assert picked, f"variable {var['name']}: regex {var['regex']} misses {listed!r}"
    return picked.group(1)


def regex_values(values: list[str] | None) -> str:
    """A multi-value variable as Grafana's Prometheus datasource writes it; None is All."""
    if values is None:
        return ".*"
    escaped = [re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\\\1", v) for v in values]
    return "(" + "|".join(escaped) + ")"


def grafana_query(
    prom: Prometheus,
    the_panel: dict,
    expr: str,
    accounts: list[str] | None = None,
    apps: list[str] | None = None,
    scrape: float = SCRAPE,
) -> str:
    """``expr`` of ``the_panel`` with every variable filled in as Grafana does."""
    min_interval = the_panel.get("interval")
    if min_interval and "poll_window" in min_interval:
        window = query_variable_value(prom, variable("poll_window"))
        min_interval = min_interval.replace("${poll_window}", window)
        min_interval = min_interval.replace("$poll_window", window)
    low = seconds(min_interval) if min_interval else scrape
    interval = max(low, RANGE / MAX_DATA_POINTS)
    rate_interval = max(interval + scrape, 4 * scrape)
    filled = expr.replace("$__rate_interval", f"{round(rate_interval * 1000)}ms")
    filled = filled.replace("$__interval", f"{round(interval * 1000)}ms")
    filled = filled.replace("$account", regex_values(accounts))
    filled = filled.replace("$app", regex_values(apps))
    assert "$" not in filled, f"unfilled variable in {filled!r}"
    return filled


def query_range(prom: Prometheus, query: str, start: float, end: float, step: float) -> list:
    return prom.api(
        "/api/v1/query_range", query=query, start=f"{start:.3f}", end=f"{end:.3f}", step=str(step)
    )["result"]


def far_from(series: list, truth: dict[str, float], factor: float) -> list[str]:
    """Points of each app's series outside [truth / factor, truth * factor]."""
    bad = []
    for s in series:
        app = s["metric"]["app"]
        for t, v in s["values"]:
            ratio = float(v) / truth[app]
            if not 1 / factor <= ratio <= factor:
                bad.append(f"{app} t={float(t):.1f}: {float(v):.4g} ({ratio:.2f} x truth)")
    return bad


# --------------------------------------------------------------------------- rates


@dataclass
class Rates:
    prom: Prometheus
    sim: Simulator
    start: float
    end: float


@pytest.fixture(scope="module")
def rates(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rates]:
    """The simulator, the exporter polling it every 5 s, Prometheus scraping every 0.5 s;
    yields once RANGE seconds of steady rates (after a full window) are stored."""
    tmp = tmp_path_factory.mktemp("rates")
    sim = Simulator()
    sim.start()
    procs: list[subprocess.Popen] = []
    try:
        config = sim_config(
            sim, poll={"interval": f"{POLL:g}s", "month_interval": "off", "timezone": "UTC"}
        )
        config_path = tmp / "config.yaml"
        config_path.write_text(yaml.safe_dump(config))
        config_path.chmod(0o600)
        address = f"127.0.0.1:{free_port()}"
        log = tmp / "exporter.log"
        with log.open("wb") as out:
            exporter = subprocess.Popen(
                [sys.executable, "-m", "exporter", "--config", str(config_path)]
                + ["--web.listen-address", address],
                cwd=ROOT,
                stdout=out,
                stderr=subprocess.STDOUT,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        procs.append(exporter)
        prom_config = tmp / "prometheus.yml"
        prom_config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": f"{SCRAPE * 1000:g}ms"},
                    "scrape_configs": [
                        {"job_name": "scaleengine", "static_configs": [{"targets": [address]}]}
                    ],
                }
            )
        )
        url, proc, prom_log = start_prometheus(prom_config, tmp / "data", tmp, "1h")
        procs.append(proc)
        prom = Prometheus(url=url, proc=proc, log=prom_log)
        wait_for("Prometheus /-/ready", lambda: ready(url), 60, proc, log=prom_log)

        def counting() -> bool:
            result = prom.query("scaleengine_vse_bytes_total")
            return len(result) == len(sim.apps)

        wait_for("the bytes counters of every app", counting, 60, exporter, proc, log=log)
        # a full rate window (3 polls) before the range, then the range itself
        start = time.time() + 3 * POLL
        end = start + RANGE
        time.sleep(end - time.time() + 2 * SCRAPE)
        assert exporter.poll() is None, log.read_text()[-2000:]
        yield Rates(prom=prom, sim=sim, start=start, end=end)
    finally:
        for proc in procs:
            stop_process(proc)
        sim.stop()


def true_bits_per_second(rates: Rates) -> dict[str, float]:
    """Each app's average delivery rate over the test, from the simulator's own data (the
    exporter reports it a poll late: the curve moves well under 1 % in a minute)."""
    day = datetime.fromtimestamp(rates.start, UTC).date()
    t0, t1 = rates.start - 3 * POLL, rates.end
    return {
        app: 8
        * (rates.sim.reported(app, day, t1)[0] - rates.sim.reported(app, day, t0)[0])
        / (t1 - t0)
        for app in rates.sim.apps
    }


def test_delivery_rate_is_smooth_and_right(rates):
    """Every point (at every scrape, a superset of Grafana's steps) within FACTOR of the
    simulator's true rate: no 0, 0, 0, spike."""
    truth = true_bits_per_second(rates)
    assert all(v > 0 for v in truth.values()), truth
    the_panel = panel("Delivery rate")
    (target,) = the_panel["targets"]
    query = grafana_query(rates.prom, the_panel, target["expr"])
    series = query_range(rates.prom, query, rates.start, rates.end, SCRAPE)
    assert sorted(s["metric"]["app"] for s in series) == sorted(rates.sim.apps)
    assert all(len(s["values"]) >= RANGE / SCRAPE for s in series), series
    assert far_from(series, truth, FACTOR) == []
    # the window Grafana fills in: ceil(2.5 poll intervals) plus a scrape
    assert "[13500ms]" in query, query


def test_old_delivery_rate_query_reads_zero_then_spike(rates):
    """The panel as it was (no min interval: $__rate_interval = 4 scrapes = 2 s, less than a
    poll) fails the same check: zeros between spikes."""
    truth = true_bits_per_second(rates)
    old_panel = {"title": "Delivery rate (before)", "interval": None}
    expr = '8 * rate(scaleengine_vse_bytes_total{app=~"$app"}[$__rate_interval])'
    query = grafana_query(rates.prom, old_panel, expr)
    assert "[2000ms]" in query, query
    series = query_range(rates.prom, query, rates.start, rates.end, SCRAPE)
    bad = far_from(series, truth, FACTOR)
    assert bad, "the old query passed"
    zeros = [p for p in bad if ": 0 (" in p]
    spikes = [p for p in bad if float(p.rsplit("(", 1)[1].split(" ")[0]) > FACTOR]
    assert zeros and spikes, bad


def test_api_requests_rate_is_smooth(rates):
    """One request per app and poll (one page, month polls off): every point of the API
    requests panel within FACTOR of 1 / poll.interval."""
    the_panel = panel("API requests by outcome")
    (target,) = the_panel["targets"]
    query = grafana_query(rates.prom, the_panel, target["expr"])
    series = query_range(rates.prom, query, rates.start, rates.end, SCRAPE)
    assert {(s["metric"]["app"], s["metric"]["outcome"]) for s in series} == {
        (app, "success") for app in rates.sim.apps
    }
    assert far_from(series, dict.fromkeys(rates.sim.apps, 1 / POLL), FACTOR) == []


def test_poll_window_follows_the_exporter(rates):
    """The hidden variable reads the exporter's poll.interval: ceil(2.5 x 5 s) = 13 s."""
    assert query_variable_value(rates.prom, variable("poll_window")) == "13"
    assert rates.prom.query("scaleengine_poll_interval_seconds")[0]["value"][1] == "5"


# --------------------------------------------------------------------------- accounts

# Two accounts share demo-origin: prod's 21 videos carry the traffic (its top 20 are the
# dashboard's), partner's same-named videos little; each account also has an app of its own.
ACCOUNTS = {"prod": ["demo-origin", "live-events"], "partner": ["demo-origin", "vod-library"]}


def two_accounts_exposition() -> str:
    lines = []
    per_app = {
        "scaleengine_up": 1,
        "scaleengine_last_success_timestamp_seconds": 1.7e9,
        "scaleengine_poll_duration_seconds": 0.2,
        "scaleengine_vse_app_day_bytes": 9e9,
        "scaleengine_vse_app_day_bytes_budget": 10e9,
        "scaleengine_vse_app_day_requests": 1000,
        "scaleengine_vse_app_day_videos": 21,
        "scaleengine_vse_app_month_bytes": 1e12,
        "scaleengine_vse_app_month_bytes_budget": 2e12,
        "scaleengine_vse_app_month_requests": 30000,
        "scaleengine_vse_bytes_total": 5e9,
        "scaleengine_vse_skipped_rows_total": 0,
    }
    for account, apps in ACCOUNTS.items():
        for app in apps:
            labels = f'account="{account}",app="{app}"'
            lines += [f"{name}{{{labels}}} {value:g}" for name, value in per_app.items()]
            lines.append(f'scaleengine_api_requests_total{{{labels},outcome="success"}} 7')
            for i in range(21):
                video = f'video_url="{app}/video{i:02d}.mp4"'
                scale = 1e9 if account == "prod" else 1e3
                lines.append(f"scaleengine_vse_day_bytes{{{labels},{video}}} {(i + 1) * scale:g}")
                lines.append(f"scaleengine_vse_day_requests{{{labels},{video}}} {i + 1}")
    lines.append("scaleengine_poll_interval_seconds 300")
    lines.append('scaleengine_exporter_build_info{version="x"} 1')
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def accounts_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Prometheus]:
    """Prometheus scraping a fixed exposition with two accounts (served from memory)."""
    tmp = tmp_path_factory.mktemp("accounts")
    body = two_accounts_exposition().encode()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    proc = None
    try:
        config = tmp / "prometheus.yml"
        target = f"127.0.0.1:{server.server_address[1]}"
        config.write_text(
            yaml.safe_dump(
                {
                    "global": {"scrape_interval": "1s"},
                    "scrape_configs": [
                        {"job_name": "scaleengine", "static_configs": [{"targets": [target]}]}
                    ],
                }
            )
        )
        url, proc, log = start_prometheus(config, tmp / "data", tmp, "1h")
        prom = Prometheus(url=url, proc=proc, log=log)
        wait_for("Prometheus /-/ready", lambda: ready(url), 60, proc, log=log)
        wait_for(
            "scrapes of the two accounts",
            lambda: len(prom.query("count_over_time(scaleengine_up[1m]) >= 3")) == 4,
            60,
            proc,
            log=log,
        )
        yield prom
    finally:
        if proc is not None:
            stop_process(proc)
        server.shutdown()


def every_query() -> list[tuple[dict, str]]:
    return [(p, t["expr"]) for p in dashboard()["panels"] for t in p.get("targets", [])]


def label_values(prom: Prometheus, name: str, accounts: list[str] | None) -> list[str]:
    """The values a label_values() variable offers, its $account filled in."""
    match = re.fullmatch(r"label_values\((.+),\s*(\w+)\)", variable(name)["query"])
    assert match, variable(name)["query"]
    selector = match.group(1).replace("$account", regex_values(accounts))
    return sorted(prom.api(f"/api/v1/label/{match.group(2)}/values", **{"match[]": selector}))


def test_variables_offer_accounts_and_their_apps(accounts_prometheus):
    prom = accounts_prometheus
    assert label_values(prom, "account", None) == ["partner", "prod"]
    assert label_values(prom, "app", ["partner"]) == ["demo-origin", "vod-library"]
    assert label_values(prom, "app", None) == ["demo-origin", "live-events", "vod-library"]


@pytest.mark.parametrize("account", ["prod", "partner"])
def test_one_account_chosen_shows_only_its_series(accounts_prometheus, account):
    prom = accounts_prometheus
    for the_panel, expr in every_query():
        query = grafana_query(prom, the_panel, expr, accounts=[account], scrape=1.0)
        result = prom.query(query)
        assert result, f"{the_panel['title']}: no series for {query}"
        if "scaleengine_exporter_build_info" in expr:
            continue
        apps = {s["metric"].get("app") for s in result}
        accounts = {s["metric"].get("account") for s in result}
        assert accounts == {account}, f"{the_panel['title']}: {accounts} ({query})"
        assert apps <= set(ACCOUNTS[account]), f"{the_panel['title']}: {apps}"


def test_all_accounts_keep_a_shared_app_apart(accounts_prometheus):
    """demo-origin of prod and of partner are two series in every per-app query, and the top
    videos table pairs each video's requests with its own account's bytes."""
    prom = accounts_prometheus
    for the_panel, expr in every_query():
        if "scaleengine_exporter_build_info" in expr or "video_url" in expr:
            continue
        result = prom.query(grafana_query(prom, the_panel, expr, apps=["demo-origin"], scrape=1.0))
        shared = sorted(s["metric"].get("account") for s in result)
        assert shared[:2] == ["partner", "prod"] and len(set(shared)) == 2, the_panel["title"]
    (top,) = [p for p, e in every_query() if e.startswith("topk(20")]
    by_ref = {t["refId"]: grafana_query(prom, top, t["expr"], scrape=1.0) for t in top["targets"]}
    top_bytes = {tuple(sorted(s["metric"].items())) for s in prom.query(by_ref["A"])}
    requests = {tuple(sorted(s["metric"].items())) for s in prom.query(by_ref["B"])}
    strip = lambda key: tuple(kv for kv in key if kv[0] != "__name__")  # noqa: E731
    assert len(top_bytes) == 20 and {dict(k)["account"] for k in top_bytes} == {"prod"}
    assert {strip(k) for k in requests} == {strip(k) for k in top_bytes}
