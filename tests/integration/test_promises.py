"""README promises, each checked black-box as a user runs the exporter: ``--once`` or the daemon
as a subprocess, polling the simulator over real HTTP(S) on loopback, real promtool, and every
request the exporter sent checked afterwards by real PHP.

Each test here catches a deliberate bug that the rest of the suite let through (see
docs/mutation-testing.md for the table and how to re-run the check).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import re
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import bcrypt
import pytest
import yaml
from helpers import (
    ROOT,
    free_port,
    http_get,
    make_pki,
    php_verify_simulator,
    promtool_check_metrics,
    samples,
    wait_for,
)

from exporter.simulator import Simulator

KEY = "PROMISEKEY0Q2W9E4R1T6Y8U3I5O0P1A"
SECRET = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9"
CDN = 31


@pytest.fixture
def make_sim() -> Iterator[Callable[..., Simulator]]:
    """Start simulators on the real clock; on teardown real PHP checks every request they got."""
    started: list[Simulator] = []

    def make(apps: dict[str, int], ssl_context: ssl.SSLContext | None = None, **kw) -> Simulator:
        sim = Simulator(cdn_id=CDN, api_key=KEY, api_secret=SECRET, apps=apps, **kw)
        sim.record_bodies = True
        sim.start(ssl_context=ssl_context)
        started.append(sim)
        return sim

    yield make
    for sim in started:
        sim.stop()
    for sim in started:
        if any("body" in e for e in sim.request_log):
            php_verify_simulator(sim)


def write_config(path: Path, sim: Simulator, **sections: dict) -> Path:
    data: dict = {
        "scaleengine": {
            "api_url": sim.url,
            "cdn_id": CDN,
            "api_key": KEY,
            "api_secret": SECRET,
            "timeout": "5s",
        },
        "apps": list(sim.apps),
        "poll": {"retries": 0},
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    path.chmod(0o600)
    return path


def clean_env(extra: dict[str, str] | None = None) -> dict[str, str]:
    """The environment without our variables or any CA bundle that would trust a test CA."""
    drop = ("SCALEENGINE_", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "SSL_CERT_")
    env = {k: v for k, v in os.environ.items() if not k.startswith(drop)}
    env.update(extra or {})
    return env


def once(config: Path, *args: str, env: dict[str, str] | None = None):
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(env),
        cwd=ROOT,
    )


def value(s: dict, name: str, **labels: str) -> float | None:
    if "app" in labels:  # the single form's account: the cdn_id (no scaleengine.account)
        labels = {"account": str(CDN), **labels}
    return s.get((name, tuple(sorted(labels.items()))))


def fixed_zone(hours: int) -> str:
    """The IANA name of the fixed offset UTC+hours (Etc/GMT signs are inverted)."""
    return "Etc/UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def local_day(zone: str, at: float) -> date:
    return datetime.fromtimestamp(at, ZoneInfo(zone)).date()


def day_requests(sim: Simulator, app: str) -> list[dict]:
    """The day fetches the simulator answered for ``app`` (first page of each)."""
    return [
        e
        for e in list(sim.request_log)
        if e.get("app") == app and e.get("day") is not None and e.get("offset") == 0
    ]


# -- "today" is the current day in poll.timezone --------------------------------------------


def test_today_and_day_end_follow_poll_timezone(tmp_path, make_sim):
    # a zone whose date is not UTC's right now and whose midnight is hours away: UTC+14 from
    # 12:00 UTC on (its midnight is at 10:00 UTC, and yesterday is polled too until the default
    # late_data_window of 2 h has passed), UTC-12 before (its midnight is at noon UTC)
    zone = fixed_zone(14 if datetime.now(UTC).hour >= 12 else -12)
    sim = make_sim({"vod": 8}, tz=zone)
    cfg = write_config(tmp_path / "c.yaml", sim, poll={"timezone": zone})
    before = time.time()
    proc = once(cfg)
    after = time.time()
    assert proc.returncode == 0, proc.stderr
    today = local_day(zone, before)
    if local_day(zone, after) != today:
        pytest.fail("the zone's day changed during the run; run the test again", pytrace=False)
    assert today != datetime.fromtimestamp(before, UTC).date(), "the zone must differ from UTC"
    asked = {(e["year"], e["month"], e["day"]) for e in day_requests(sim, "vod")}
    assert asked == {(today.year, today.month, today.day)}, f"days fetched: {asked}"
    s = samples(proc.stdout)
    day_end = datetime.combine(today + timedelta(days=1), datetime.min.time(), ZoneInfo(zone))
    assert value(s, "scaleengine_vse_app_day_end_timestamp_seconds", app="vod") == (
        day_end.timestamp()
    )
    day_bytes = value(s, "scaleengine_vse_app_day_bytes", app="vod")
    assert sim.reported("vod", today, at=before)[0] <= day_bytes
    assert day_bytes <= sim.reported("vod", today, at=after)[0]


# -- state saved yesterday is loaded within the late window ---------------------------------


def test_state_saved_yesterday_is_loaded_within_the_late_window(tmp_path, make_sim):
    """Two runs on the real clock, in two zones: the first in a zone where it is 22:xx, so it
    saves its state on day D-1; the second in a zone two hours ahead, where it is 00:xx on day
    D, inside the default 2 h late window. The second must go on from the saved state: today
    counts from zero (the state says the exporter was running when the day began)."""
    hour = datetime.now(UTC).hour
    ahead = 24 - hour if hour > 10 else -hour  # local time 00:xx there
    zone_b, zone_a = fixed_zone(ahead), fixed_zone(ahead - 2)
    sim = make_sim({"vod": 10}, tz=zone_b)
    state = tmp_path / "state.json"
    poll = {"late_data_window": "2h", "month_interval": "off"}
    cfg_a = write_config(tmp_path / "a.yaml", sim, poll={**poll, "timezone": zone_a})
    cfg_b = write_config(tmp_path / "b.yaml", sim, poll={**poll, "timezone": zone_b})
    t0 = time.time()
    first = once(cfg_a, "--state.path", str(state))
    assert first.returncode == 0, first.stderr
    assert state.exists()
    second = once(cfg_b, "--state.path", str(state))
    assert second.returncode == 0, second.stderr
    now = datetime.fromtimestamp(time.time(), ZoneInfo(zone_b))
    if local_day(zone_b, t0) != now.date() or now.hour >= 2:
        pytest.fail("the run left the late window; run the test again", pytrace=False)
    s = samples(second.stdout)
    today_bytes = value(s, "scaleengine_vse_app_day_bytes", app="vod")
    assert today_bytes and today_bytes > 0
    # without the state, today and yesterday would only set baselines: a counter of 0
    assert value(s, "scaleengine_vse_bytes_total", app="vod") == today_bytes, second.stderr


# -- limits.include / exclude fold into __other__ -------------------------------------------


def test_include_and_exclude_fold_filtered_videos_into_other(tmp_path, make_sim):
    sim = make_sim({"vod": 20, "tv-live": 8})
    include, exclude = r"\.mp4$|_stream0[0-3]$", r"clip-00[0-6]"
    cfg = write_config(tmp_path / "c.yaml", sim, limits={"include": include, "exclude": exclude})
    proc = once(cfg)
    assert proc.returncode == 0, proc.stderr
    s = samples(proc.stdout)
    for app in sim.apps:
        asked = day_requests(sim, app)[0]  # the videos of the day the exporter fetched
        names = set(sim.reported_videos(app, asked["year"], asked["month"], asked["day"]))
        kept = {n for n in names if re.search(include, n) and not re.search(exclude, n)}
        assert kept and kept != names, "the filters must keep some videos and drop others"
        shown = {
            dict(k[1])["video_url"]: v
            for k, v in s.items()
            if k[0] == "scaleengine_vse_day_bytes" and dict(k[1])["app"] == app
        }
        other = shown.pop("__other__", None)
        assert set(shown) == kept, f"{app}: shown {sorted(shown)}, kept by the filters {kept}"
        assert other is not None, f"{app}: no __other__"
        total = value(s, "scaleengine_vse_app_day_bytes", app=app)
        assert other == total - sum(shown.values()) and other > 0


def _cut_label(url: str) -> str:
    """The label of ``url`` with limits.max_label_length 100: itself up to 100 bytes, else its
    first 83 bytes, "~" and 16 hex digits of its SHA-256 (100 bytes in all)."""
    raw = url.encode()
    if len(raw) <= 100:
        return url
    return raw[:83].decode() + "~" + hashlib.sha256(raw).hexdigest()[:16]


def _long_url_day(make_sim, tmp_path: Path, url: str, **limits: str) -> dict[str, float]:
    """``--once`` over a day of a URL of any length (700 bytes, 7 requests), a short .mp4, a
    stream and a real video named __other__, with max_label_length 100: the day_bytes
    series by video_url; the app's totals are checked exact."""
    rows = [(url, 700, 7), ("sestore/vod/short.mp4", 100, 1), ("vod_stream01", 50, 5),
            ("__other__", 20, 2)]  # fmt: skip
    sim = make_sim({"vod": 4}, static_rows={"vod": rows})
    cfg = write_config(tmp_path / "c.yaml", sim, limits={"max_label_length": 100, **limits})
    proc = once(cfg)
    assert proc.returncode == 0, proc.stderr
    s = samples(proc.stdout)
    assert value(s, "scaleengine_vse_app_day_bytes", app="vod") == 870
    assert value(s, "scaleengine_vse_app_day_requests", app="vod") == 15
    assert value(s, "scaleengine_vse_app_day_videos", app="vod") == 4
    return {
        dict(k[1])["video_url"]: v
        for k, v in s.items()
        if k[0] == "scaleengine_vse_day_bytes" and dict(k[1])["app"] == "vod"
    }


@pytest.mark.parametrize("size", [100, 101, 5000])
def test_exclude_sees_a_long_url_as_sent_not_its_cut_label(tmp_path, make_sim, size):
    """exclude '\\.mp4$' folds a .mp4 URL of 100 bytes (kept as it is), 101 or 5000 bytes (cut
    to its label as the page is read) into __other__, as the short one: none is exported."""
    url = "sestore/vod/" + "x" * (size - 16) + ".mp4"
    assert len(url.encode()) == size
    shown = _long_url_day(make_sim, tmp_path, url, exclude=r"\.mp4$")
    assert shown == {"vod_stream01": 50, "__other__": 820}


@pytest.mark.parametrize("size", [100, 101, 5000])
def test_include_sees_a_long_url_as_sent_and_keeps_it_under_its_label(tmp_path, make_sim, size):
    """include matching only the tail of a URL of 100, 101 or 5000 bytes keeps that video,
    exported under its label (cut past 100 bytes); everything else folds into __other__."""
    url = "sestore/vod/" + "x" * (size - 26) + "/deep-tail.mp4"
    assert len(url.encode()) == size
    shown = _long_url_day(make_sim, tmp_path, url, include=r"/deep-tail\.mp4$")
    assert shown == {_cut_label(url): 700, "__other__": 170}


# -- app names with " and \ ------------------------------------------------------------------


def test_app_names_with_quotes_and_backslashes_pass_promtool(tmp_path, make_sim):
    names = ['say "hi"', "C:\\media\\vod\\", 'mixed \\"both\\"']
    sim = make_sim(dict.fromkeys(names, 4))
    apps = [{"name": names[0], "daily_bytes_budget": "1TB", "monthly_bytes_budget": "9TB"}]
    cfg = write_config(tmp_path / "c.yaml", sim, apps=apps + names[1:])
    proc = once(cfg)
    assert proc.returncode == 0, proc.stderr
    assert promtool_check_metrics(proc.stdout.encode()).strip() == ""
    s = samples(proc.stdout)
    for name in names:
        assert value(s, "scaleengine_up", app=name) == 1
        assert value(s, "scaleengine_vse_app_day_bytes", app=name) > 0
        assert value(s, "scaleengine_vse_app_day_end_timestamp_seconds", app=name)
    assert value(s, "scaleengine_vse_app_day_bytes_budget", app=names[0]) == 1e12
    assert value(s, "scaleengine_vse_app_month_bytes_budget", app=names[0]) == 9e12


# -- secrets, signatures and request bodies never reach a log line ---------------------------


@pytest.mark.parametrize("fmt", ["logfmt", "json"])
def test_no_secret_signature_or_body_in_any_log_line(tmp_path, make_sim, fmt):
    """At debug level the secrets really reach log lines: the simulator's failure messages
    quote the request (key and signature), and urllib3's debug line of each request shows the
    URL, whose query here carries the secret. What is written must hold none of them."""
    sim = make_sim({"news": 6, "sport": 3})
    sim.echo_requests = True
    sim.set_fault("sport", "failure_0003")
    cfg = write_config(tmp_path / "c.yaml", sim)
    data = yaml.safe_load(cfg.read_text())
    data["scaleengine"]["api_url"] = f"{sim.url}?token={SECRET}&id={KEY}"
    cfg.write_text(yaml.safe_dump(data))
    proc = once(cfg, "--log.level", "debug", "--log.format", fmt)
    assert proc.returncode == 1
    out = proc.stdout + proc.stderr
    assert "urllib3" in out and "POST /stable/?token=" in out  # the URL did reach a line
    assert "0003" in out and "got signature" in out  # and so did the server's message
    bodies = [e["body"] for e in sim.request_log]
    signatures = [json.loads(b)["signature"] for b in bodies]
    assert len(bodies) >= 3
    for i, line in enumerate(out.splitlines()):
        assert KEY not in line and SECRET not in line, f"a secret in log line {i}"
        assert not [sig for sig in signatures if sig in line], f"a signature in log line {i}"
        assert not [b for b in bodies if b in line], f"a request body in log line {i}"


# -- TLS verification toward the API ---------------------------------------------------------


def test_tls_verification_toward_the_api_is_always_on(tmp_path, make_sim):
    pki = make_pki(tmp_path)
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(pki["server_cert"], pki["server_key"])
    sim = make_sim({"vod": 5}, ssl_context=server)
    assert sim.url.startswith("https://127.0.0.1:")
    cfg = write_config(tmp_path / "c.yaml", sim, poll={"late_data_window": "off"})
    # the test CA is not in the trust store: no request may get through
    proc = once(cfg)
    assert proc.returncode == 1, "polled an API whose certificate nobody vouches for"
    s = samples(proc.stdout)
    assert value(s, "scaleengine_up", app="vod") == 0
    # one day fetch, poll.retries 0: one refused request
    assert value(s, "scaleengine_api_requests_total", app="vod", outcome="connection") == 1
    assert "Traceback" not in proc.stderr
    assert len(sim.request_log) == 0
    # the same run trusting the test CA polls fine: the certificate was the only difference
    proc = once(cfg, env={"REQUESTS_CA_BUNDLE": str(pki["ca"])})
    assert proc.returncode == 0, proc.stderr
    assert value(samples(proc.stdout), "scaleengine_up", app="vod") == 1
    assert len(sim.request_log) >= 1


# -- the daemon: readiness, auth, headers, month refresh ------------------------------------


HEADERS = {
    "X-Frame-Options": "deny",
    "Content-Security-Policy": "default-src 'none'",
    "X-Content-Type-Options": "nosniff",
}


def test_daemon_ready_auth_headers_and_month_refresh(tmp_path, make_sim):
    """One daemon, two apps: "slow" hangs in its first poll, "fast" polls every second.

    /-/ready stays open without the password and says 503 until "slow" has had a poll
    finish too; basic auth takes a password containing ':'; every answer carries the
    configured headers; the month to date is fetched once, not at every poll."""
    sim = make_sim({"fast": 6, "slow": 4})
    sim.fault_delay = 60  # until the simulator stops
    sim.set_fault("slow", "timeout")
    password = "pa:ss:word"
    hashed = bcrypt.hashpw(password.encode(), bcrypt.gensalt(rounds=4)).decode()
    web = tmp_path / "web.yml"
    web.write_text(
        yaml.safe_dump(
            {"basic_auth_users": {"prom": hashed}, "http_server_config": {"headers": HEADERS}}
        )
    )
    cfg = write_config(
        tmp_path / "c.yaml",
        sim,
        scaleengine={"timeout": "2m"},
        poll={"interval": "1s", "month_interval": "1h"},
        web={"config_file": str(web)},
    )
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", str(cfg)]
        + ["--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
        cwd=ROOT,
    )
    url = f"http://127.0.0.1:{port}"

    def auth(user: str, pw: str) -> dict[str, str]:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    try:
        wait_for(
            lambda: len(day_requests(sim, "fast")) >= 2
            and any(e.get("fault") == "timeout" for e in sim.request_log),
            30,
            "two polls of the fast app while the slow one hangs",
        )

        def answers() -> bool:
            try:
                return http_get(url + "/-/healthy", timeout=2)[0] == 200
            except OSError:
                return False

        wait_for(answers, 15, "the exporter to answer")
        status = http_get(url + "/metrics", auth("prom", password))[0]
        assert status == 200, f"{status}: the password holding ':' was refused"

        def fast_up() -> bool:
            status, _, body = http_get(url + "/metrics", auth("prom", password), timeout=2)
            return status == 200 and b'scaleengine_up{account="31",app="fast"} 1' in body

        wait_for(fast_up, 15, "the fast app's poll on /metrics")
        status, headers, body = http_get(url + "/-/ready")
        assert status == 503, f"/-/ready said {status} while an app's first poll runs"
        for name, val in HEADERS.items():
            assert headers.get(name) == val, f"/-/ready lacks {name}"
        for path, creds in [("/metrics", auth("prom", password)), ("/", auth("prom", password))]:
            status, headers, _ = http_get(url + path, creds)
            assert status == 200
            assert {k: headers.get(k) for k in HEADERS} == HEADERS, f"{path}: {headers}"
        assert http_get(url + "/metrics")[0] == 401
        assert http_get(url + "/metrics", auth("prom", "pa"))[0] == 401
        month = [
            e
            for e in list(sim.request_log)
            if e.get("app") == "fast" and e.get("day") is None and e.get("offset") == 0
        ]
        polls = len(day_requests(sim, "fast"))
        assert len(month) == 1, f"month to date fetched {len(month)} times in {polls} polls"
        # the slow app's poll ends (the API goes away): now every app has had a poll finish
        sim.stop()
        wait_for(lambda: http_get(url + "/-/ready")[0] == 200, 20, "/-/ready once both polled")
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert "Traceback" not in proc.stderr.read()
