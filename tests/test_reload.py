"""Config reload of the real daemon: SIGHUP and POST /-/reload, against the simulator."""

from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import urllib.request

import pytest
from helpers import ROOT, free_port, http_get, samples, wait_for

from exporter.simulator import Simulator

KEY = "RELOADKEY0000000000000000000000001"
SECRET = "reload-secret-0000000000000000000000000000000000000000000000000000"


@pytest.fixture
def sim():
    rows = {
        "news": [("news/a.mp4", 1000, 1)],
        "sport": [("sport/b.mp4", 500, 1)],
        "movies": [("movies/c.mp4", 700, 1)],
    }
    apps = {name: 1 for name in rows}
    with Simulator(api_key=KEY, api_secret=SECRET, apps=apps, static_rows=rows) as s:
        yield s


def write(path, sim, apps: str, listen: str = "") -> None:
    path.write_text(
        f"""scaleengine:
  api_url: {sim.url}
  cdn_id: {sim.cdn_id}
  api_key: {KEY}
  api_secret: {SECRET}
  timeout: 2s
apps:
{apps}
poll:
  interval: 1s
  month_interval: off
  retries: 0
{listen}"""
    )
    path.chmod(0o600)


def set_rows(sim: Simulator, app: str, rows: list) -> None:
    """New static rows for an app (the simulator caches static pages: drop the cache)."""
    sim.static_rows[app] = rows
    sim._page_cache.clear()


def scrape(url: str) -> dict:
    status, _, body = http_get(url + "/metrics", timeout=5)
    assert status == 200
    return samples(body)


def value(s: dict, name: str, app: str) -> float | None:
    return s.get((name, (("account", "4242"), ("app", app))))  # the simulator's cdn_id


def post(url: str) -> tuple[int, str]:
    # no body, no form content type (urllib gives one to data=b""): as `curl -X POST`
    req = urllib.request.Request(url + "/-/reload", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def test_sighup_and_post_reload_change_apps_budgets_keep_counters(tmp_path, sim):
    cfg = tmp_path / "config.yaml"
    state = tmp_path / "state.json"
    log_path = tmp_path / "stderr.log"
    news = "  - name: news\n    daily_bytes_budget: 1MB\n"
    write(cfg, sim, news + "  - sport\n", listen=f"state:\n  path: {state}\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(cfg), "--web.enable-lifecycle",
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        wait_for(lambda: value(scrape_ok(url), "scaleengine_up", "sport") == 1, 30, "sport up")
        # the first poll of a fresh start sets today's baseline; growth after it counts
        set_rows(sim, "news", [("news/a.mp4", 3000, 4)])
        wait_for(
            lambda: value(scrape_ok(url), "scaleengine_vse_bytes_total", "news") == 2000,
            30,
            "news counter at 2000",
        )
        before = scrape(url)
        ts = ("scaleengine_exporter_config_last_reload_success_timestamp_seconds", ())
        started_ts = before[ts]
        assert before[("scaleengine_exporter_config_last_reload_successful", ())] == 1

        # sport out, movies in, news' budget changed; a new state file needs a restart
        write(
            cfg,
            sim,
            "  - name: news\n    daily_bytes_budget: 2MB\n  - movies\n",
            listen=f"state:\n  path: {tmp_path / 'other.json'}\n",
        )
        proc.send_signal(signal.SIGHUP)

        def reloaded():
            s = scrape_ok(url)
            apps = {dict(k[1]).get("app") for k in s} - {None}
            return (
                s
                if apps == {"news", "movies"}
                and value(s, "scaleengine_vse_app_day_bytes", "movies") == 700
                else None
            )

        s = wait_for(reloaded, 30, "sport's series gone and movies polled")
        assert value(s, "scaleengine_vse_app_day_bytes_budget", "news") == 2_000_000
        assert value(s, "scaleengine_vse_bytes_total", "news") == 2000  # not reset
        assert value(s, "scaleengine_vse_bytes_total", "movies") == 0  # a fresh start's baseline
        assert s[("scaleengine_exporter_config_last_reload_successful", ())] == 1
        assert s[ts] > started_ts
        set_rows(sim, "news", [("news/a.mp4", 3500, 5)])
        wait_for(
            lambda: value(scrape_ok(url), "scaleengine_vse_bytes_total", "news") == 2500,
            30,
            "news' counter going on from 2000",
        )
        log_text = log_path.read_text()
        assert "need a restart" in log_text and "settings=state.path" in log_text
        assert not (tmp_path / "other.json").exists()
        assert '"sport"' not in state.read_text() and '"movies"' in state.read_text()
        assert "config reloaded" in log_text

        # a broken file keeps the last good config and says why
        good = cfg.read_text()
        cfg.write_text(good.replace("apps:", "apps: [", 1))
        proc.send_signal(signal.SIGHUP)
        ok = ("scaleengine_exporter_config_last_reload_successful", ())
        s = wait_for(lambda: (x := scrape_ok(url)).get(ok) == 0 and x, 30, "a failed reload")
        assert value(s, "scaleengine_up", "movies") == 1
        wait_for(lambda: "config reload failed" in log_path.read_text(), 10, "the failure logged")
        assert "YAML syntax error" in log_path.read_text()
        assert proc.poll() is None, "SIGHUP must not end the exporter"

        # POST /-/reload: 500 with the reason while the file is bad, 200 once it is fixed
        status, text = post(url)
        assert status == 500 and "YAML syntax error" in text
        cfg.write_text(good.replace("  - movies\n", "  - movies\n  - sport\n"))
        status, text = post(url)
        assert status == 200, text
        s = wait_for(
            lambda: value(scrape_ok(url), "scaleengine_up", "sport") == 1 and scrape_ok(url),
            30,
            "sport back after POST /-/reload",
        )
        assert s[ok] == 1
        assert KEY not in log_path.read_text() and SECRET not in log_path.read_text()
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "Traceback" not in log_path.read_text()


def scrape_ok(url: str) -> dict:
    try:
        return scrape(url)
    except OSError:
        return {}


def test_a_reload_of_include_and_max_label_length_judges_long_urls_as_sent(tmp_path, sim):
    """The client cuts and judges each URL as it reads it: a reload that sets
    max_label_length 100 and an include matching only the tail of a 5000-byte URL gives every
    app a new client, so that URL is kept under the label of its whole text (its first 83
    bytes, "~" and 16 hex digits of its SHA-256) and the rest folds into __other__."""
    long_url = "news/" + "x" * 4986 + "/tail.mp4"
    assert len(long_url) == 5000
    set_rows(sim, "news", [(long_url, 1000, 1), ("news/short.mp4", 200, 1)])
    cfg = tmp_path / "config.yaml"
    write(cfg, sim, "  - news\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    log_path = tmp_path / "stderr.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(cfg),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT,
        )  # fmt: skip

    def videos() -> dict[str, float]:
        return {
            dict(k[1])["video_url"]: v
            for k, v in scrape_ok(url).items()
            if k[0] == "scaleengine_vse_day_bytes"
        }

    try:
        first = wait_for(lambda: len(videos()) == 2 and videos(), 30, "news polled")
        assert first["news/short.mp4"] == 200
        label = long_url[:83] + "~" + hashlib.sha256(long_url.encode()).hexdigest()[:16]
        write(cfg, sim, "  - news\n", "limits:\n  max_label_length: 100\n"
              "  include: '/tail\\.mp4$'\n")  # fmt: skip
        proc.send_signal(signal.SIGHUP)
        want = {label: 1000, "__other__": 200}
        wait_for(lambda: videos() == want, 30, f"{want} after the reload")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    assert "Traceback" not in log_path.read_text()


def test_settings_that_need_a_restart_keep_their_values_and_are_logged(tmp_path, caplog):
    """The listen address and the web config file's content (TLS files, users) are bound at
    start: a reload keeps them and the log names them."""
    import logging

    import bcrypt

    from exporter.config import parse_config
    from exporter.reload import Reloader, ReloadStatus
    from exporter.web.webconfig import load_web_config

    web = tmp_path / "web.yml"
    hashed = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    web.write_text(f"basic_auth_users:\n  prom: '{hashed}'\n")

    def config(listen: str):
        return parse_config(
            {"scaleengine": {"cdn_id": 1, "api_key": KEY, "api_secret": SECRET}, "apps": ["a"],
             "web": {"listen_address": listen, "config_file": str(web)}},
            env={},
        )  # fmt: skip

    applied = []
    start = config(":8491")
    nxt = {"config": start}
    status = ReloadStatus()
    reloader = Reloader(lambda: nxt["config"], applied.append, start, load_web_config(web), status)
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert reloader() == (True, "config reloaded")
    assert not any("restart" in r.getMessage() for r in caplog.records)
    nxt["config"] = config("127.0.0.1:9000")
    web.write_text(web.read_text().replace("prom:", "other:"))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="exporter"):
        assert reloader()[0]
    warning = next(r for r in caplog.records if "need a restart" in r.getMessage())
    assert "web.listen_address" in warning.settings and "web.config_file" in warning.settings
    assert applied[-1].web.listen_address == ":8491"  # the running value stays
    assert status.successful


def test_reload_of_a_fifo_config_fails_at_once_is_counted_and_the_next_one_works(tmp_path, sim):
    """Issue 15 item 10: the config path replaced by a FIFO (no writer): POST /-/reload and
    SIGHUP fail within seconds (not hang), each counted; once the file is back, reloads work."""
    cfg = tmp_path / "config.yaml"
    write(cfg, sim, "  - news\n")
    good = cfg.read_text()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    log_path = tmp_path / "stderr.log"
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(cfg), "--web.enable-lifecycle",
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT,
        )  # fmt: skip
    ok = ("scaleengine_exporter_config_last_reload_successful", ())
    failures = ("scaleengine_exporter_config_reload_failures_total", ())
    try:
        wait_for(lambda: value(scrape_ok(url), "scaleengine_up", "news") == 1, 30, "news up")
        assert scrape_ok(url)[failures] == 0
        cfg.unlink()
        os.mkfifo(cfg)
        status, text = post(url)  # urllib's timeout (30 s) would fail a hang
        assert status == 500 and "not a regular file" in text, text
        s = wait_for(lambda: (x := scrape_ok(url)).get(ok) == 0 and x, 20, "a failed reload")
        assert s[failures] == 1
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: scrape_ok(url)[failures] == 2, 20, "the SIGHUP reload failing too")
        cfg.unlink()
        write(cfg, sim, "  - news\n  - sport\n")
        status, text = post(url)
        assert status == 200, text
        s = wait_for(
            lambda: value(scrape_ok(url), "scaleengine_up", "sport") == 1 and scrape_ok(url), 30
        )
        assert s[ok] == 1 and s[failures] == 2
        cfg.write_text(good)
        proc.send_signal(signal.SIGHUP)  # and SIGHUP works again too
        wait_for(lambda: "sport" not in str(scrape_ok(url)), 20, "sport removed by SIGHUP")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
    err = log_path.read_text()
    assert "Traceback" not in err and err.count("config reload failed") == 2, err


def test_a_reload_waiting_on_one_that_does_not_end_fails_and_is_counted(monkeypatch):
    """A reload still running (whatever holds it) makes the next one fail after the wait, not
    queue for ever; once it ends, reloads work again."""
    import threading

    from exporter import reload as reload_mod
    from exporter.config import parse_config

    monkeypatch.setattr(reload_mod, "RELOAD_WAIT_SECONDS", 0.5)
    config = parse_config({"scaleengine": {"cdn_id": 1, "api_key": "k", "api_secret": "s"},
                           "apps": ["a"]}, env={})  # fmt: skip
    release = threading.Event()
    entered = threading.Event()
    calls = []

    def load():
        calls.append(1)
        if len(calls) == 1:
            entered.set()
            release.wait(30)
        return config

    status = reload_mod.ReloadStatus()
    reloader = reload_mod.Reloader(load, lambda c: None, config, None, status)
    first = threading.Thread(target=reloader)
    first.start()
    assert entered.wait(10)
    ok, text = reloader()
    assert not ok and "another reload is still running" in text
    assert (status.successful, status.failures) == (False, 1)
    release.set()
    first.join(10)
    assert reloader() == (True, "config reloaded")
    assert (status.successful, status.failures) == (True, 1)


def test_poll_interval_gauge_follows_a_reload(tmp_path, sim):
    """scaleengine_poll_interval_seconds (the dashboard's rate windows are sized from it) is
    poll.interval, and a reload that changes poll.interval changes it."""
    cfg = tmp_path / "config.yaml"
    write(cfg, sim, "  - news\n")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(cfg),
         "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env, cwd=ROOT,
    )  # fmt: skip
    gauge = ("scaleengine_poll_interval_seconds", ())
    try:
        wait_for(lambda: scrape_ok(url).get(gauge) == 1.0, 30, "the gauge at poll.interval 1s")
        # polled once: the SIGHUP handler is installed by then (as in the tests above)
        wait_for(lambda: value(scrape_ok(url), "scaleengine_up", "news") == 1, 30, "news polled")
        cfg.write_text(cfg.read_text().replace("interval: 1s", "interval: 7m30s"))
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: scrape_ok(url).get(gauge) == 450.0, 30, "the gauge at 7m30s = 450")
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(10) == 0
