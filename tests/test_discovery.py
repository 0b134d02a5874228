"""Discovery (issue 17): every app app.list names is polled (filtered, capped at
discovery.max_apps) beside the configured ones. The poller against the simulator over real
HTTP, apps added and removed in the simulator at run time; `--once` as a user runs it.

tests/integration/test_discovery_daemon.py runs the daemon (serving process, worker, reload).
"""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from datetime import UTC, date, datetime

import pytest
import yaml
from helpers import ROOT, samples, sim_config, wait_for
from pydantic import ValidationError

from exporter.appkey import AppKey
from exporter.config import AppConfig, ConfigError, DiscoveryConfig, parse_config
from exporter.metrics import Exposition
from exporter.poller import Poller
from exporter.poller.discovery import select, usable
from exporter.simulator import SimClock, Simulator
from exporter.state import StateFile
from exporter.store import Store

APPS = {"alpha": 6, "beta": 4, "gamma": 3}


def ts(*args: int) -> float:
    return datetime(*args, tzinfo=UTC).timestamp()


@pytest.fixture
def sim():
    clock = SimClock(ts(2026, 3, 10, 15, 0))  # frozen: usage grows only by add_traffic
    with Simulator(apps=APPS, clock=clock, seed=3) as s:
        yield s


def config_for(sim, tmp_path=None, apps=None, **discovery):
    data = sim_config(
        sim, poll={"interval": "1m", "retries": 0}, discovery={"enabled": True, **discovery}
    )
    if apps is None:
        del data["apps"]
    else:
        data["apps"] = apps
    if tmp_path is not None:
        data["state"] = {"path": str(tmp_path / "state.json")}
    return parse_config(data, env={})


def acct(sim) -> str:
    """The single form's account: named by its cdn_id."""
    return str(sim.cdn_id)


def K(sim, app: str) -> AppKey:
    return AppKey(acct(sim), app)


def names(keys) -> list[str]:
    """The app names of keys, sorted (every test here has one account)."""
    return sorted(k.app for k in keys)


def make(sim, config):
    store = Store(config.app_keys())
    state = StateFile(config.state.path) if config.state.path else None
    poller = Poller(config, store, clock=sim.clock.now, state_file=state)
    return poller, store


def exposed(store: Store, config) -> dict:
    expo = Exposition(store, config.poll.timezone, {}, process_metrics=False)
    expo.render_now()
    return samples(expo.text())


def app_values(got: dict, name: str) -> dict[str, float]:
    return {dict(k[1])["app"]: v for k, v in got.items() if k[0] == name and k[1]}


def state_apps(tmp_path) -> set[str]:
    accounts = json.loads((tmp_path / "state.json").read_text())["accounts"]
    (apps,) = accounts.values()
    return set(apps)


def disc(store: Store, sim):
    """The account's discovery state (None while its discovery is off)."""
    return store.view().discovery.get(acct(sim))


def acc_label(sim, **more: str) -> tuple:
    return (("account", acct(sim)), *more.items())


# -- which apps a listing adds ----------------------------------------------------------


def test_the_default_cap_polls_1000_apps_and_leaves_out_the_1001st():
    settings = DiscoveryConfig(enabled=True)
    names = [f"app-{i:04d}" for i in range(1001)]
    under = select(names[:1000], set(), settings)
    assert len(under.apps) == 1000 and under.left_out == 0
    over = select(reversed(names), set(), settings)  # the order app.list gives does not matter
    assert len(over.apps) == 1000 and over.left_out == 1
    assert over.apps == tuple(names[:1000])  # the first 1000 by name; app-1000 left out


def test_include_exclude_search_the_name_and_configured_apps_are_not_discovered():
    settings = DiscoveryConfig(enabled=True, include="^live-|vod", exclude="test")
    got = select(["live-a", "live-test", "my-vod", "other", "live-b"], {"live-b"}, settings)
    assert got.apps == ("live-a", "my-vod")  # re.search: "vod" anywhere in the name


NAMES = ["ok", " spaced ", "", "tab\there", "nl\n", "\u00a0nbsp", "caf\u00e9", 'q"\\', "a b"]


def test_names_no_config_could_hold_are_left_out():
    got = select(NAMES, set(), DiscoveryConfig(enabled=True))
    assert (got.apps, got.unusable) == (("a b", "caf\u00e9", "ok", 'q"\\'), 5)


@pytest.mark.parametrize("name", NAMES)
def test_usable_is_the_app_configs_rule(name):
    try:
        AppConfig(name=name)
        valid = True
    except ValidationError:
        valid = False
    assert usable(name) == valid


@pytest.mark.parametrize("value, ok", [(1, True), (100000, True), (0, False), (100001, False)])
def test_max_apps_bounds(sim, value, ok):
    data = sim_config(sim, discovery={"enabled": True, "max_apps": value})
    if ok:
        assert parse_config(data, env={}).accounts[0].discovery.max_apps == value
    else:
        with pytest.raises(ConfigError, match="discovery.max_apps"):
            parse_config(data, env={})


# -- the poller -------------------------------------------------------------------------


def test_discovered_apps_are_polled_beside_configured_ones_with_their_budgets(sim):
    config = config_for(sim, apps=[{"name": "alpha", "daily_bytes_budget": "1GB"}, "typo"])
    poller, store = make(sim, config)
    assert not poller.ready  # discovery on: ready waits for the first listing
    assert poller.check_app_list()
    assert poller.poll_all() and poller.ready
    view = store.view()
    assert names(view.status) == ["alpha", "beta", "gamma", "typo"]
    assert disc(store, sim).apps == {"beta", "gamma"}  # alpha is configured, not discovered
    assert poller._apps[K(sim, "alpha")].config.daily_bytes_budget == 1_000_000_000
    # the unlisted one is still polled
    assert view.listed == {K(sim, "alpha"): None, K(sim, "typo"): ""}
    assert view.status[K(sim, "typo")].up


def test_without_apps_ready_waits_for_the_first_listing(sim):
    poller, _ = make(sim, config_for(sim))
    assert not poller.ready  # no app yet: not "every app polled"
    sim.set_fault("app.list", "failure_0005")
    assert not poller.check_app_list()
    assert poller.ready  # a listing ended: nothing more to wait for


def test_an_app_added_starts_from_a_baseline_and_a_removed_one_leaves_series_and_state(
    sim, tmp_path
):
    config = config_for(sim, tmp_path)
    poller, store = make(sim, config)
    assert poller.check_app_list() and poller.poll_all()
    assert state_apps(tmp_path) == {"alpha", "beta", "gamma"}
    sim.add_app("delta", videos=3)
    sim.add_traffic("delta", 7_000_000, 70)  # the day so far: never counted by us
    assert poller.check_app_list()
    assert poller.poll_app(K(sim, "delta"))
    got = exposed(store, config)
    assert app_values(got, "scaleengine_vse_app_day_bytes")["delta"] > 7_000_000
    assert app_values(got, "scaleengine_vse_bytes_total")["delta"] == 0
    sim.add_traffic("delta", 123_456, 7)
    for _ in range(2):  # growth is counted once two reads confirm it
        assert poller.poll_app(K(sim, "delta"))
    got = exposed(store, config)
    assert app_values(got, "scaleengine_vse_bytes_total")["delta"] == 123_456
    assert app_values(got, "scaleengine_vse_requests_total")["delta"] == 7
    assert "delta" in state_apps(tmp_path)

    sim.remove_app("beta")
    assert poller.check_app_list()
    got = exposed(store, config)
    assert "beta" not in app_values(got, "scaleengine_up")
    assert not [k for k in got if ("app", "beta") in k[1]]
    assert state_apps(tmp_path) == {"alpha", "delta", "gamma"}
    assert got[("scaleengine_discovery_apps", acc_label(sim))] == 3


@pytest.mark.parametrize(
    "fault, outcome",
    [("failure_0005", "api_0005"), ("http_500", "http_status"), ("timeout", "timeout"),
     ("bad_response", "bad_response"), ("empty", "empty")],
)  # fmt: skip
def test_a_failed_listing_keeps_the_last_good_list(sim, tmp_path, fault, outcome, caplog):
    config = config_for(sim, tmp_path)
    poller, store = make(sim, config)
    assert poller.check_app_list()
    first = disc(store, sim).last_success
    assert first == sim.clock.now()
    if fault == "bad_response":
        sim.app_list_override = json.dumps({"status": "success", "items": ["x"]}).encode()
    elif fault == "empty":
        sim.app_list_override = json.dumps({"status": "success", "data": []}).encode()
    else:
        sim.fault_delay = 1.5  # longer than the client's timeout
        sim.set_fault("app.list", fault)
    caplog.set_level(logging.WARNING, logger="exporter.poller")
    sim.clock.advance(60)
    assert not poller.check_app_list()
    assert poller.poll_all()
    view = store.view()
    assert names(view.status) == ["alpha", "beta", "gamma"]
    assert disc(store, sim).apps == {"alpha", "beta", "gamma"}
    assert disc(store, sim).failures == {outcome: 1}
    assert disc(store, sim).last_success == first
    assert state_apps(tmp_path) == {"alpha", "beta", "gamma"}
    got = exposed(store, config)
    assert got[("scaleengine_discovery_failures_total", acc_label(sim, outcome=outcome))] == 1
    assert got[("scaleengine_discovery_last_success_timestamp_seconds", acc_label(sim))] == first
    kept = [r for r in caplog.records if "keeps the last good list" in r.getMessage()]
    assert len(kept) == 1


def test_repeated_failures_are_logged_as_repeated_events_are(sim, caplog):
    poller, store = make(sim, config_for(sim))
    sim.set_fault("app.list", "failure_0005")
    caplog.set_level(logging.WARNING, logger="exporter.poller")
    for _ in range(12):
        assert not poller.check_app_list()
    assert disc(store, sim).failures == {"api_0005": 12}
    # no good listing yet: nothing is kept, and the line says so
    logged = [r for r in caplog.records if "app.list failed: discovery" in r.getMessage()]
    assert {r.getMessage() for r in logged} == {
        "app.list failed: discovery has no list of apps yet"
    }
    counts = [r.count for r in logged]
    assert counts == [1, 10]  # the 1st and the 10th: 1, 10, 100, every 1000th


@pytest.mark.parametrize("max_apps, polled, left_out", [(3, 3, 0), (2, 2, 1)])
def test_the_cap_just_at_and_just_past_the_listing(sim, caplog, max_apps, polled, left_out):
    config = config_for(sim, max_apps=max_apps)
    poller, store = make(sim, config)
    caplog.set_level(logging.WARNING, logger="exporter.poller")
    assert poller.check_app_list() and poller.check_app_list()  # twice: one warning
    assert names(store.view().status) == ["alpha", "beta", "gamma"][:polled]
    got = exposed(store, config)
    assert got[("scaleengine_discovery_apps_left_out", acc_label(sim))] == left_out
    warned = [r for r in caplog.records if "discovery.max_apps" in r.getMessage()]
    assert len(warned) == (1 if left_out else 0)


def test_a_restart_polls_the_apps_discovered_before_with_their_counters(sim, tmp_path):
    config = config_for(sim, tmp_path)
    poller, store = make(sim, config)
    assert poller.check_app_list() and poller.poll_all()
    sim.add_traffic("beta", 5_000, 5)
    assert poller.poll_all() and poller.poll_all()
    before = store.view().status[K(sim, "beta")].bytes_total
    assert before == 5_000
    poller.shutdown()
    sim.set_fault("app.list", "failure_0005")  # the new one's first listing fails
    again, store2 = make(sim, config)
    assert not again.check_app_list()
    assert names(again._apps) == ["alpha", "beta", "gamma"]
    assert again.poll_all() and again.poll_all()
    assert store2.view().status[K(sim, "beta")].bytes_total == before  # not reset


def test_a_poll_running_while_its_app_goes_and_comes_back_publishes_nothing(sim):
    """The old app's poll ends after the new one started from a baseline: its counters must
    not show (they would go down at the new app's first poll)."""
    poller, store = make(sim, config_for(sim))
    assert poller.check_app_list() and poller.poll_all()
    sim.add_traffic("beta", 5_000, 5)
    assert poller.poll_all() and poller.poll_all()
    assert store.view().status[K(sim, "beta")].bytes_total == 5_000
    sim.page_delay["beta"] = 1.0
    old = threading.Thread(target=poller.poll_app, args=(K(sim, "beta"),))
    old.start()
    wait_for(lambda: poller.in_flight == 1, 10, "the slow poll")
    sim.remove_app("beta")
    assert poller.check_app_list() and K(sim, "beta") not in store.view().status
    sim.add_app("beta", videos=4)
    assert poller.check_app_list()
    old.join(30)
    # the new app's: not known yet
    assert store.view().status[K(sim, "beta")].bytes_total is None
    sim.page_delay["beta"] = 0
    assert poller.poll_app(K(sim, "beta"))
    assert store.view().status[K(sim, "beta")].bytes_total == 0


def test_the_listing_runs_every_discovery_interval_and_a_reload_changes_it(sim):
    config = config_for(sim, interval="2m")
    poller, _ = make(sim, config)
    poller.start()
    try:
        job = poller._scheduler.get_job("app.list")
        assert job.trigger.interval.total_seconds() == 120
        poller.reconfigure(config_for(sim, interval="5m"))
        job = poller._scheduler.get_job("app.list")
        assert job.trigger.interval.total_seconds() == 300
        data = sim_config(sim, discovery={"enabled": False})
        poller.reconfigure(parse_config(data, env={}))
        job = poller._scheduler.get_job("app.list")
        assert job.trigger.interval.total_seconds() == 3600  # the hourly check, as before
    finally:
        poller.shutdown()


def test_a_reload_applies_new_filters_and_turning_discovery_off_drops_the_discovered(sim):
    config = config_for(sim, apps=["alpha"])
    poller, store = make(sim, config)
    assert poller.check_app_list()
    assert names(store.view().status) == ["alpha", "beta", "gamma"]
    poller.reconfigure(config_for(sim, apps=["alpha"], exclude="^g"))
    assert names(store.view().status) == ["alpha", "beta"]
    assert disc(store, sim).apps == {"beta"}
    poller.reconfigure(config_for(sim, apps=["alpha"], enabled=False))
    assert names(store.view().status) == ["alpha"]
    assert disc(store, sim) is None


# -- --once, as a user runs it ----------------------------------------------------------


def run_once(tmp_path, data) -> subprocess.CompletedProcess:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip


def test_once_without_apps_polls_what_app_list_names(tmp_path):
    with Simulator(apps=APPS) as sim:
        data = sim_config(sim, discovery={"enabled": True, "exclude": "^g"})
        del data["apps"]
        proc = run_once(tmp_path, data)
        assert proc.returncode == 0, proc.stderr
        got = samples(proc.stdout)
        assert app_values(got, "scaleengine_up") == {"alpha": 1, "beta": 1}
        assert re.search(
            rf'^scaleengine_discovery_apps{{account="{sim.cdn_id}"}} 2', proc.stdout, re.M
        )
        sim.set_fault("app.list", "failure_0005")
        proc = run_once(tmp_path, data)
        assert proc.returncode == 1  # nothing to poll is not a success
        assert "discovery has no list of apps yet" in proc.stderr
        assert "Traceback" not in proc.stderr


def test_the_simulator_adds_and_removes_apps_at_run_time(sim):
    from exporter.scaleengine import ScaleEngineClient

    with ScaleEngineClient(
        sim.url, sim.cdn_id, sim.api_key, sim.api_secret, timeout=5, retries=0,
        clock=sim.clock.now,
    ) as client:  # fmt: skip
        sim.add_app("delta", videos=2)
        assert [e["name"] for e in client.list_apps()] == ["alpha", "beta", "delta", "gamma"]
        assert len(client.fetch_usage("delta", None, 2026, 3, 10).videos) == 2
        sim.remove_app("alpha")
        assert [e["name"] for e in client.list_apps()] == ["beta", "delta", "gamma"]
        assert client.fetch_usage("alpha", None, 2026, 3, 10).videos == {}
    assert [e["outcome"] for e in sim.request_log if e.get("command") == "app.list"] == [
        "success", "success",
    ]  # fmt: skip


def test_check_config_accepts_no_apps_with_discovery_and_says_so(tmp_path):
    with Simulator(apps=APPS) as sim:
        data = sim_config(sim, discovery={"enabled": True})
        del data["apps"]
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--check-config", "--config", str(path)],
            capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "config ok: 0 app(s) and those app.list names (discovery)\n"
    assert len(sim.request_log) == 0


def test_a_discovered_app_has_the_models_defaults_without_pydantic():
    """The worker builds a discovered app's settings without pydantic: they must equal what
    the model gives a bare name (all urls, no budgets), so a new AppConfig field breaks this."""
    from exporter.config import AppConfig, to_plain
    from exporter.poller.discovery import discovered_app

    for name in ("demo-origin", "ünïcode app"):
        assert discovered_app(name) == to_plain(AppConfig(name=name))


# -- several accounts -------------------------------------------------------------------


def two_accounts(prod: Simulator, partner: Simulator, **partner_discovery: object):
    def entry(name: str, sim: Simulator, apps: list, **discovery: object) -> dict:
        return {
            "name": name, "api_url": sim.url, "cdn_id": sim.cdn_id, "api_key": sim.api_key,
            "api_secret": sim.api_secret, "timeout": "1s", "apps": apps,
            "discovery": {"enabled": True, **discovery},
        }  # fmt: skip

    data = {
        "accounts": [
            entry("prod", prod, ["alpha"]),
            entry("partner", partner, [], **partner_discovery),
        ],
        "poll": {"interval": "1m", "retries": 0},
    }
    return parse_config(data, env={})


def test_each_account_discovers_on_its_own(tmp_path):
    """Two accounts with discovery: each polls what its own app.list names (the same name
    in both is two apps), its filters are its own, and one account's failed listing keeps
    its own apps and counts for it alone."""
    clock = SimClock(ts(2026, 3, 10, 15, 0))
    prod_sim = Simulator(
        apps={"alpha": 2, "beta": 2}, clock=clock, cdn_id=158,
        api_key="prod-key-0001", api_secret="prod-secret-0001",
    )  # fmt: skip
    partner_sim = Simulator(
        apps={"beta": 1, "gamma": 1, "test-x": 1}, clock=clock, cdn_id=9,
        api_key="partner-key-0002", api_secret="partner-secret-0002",
    )  # fmt: skip
    with prod_sim as prod, partner_sim as partner:
        config = two_accounts(prod, partner, exclude="^test-")
        store = Store(config.app_keys())
        poller = Poller(config, store, clock=clock.now)
        assert poller.check_app_list() and poller.poll_all()
        view = store.view()
        assert sorted(view.status) == [
            AppKey("partner", "beta"), AppKey("partner", "gamma"),
            AppKey("prod", "alpha"), AppKey("prod", "beta"),
        ]  # fmt: skip
        assert view.discovery["prod"].apps == {"beta"}  # alpha is configured there
        assert view.discovery["partner"].apps == {"beta", "gamma"}  # its exclude: test-x
        day = lambda acc, app: view.usage[AppKey(acc, app)].day_bytes  # noqa: E731
        today = date(2026, 3, 10)
        assert day("prod", "beta") == prod.reported("beta", today)[0]
        assert day("partner", "beta") == partner.reported("beta", today)[0]
        assert day("prod", "beta") != day("partner", "beta")

        partner.set_fault("app.list", "failure_0005")
        prod.add_app("delta", videos=1)
        assert not poller.check_app_list()  # the partner's failed
        view = store.view()
        assert view.discovery["partner"].failures == {"api_0005": 1}
        assert view.discovery["prod"].failures == {}
        assert view.discovery["prod"].apps == {"beta", "delta"}  # prod goes on
        assert view.discovery["partner"].apps == {"beta", "gamma"}  # kept
        got = exposed(store, config)
        assert got[("scaleengine_discovery_apps", (("account", "partner"),))] == 2
        assert got[("scaleengine_discovery_apps", (("account", "prod"),))] == 2
        poller.shutdown()
