"""Several accounts in one exporter (issue 17), as a user runs it: the daemon, ``--once``,
``--check-config``, ``list-apps`` and ``backfill`` in subprocesses, two simulators on loopback
standing in for two ScaleEngine accounts (their own cdn id, key and secret).

The same app name (news) lives in both accounts with different usage; the simulators serve
fixed rows, so every value is known exactly (1000 bytes in production, 700 in partner).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from helpers import (
    ROOT,
    free_port,
    http_get,
    promtool_check_metrics,
    samples,
    stop_process,
    wait_for,
)

from exporter.simulator import Simulator

PROD_ROWS = {"news": [("sestore/news/a.mp4", 600, 2), ("sestore/news/b.mp4", 400, 1)],
             "vod": [("sestore/vod/c.mp4", 5000, 9)]}  # fmt: skip
PARTNER_ROWS = {"news": [("sestore/news/x.mp4", 700, 4)]}
SECRETS = {"PROD_SECRET": "prod-secret-1234", "PARTNER_SECRET": "partner-secret-5678"}


@pytest.fixture
def sims():
    with Simulator(cdn_id=158, api_key="prod-key-1234", api_secret=SECRETS["PROD_SECRET"],
                   apps={"news": 2, "vod": 1}, static_rows=PROD_ROWS) as prod, \
         Simulator(cdn_id=9, api_key="partner-key-5678", api_secret=SECRETS["PARTNER_SECRET"],
                   apps={"news": 1}, static_rows=PARTNER_ROWS) as partner:  # fmt: skip
        yield prod, partner


def accounts(prod: Simulator, partner: Simulator, **partner_extra: object) -> list[dict]:
    """production: secret from $PROD_SECRET; partner: secret from a file (secrets/partner)."""
    return [
        {"name": "production", "api_url": prod.url, "cdn_id": prod.cdn_id,
         "api_key": prod.api_key, "api_secret_env": "PROD_SECRET", "timeout": "1s",
         "apps": ["news", "vod"]},
        {"name": "partner", "api_url": partner.url, "cdn_id": partner.cdn_id,
         "api_key": partner.api_key, "api_secret_file": "secrets/partner", "timeout": "1s",
         "apps": ["news"], **partner_extra},
    ]  # fmt: skip


def write_config(tmp_path: Path, data: dict, partner_secret: str | None = None) -> str:
    (tmp_path / "secrets").mkdir(exist_ok=True)
    secret = tmp_path / "secrets" / "partner"
    secret.write_text((partner_secret or SECRETS["PARTNER_SECRET"]) + "\n")
    secret.chmod(0o600)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return str(path)


def env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    return {**base, "PROD_SECRET": SECRETS["PROD_SECRET"], "PYTHONUNBUFFERED": "1", **extra}


def run(*args: str, environ: dict | None = None, timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True, text=True, env=environ or env(), cwd=ROOT, timeout=timeout,
    )  # fmt: skip


def value(s: dict, name: str, account: str, app: str, **labels: str) -> float | None:
    return s.get((name, tuple(sorted({"account": account, "app": app, **labels}.items()))))


def start_daemon(config: str, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    with open(log, "wb") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", config,
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=fh, stderr=subprocess.STDOUT, env=env(), cwd=ROOT,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}"


def scrape(url: str) -> dict | None:
    try:
        status, _, body = http_get(url + "/metrics", timeout=5)
    except OSError:
        return None
    return samples(body) if status == 200 else None


# -- one exporter, two accounts ------------------------------------------------------------


def test_the_same_app_in_two_accounts_is_two_series_each_from_its_own_account(tmp_path, sims):
    prod, partner = sims
    cfg = write_config(tmp_path, {"accounts": accounts(prod, partner)})
    proc = run("--once", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    s = samples(proc.stdout)
    assert value(s, "scaleengine_vse_app_day_bytes", "production", "news") == 1000
    assert value(s, "scaleengine_vse_app_day_requests", "production", "news") == 3
    assert value(s, "scaleengine_vse_app_day_bytes", "partner", "news") == 700
    assert value(s, "scaleengine_vse_app_day_requests", "partner", "news") == 4
    assert value(s, "scaleengine_vse_app_day_bytes", "production", "vod") == 5000
    assert value(s, "scaleengine_vse_day_bytes", "partner", "news",
                 video_url="sestore/news/x.mp4") == 700  # fmt: skip
    for account, app in (("production", "news"), ("production", "vod"), ("partner", "news")):
        assert value(s, "scaleengine_up", account, app) == 1
        assert value(s, "scaleengine_app_listed", account, app) == 1
    ups = {dict(k[1])["account"] + "/" + dict(k[1])["app"] for k in s if k[0] == "scaleengine_up"}
    assert ups == {"production/news", "production/vod", "partner/news"}
    assert promtool_check_metrics(proc.stdout.encode()).strip() == ""
    # each account asked its own API with its own cdn id, key and secret (the simulators
    # refuse any other: error 0001 or 0003), for its own apps only
    for sim, apps in ((prod, {"news", "vod"}), (partner, {"news"})):
        assert sim.request_log and all(e["code"] is None for e in sim.request_log)
        assert {e["app"] for e in sim.request_log if e.get("command") is None} == apps
    for secret in SECRETS.values():
        assert secret not in proc.stdout + proc.stderr


FAILURES = {
    # partner's mode -> (what is done to it, the outcome its polls fail with)
    "wrong_secret": "api_0003",
    "api_down": "connection",
    "busy": "api_1000",
}


@pytest.mark.parametrize("mode", sorted(FAILURES))
def test_one_account_failing_never_affects_the_other(tmp_path, sims, mode):
    """The daemon (poll worker process, real scheduler): partner's secret is wrong, its API
    is down, or it answers busy (error 1000: backed off). production's apps stay up with
    exact values and keep being polled; partner's app is down with the failure counted."""
    prod, partner = sims
    extra: dict = {}
    partner_secret = None
    if mode == "wrong_secret":
        partner_secret = "not-the-secret"
    elif mode == "api_down":
        extra = {"api_url": f"http://127.0.0.1:{free_port()}/stable/"}  # nothing listens
    else:
        partner.set_fault("news", "failure_1000")
    data = {"accounts": accounts(prod, partner, **extra),
            "poll": {"interval": "1s", "retries": 1, "busy_backoff": "1h",
                     "busy_backoff_max": "1h"}}  # fmt: skip
    cfg = write_config(tmp_path, data, partner_secret)
    log = tmp_path / "daemon.log"
    proc, url = start_daemon(cfg, log)
    outcome = FAILURES[mode]
    try:
        first = wait_for(
            lambda: (s := scrape(url))
            and value(s, "scaleengine_up", "production", "vod") == 1
            and value(s, "scaleengine_poll_errors_total", "partner", "news", outcome=outcome)
            and s,
            60,
            "production polled and partner failed",
        )
        since = value(first, "scaleengine_last_success_timestamp_seconds", "production", "news")
        # production goes on being polled while partner fails (or backs off for an hour)
        later = wait_for(
            lambda: (s := scrape(url))
            and value(s, "scaleengine_last_success_timestamp_seconds", "production", "news")
            > since + 1
            and value(s, "scaleengine_app_listed", "production", "news") == 1
            and s,
            30,
            "production polled again",
        )
    finally:
        stop_process(proc)
    text = log.read_text()
    for s in (first, later):
        assert value(s, "scaleengine_up", "production", "news") == 1, text[-3000:]
        assert value(s, "scaleengine_up", "production", "vod") == 1
        assert value(s, "scaleengine_vse_app_day_bytes", "production", "news") == 1000
        assert value(s, "scaleengine_vse_app_day_bytes", "production", "vod") == 5000
        assert value(s, "scaleengine_up", "partner", "news") == 0
        assert value(s, "scaleengine_vse_app_day_bytes", "partner", "news") is None
        assert not [k for k in s if k[0].startswith("scaleengine_poll_errors")
                    and ("account", "production") in k[1]]  # fmt: skip
    if mode == "busy":  # backed off for an hour: one request, not one per second
        assert value(later, "scaleengine_api_requests_total", "partner", "news",
                     outcome="api_1000") == 1  # fmt: skip
    if mode == "wrong_secret":  # app.list of partner fails too: its verdict stays absent
        assert value(later, "scaleengine_app_listed", "partner", "news") is None
    for secret in (*SECRETS.values(), "not-the-secret"):
        assert secret not in text


# -- the state file ----------------------------------------------------------------------


def legacy_state(day: str) -> str:
    """A state file as the exporter wrote it before several accounts (version 1, by app;
    StateFile.save: compact JSON, apps and days sorted): news at 123456789 bytes and 4321
    requests, its baseline of today what the simulator serves (1000 bytes, 3 requests)."""
    return (
        f'{{"version":1,"day":"{day}","apps":{{"news":{{"bytes_total":123456789,'
        f'"requests_total":4321,"baselines":{{"{day}":[1000,3]}}}},"vod":{{"bytes_total":55,'
        f'"requests_total":6,"baselines":{{"{day}":[5000,9]}}}}}}}}'
    )


def counters_until_shown(url: str, keys: list[tuple[str, str]]) -> dict:
    """Scrape until every key's byte counter is exported (a loaded state withholds them
    until today has been read twice)."""
    return wait_for(
        lambda: (s := scrape(url))
        and all(value(s, "scaleengine_vse_bytes_total", a, b) is not None for a, b in keys)
        and s,
        60,
        "the counters",
    )


def test_a_state_file_of_the_earlier_format_loads_into_the_single_account(tmp_path, sims):
    prod, _ = sims
    today = datetime.now(UTC).date().isoformat()
    state = tmp_path / "state.json"
    state.write_text(legacy_state(today))
    se = {"api_url": prod.url, "cdn_id": prod.cdn_id, "api_key": prod.api_key,
          "api_secret_env": "PROD_SECRET", "timeout": "1s"}  # fmt: skip
    data = {"scaleengine": se, "apps": ["news", "vod"], "poll": {"interval": "1s"},
            "state": {"path": str(state)}}  # fmt: skip
    proc, url = start_daemon(write_config(tmp_path, data), tmp_path / "daemon.log")
    try:
        s = counters_until_shown(url, [("158", "news"), ("158", "vod")])
    finally:
        stop_process(proc)
    log = (tmp_path / "daemon.log").read_text()
    # nothing lost, nothing reset, nothing counted twice: the rows have not grown
    assert value(s, "scaleengine_vse_bytes_total", "158", "news") == 123456789, log[-3000:]
    assert value(s, "scaleengine_vse_requests_total", "158", "news") == 4321
    assert value(s, "scaleengine_vse_bytes_total", "158", "vod") == 55
    assert value(s, "scaleengine_vse_requests_total", "158", "vod") == 6
    assert "earlier format" not in log  # one account: no warning
    saved = json.loads(state.read_text())  # saved again in the new format
    assert saved["version"] == 2
    assert saved["accounts"]["158"]["news"]["bytes_total"] == 123456789
    assert set(saved["accounts"]) == {"158"}


def test_with_several_accounts_an_old_state_file_goes_to_the_first_with_a_warning(tmp_path, sims):
    prod, partner = sims
    today = datetime.now(UTC).date().isoformat()
    state = tmp_path / "state.json"
    state.write_text(legacy_state(today))
    data = {"accounts": accounts(prod, partner), "poll": {"interval": "1s"},
            "state": {"path": str(state)}}  # fmt: skip
    proc, url = start_daemon(write_config(tmp_path, data), tmp_path / "daemon.log")
    try:
        keys = [("production", "news"), ("production", "vod"), ("partner", "news")]
        s = counters_until_shown(url, keys)
    finally:
        stop_process(proc)
    log = (tmp_path / "daemon.log").read_text()
    assert value(s, "scaleengine_vse_bytes_total", "production", "news") == 123456789
    assert value(s, "scaleengine_vse_requests_total", "production", "news") == 4321
    assert value(s, "scaleengine_vse_bytes_total", "production", "vod") == 55
    # partner's news is another app: a fresh start (today's 700 bytes only set its baseline)
    assert value(s, "scaleengine_vse_bytes_total", "partner", "news") == 0
    warnings = [line for line in log.splitlines() if "earlier format" in line]
    assert len(warnings) == 1 and "account=production" in warnings[0], log[-3000:]
    saved = json.loads(state.read_text())["accounts"]
    assert saved["production"]["news"]["bytes_total"] == 123456789
    assert saved["partner"]["news"]["bytes_total"] == 0


# -- --check-config in CI, list-apps, backfill ------------------------------------------------


def test_check_config_runs_without_the_secrets_and_names_those_it_could_not_check(tmp_path, sims):
    prod, partner = sims
    data = {"accounts": accounts(prod, partner)}
    data["accounts"][1]["api_secret_file"] = "/run/secrets/none/partner"
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)  # it holds the keys inline
    bare = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    bare.pop("PROD_SECRET", None)
    proc = run("--check-config", "--config", str(path), environ=bare)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        "not checked: accounts[0].api_secret ($PROD_SECRET not set)",
        "not checked: accounts[1].api_secret (file /run/secrets/none/partner missing)",
        "config ok: 3 app(s) in 2 accounts",
    ]
    assert proc.stderr == ""
    assert not prod.request_log and not partner.request_log  # checking asks no API
    # the daemon itself needs them: exit 2 naming the first
    proc = run("--once", "--config", str(path), environ=bare)
    assert proc.returncode == 2
    assert "accounts[0].api_secret: the environment variable PROD_SECRET is not set" in proc.stderr


def test_check_config_reports_every_error_of_the_file_one_per_line(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text(
        "accounts:\n"
        "  - {name: prod, cdn_id: 0, api_key: k, api_secret_env: S, apps: [a]}\n"
        "  - {name: prod, cdn_id: 2, api_key: k, api_secret: s, apps: [b, b]}\n"
        "  - {name: ' x', cdn_id: 3, api_key: k, api_secret: s, api_secret_file: f, apps: [c]}\n"
        "poll: {interval: 5m, timeout: 6m}\n"
        "scaleengine: {cdn_id: 1}\n"
    )
    path.chmod(0o600)  # it holds keys inline
    proc = run("--check-config", "--config", str(path), environ=env())
    assert proc.returncode == 2
    lines = proc.stderr.splitlines()
    expected = [
        "scaleengine: give either accounts: or scaleengine:",
        "accounts[1].name: account 'prod' is named twice",
        "accounts[2].api_secret: give either api_secret or api_secret_file, not both",
        "accounts[0].cdn_id: must be greater than 0",
        "accounts[1].apps[1].name: app 'b' is listed twice",
        "accounts[2].name: account name ' x' has surrounding spaces",
        "poll.timeout: must be at most poll.interval",
    ]
    assert len(lines) == len(expected), proc.stderr
    for line, fragment in zip(lines, expected, strict=True):
        assert line.startswith(f"scaleengine-exporter: error: {path}: "), line
        assert fragment in line, (fragment, line)
    assert "Traceback" not in proc.stderr and proc.stdout == ""


def test_list_apps_of_several_accounts(tmp_path, sims):
    prod, partner = sims
    cfg = write_config(tmp_path, {"accounts": accounts(prod, partner)})
    proc = run("list-apps", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "production\tnews\nproduction\tvod\npartner\tnews\n"
    proc = run("list-apps", "--config", cfg, "--account", "partner")
    assert (proc.returncode, proc.stdout) == (0, "news\n")
    proc = run("list-apps", "--config", cfg, "--format", "json")
    assert [(e["account"], e["name"]) for e in json.loads(proc.stdout)] == [
        ("production", "news"), ("production", "vod"), ("partner", "news")]  # fmt: skip
    proc = run("list-apps", "--config", cfg, "--account", "nobody")
    assert proc.returncode == 2 and "--account nobody: no such account" in proc.stderr
    # one account failing: its error (exit 1), the other's apps still listed
    cfg = write_config(tmp_path, {"accounts": accounts(prod, partner)}, "wrong-secret")
    proc = run("list-apps", "--config", cfg)
    assert proc.returncode == 1
    assert proc.stdout == "production\tnews\nproduction\tvod\n"
    assert "account partner:" in proc.stderr and "wrong-secret" not in proc.stderr


def test_backfill_reads_each_account_with_its_own_credentials(tmp_path, sims):
    prod, partner = sims
    cfg = write_config(tmp_path, {"accounts": accounts(prod, partner)})
    day = datetime.now(UTC).date() - timedelta(days=1)
    out = tmp_path / "backfill.om"
    proc = run("backfill", "--config", cfg, "--from", day.isoformat(), "--to", day.isoformat(),
               "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    s = {(k[0], k[1]): v for k, v in _om_samples(out.read_text()).items()}
    days = (day - day.replace(day=1)).days + 1  # backfill reads from the month's first day
    for account, app, nbytes in (("production", "news", 1000), ("production", "vod", 5000),
                                 ("partner", "news", 700)):  # fmt: skip
        labels = (("account", account), ("app", app))
        assert s[("scaleengine_vse_app_day_bytes", labels)] == [nbytes] * days
        assert s[("scaleengine_vse_app_month_bytes", labels)][-1] == nbytes * days
    # a rerun reads nothing again: the file's (account, app, day)s are kept
    prod.clear_log()
    partner.clear_log()
    proc = run("backfill", "--config", cfg, "--from", day.isoformat(), "--to", day.isoformat(),
               "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert not prod.request_log and not partner.request_log


def _om_samples(text: str) -> dict:
    """(name, sorted labels) -> the values in time order, from an OpenMetrics file."""
    from prometheus_client.openmetrics.parser import text_string_to_metric_families

    out: dict = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault((s.name, tuple(sorted(s.labels.items()))), []).append(s.value)
    return out


def test_daemon_sigterm_keeps_every_accounts_counters(tmp_path, sims):
    """The worker hands the serving process statuses and counters keyed by account: after
    a restart with the state file, both news series come back with their own values."""
    prod, partner = sims
    state = tmp_path / "state.json"
    data = {"accounts": accounts(prod, partner), "poll": {"interval": "1s"},
            "state": {"path": str(state)}}  # fmt: skip
    cfg = write_config(tmp_path, data)
    proc, url = start_daemon(cfg, tmp_path / "first.log")
    try:
        wait_for(  # today's first read: the baseline of a fresh start
            lambda: (s := scrape(url))
            and value(s, "scaleengine_vse_app_day_bytes", "production", "news") == 1000
            and value(s, "scaleengine_vse_app_day_bytes", "partner", "news") == 700,
            30,
            "a first poll",
        )
        prod.static_rows["news"].append(("sestore/news/new.mp4", 250, 1))  # production grows
        prod._page_cache.clear()  # as tests/test_reload.py does after changing the rows
        grown = wait_for(
            lambda: (s := scrape(url))
            and value(s, "scaleengine_vse_bytes_total", "production", "news") == 250
            and s,
            30,
            "production's growth counted",
        )
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)
    assert value(grown, "scaleengine_vse_bytes_total", "partner", "news") == 0
    saved = json.loads(state.read_text())["accounts"]
    assert saved["production"]["news"]["bytes_total"] == 250
    assert saved["partner"]["news"]["bytes_total"] == 0
    proc, url = start_daemon(cfg, tmp_path / "second.log")
    try:
        s = counters_until_shown(url, [("production", "news"), ("partner", "news")])
    finally:
        stop_process(proc)
    assert value(s, "scaleengine_vse_bytes_total", "production", "news") == 250
    assert value(s, "scaleengine_vse_bytes_total", "partner", "news") == 0


def test_a_reload_rebuilds_only_the_changed_accounts_clients(tmp_path, sims):
    """Poller.reconfigure: partner's secret fixed, production unchanged: partner's app gets
    a new client (and polls up), production's keeps its client, counters and data."""
    from exporter.appkey import AppKey
    from exporter.cli import Exporter
    from exporter.config import load_config

    prod, partner = sims
    cfg = write_config(tmp_path, {"accounts": accounts(prod, partner)}, "wrong-secret")
    exporter = Exporter(load_config(cfg, env=env()))
    poller = exporter.poller
    prod_key, partner_key = AppKey("production", "news"), AppKey("partner", "news")
    assert poller.poll_app(prod_key) and not poller.poll_app(partner_key)
    prod_client = poller._apps[prod_key].client
    partner_client = poller._apps[partner_key].client
    write_config(tmp_path, {"accounts": accounts(prod, partner)})  # the right secret now
    poller.reconfigure(load_config(cfg, env=env()))
    assert poller._apps[prod_key].client is prod_client
    assert poller._apps[partner_key].client is not partner_client
    assert poller.poll_app(partner_key)
    view = exporter.store.view()
    assert view.status[partner_key].up and view.usage[partner_key].day_bytes == 700
    assert view.status[prod_key].up and view.usage[prod_key].day_bytes == 1000
    poller.shutdown()


def test_demo_with_an_accounts_config_polls_the_simulator_for_every_account(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(
        "accounts:\n"
        "  - {name: production, cdn_id: 1, api_key_env: NOPE, apps: [demo-origin]}\n"
        "  - {name: partner, cdn_id: 2, api_secret_file: /nope, apps: [demo-origin, vod-library]}\n"
    )
    proc = run("--demo", "--once", "--config", str(path), environ=env())
    assert proc.returncode == 0, proc.stderr
    s = samples(proc.stdout)
    ups = {(dict(k[1])["account"], dict(k[1])["app"]) for k in s if k[0] == "scaleengine_up"}
    assert ups == {("production", "demo-origin"), ("partner", "demo-origin"),
                   ("partner", "vod-library")}  # fmt: skip
    assert all(v == 1 for k, v in s.items() if k[0] == "scaleengine_up")
