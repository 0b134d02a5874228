"""Every fault mode of the simulator against the assembled exporter over real HTTP: no crash,
no traceback, /metrics keeps answering, the app is down with its outcome counted, the other
app untouched, and no byte lost or counted twice once the API recovers."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime

import pytest
import yaml
from helpers import (
    FAULT_OUTCOMES,
    FAULT_SUCCEEDS,
    ROOT,
    http_get,
    php_verify_simulator,
    samples,
    sim_config,
    wait_for,
)

from exporter.appkey import AppKey
from exporter.cli import Exporter
from exporter.config import parse_config
from exporter.simulator import FAULT_MODES, LABEL_FAULTS, ROW_FAULTS, SimClock, Simulator
from exporter.web.app import WebApp, serve

APPS = {"bad": 12, "good": 6}
START = datetime(2026, 2, 3, 9, 0, tzinfo=UTC).timestamp()

EXPECTED = FAULT_OUTCOMES  # mode -> (outcome label, retried within the poll)


def test_every_fault_mode_is_covered():
    assert set(EXPECTED) | ROW_FAULTS | LABEL_FAULTS | FAULT_SUCCEEDS == set(FAULT_MODES)


@pytest.fixture
def rig():
    clock = SimClock(START)
    with Simulator(apps=APPS, clock=clock, seed=5) as sim:
        sim.fault_delay = 1.0
        sim.record_bodies = True
        config = parse_config(
            sim_config(
                sim,
                # a small answer cap keeps the size faults fast (the default is tested in
                # test_client_limits)
                scaleengine={"timeout": "0.4s", "max_response_bytes": "1MiB"},
                poll={"interval": "5m", "page_size": 4, "retries": 2, "month_interval": "off"},
            ),
            env={},
        )
        exporter = Exporter(config, clock=clock.now)
        app = WebApp(exporter.exposition, exporter.store, lambda: True)
        server, _ = serve("127.0.0.1:0", app)
        exporter.exposition.start()
        yield sim, exporter, server.url + "/metrics"
        server.shutdown()
        server.server_close()
        exporter.exposition.stop()
        exporter.poller.shutdown()
    php_verify_simulator(sim)  # real PHP accepts every request the exporter sent


def scrape(url: str) -> dict:
    status, _, body = http_get(url, timeout=5)
    assert status == 200
    return samples(body)


def K(app: str) -> AppKey:
    return AppKey("4242", app)  # the single form's account: the simulator's cdn_id


def value(s: dict, name: str, **labels) -> float | None:
    if "app" in labels:  # the single form's account: the cdn_id (no scaleengine.account)
        labels = {"account": "4242", **labels}
    return s.get((name, tuple(sorted(labels.items()))))


@pytest.mark.parametrize("mode", sorted(FAULT_MODES))
def test_fault_mode(rig, mode, caplog):
    sim, exporter, url = rig
    today = datetime.fromtimestamp(START, UTC).date()
    poller = exporter.poller
    assert poller.poll_all()
    sim.clock.advance(600)
    sim.set_fault("bad", mode)
    good_before = exporter.store.view().usage[K("good")]
    requests_before = sim.requests_for("bad")
    with caplog.at_level(logging.DEBUG):
        ok = poller.poll_all()
    exporter.exposition.render_now()
    # no traceback anywhere in the log, at any level
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    s = scrape(url)
    assert value(s, "scaleengine_up", app="good") == 1
    assert exporter.store.view().usage[K("good")] is not good_before  # polled as usual
    assert value(s, "scaleengine_vse_app_day_bytes", app="good") == sim.reported("good", today)[0]
    if mode in LABEL_FAULTS:
        # a hostile video_url with good numbers: kept, labelled as valid UTF-8, still up
        assert ok
        assert value(s, "scaleengine_up", app="bad") == 1
        labels = [dict(k[1])["video_url"] for k in s if k[0] == "scaleengine_vse_day_bytes"]
        assert any("\ufffd" in label for label in labels)
    elif mode in ROW_FAULTS:
        # bad rows skipped and counted; the rest of the page kept; the poll is otherwise good
        assert ok
        assert value(s, "scaleengine_vse_skipped_rows_total", app="bad") >= 1
        assert value(s, "scaleengine_up", app="bad") == 1
    elif mode in FAULT_SUCCEEDS:
        # an empty day is up with zeros; rows without requests keep their bytes
        assert ok
        assert value(s, "scaleengine_up", app="bad") == 1
        day_bytes = value(s, "scaleengine_vse_app_day_bytes", app="bad")
        if mode == "partial_rows":
            assert day_bytes == sim.reported("bad", today)[0]
            assert value(s, "scaleengine_vse_incomplete_rows_total", app="bad") >= 1
        else:
            assert day_bytes == 0
        assert not [k for k in s if k[0] == "scaleengine_poll_errors_total"]
    else:
        outcome, retried = EXPECTED[mode]
        assert not ok
        assert value(s, "scaleengine_up", app="bad") == 0
        assert value(s, "scaleengine_poll_errors_total", app="bad", outcome=outcome) == 1
        made = sim.requests_for("bad") - requests_before
        if outcome != "pagination":
            # a request-level failure is counted per HTTP request too: each one made
            assert value(s, "scaleengine_api_requests_total", app="bad", outcome=outcome) == made
        if outcome == "pagination":
            assert made >= 2  # the inconsistency shows on a later page
        elif retried:
            assert made == 3  # the first try and poll.retries=2 more, then up=0
        else:
            assert made == 1  # auth, signature, shape errors are not retried
        # the last good snapshot is still served (stale_after not reached yet)
        assert value(s, "scaleengine_vse_app_day_bytes", app="bad") is not None
        warning = [
            r
            for r in caplog.records
            if r.levelno >= logging.WARNING and "bad" in str(r.__dict__.get("app"))
        ]
        assert warning, "the failure was logged"
        # server text reaches the landing page cut and cleaned (long_reason,
        # failure_long_message send kilobytes of control characters)
        last_error = exporter.store.view().status[K("bad")].last_error
        assert last_error and len(last_error) < 1000
        assert all(ch.isprintable() for ch in last_error), repr(last_error)
        said = " ".join(str(r.__dict__.get("err", "")) for r in warning)
        assert all(ch.isprintable() for ch in said) and len(said) < 3000
        if mode == "failure_0002":  # the log says what to check
            said = " ".join(str(r.__dict__.get("err", "")) for r in warning)
            assert "clock" in said and "UTC time" in said
    # recovery: the counter is exactly the growth since the first poll, nothing twice
    sim.set_fault("bad", None)
    sim.clock.advance(600)
    assert poller.poll_all()
    assert poller.poll_all()  # growth counts once a second read confirms it
    exporter.exposition.render_now()
    s = scrape(url)
    # (with a row fault, the bytes of a skipped row were not seen then; they are counted once
    # the row is good)
    grown = sim.reported("bad", today)[0] - sim.reported("bad", today, at=START)[0]
    assert value(s, "scaleengine_vse_bytes_total", app="bad") == grown


def test_transient_errors_retried_within_the_poll(rig):
    sim, exporter, url = rig
    sim.set_fault("bad", "http_503", times=2)
    assert exporter.poller.poll_app(K("bad"))  # two failures, then the third try succeeds
    s = scrape(url)
    assert value(s, "scaleengine_up", app="bad") == 1
    assert value(s, "scaleengine_api_requests_total", app="bad", outcome="http_status") == 2


def test_connection_refused_whole_api_down(rig):
    sim, exporter, url = rig
    assert exporter.poller.poll_all()
    sim.stop()  # nothing listens on the API port any more
    assert not exporter.poller.poll_all()
    exporter.exposition.render_now()
    s = scrape(url)
    assert value(s, "scaleengine_up", app="bad") == 0
    assert value(s, "scaleengine_up", app="good") == 0
    # the first try and poll.retries=2 more
    assert value(s, "scaleengine_api_requests_total", app="good", outcome="connection") == 3


def test_slow_app_does_not_delay_the_others(rig):
    """With the real scheduler: an app whose API calls hang does not hold up another's polls."""
    sim, exporter, _ = rig
    sim.fault_delay = 3.0
    sim.set_fault("bad", "timeout")
    counts = {"good": 0}
    real_poll = exporter.poller.poll_app
    lock = threading.Lock()

    def counting(key: AppKey) -> bool:
        result = real_poll(key)
        with lock:
            counts[key.app] = counts.get(key.app, 0) + 1
        return result

    exporter.poller.poll_app = counting  # type: ignore[method-assign]
    exporter.config = exporter.config.model_copy(
        update={"poll": exporter.config.poll.model_copy(update={"interval": 0.3})}
    )
    exporter.poller.config = exporter.config
    exporter.poller.start()
    t0 = time.monotonic()
    wait_for(lambda: counts["good"] >= 4, 8, "four polls of the good app")
    assert counts.get("bad", 0) <= 1  # the bad app is still stuck in its first poll's retries
    assert time.monotonic() - t0 < 8


# -- issue 8: the API client as a user runs it --------------------------------------------------


def _once(tmp_path, sim, apps: list[str], extra: dict | None = None, timeout: float = 300):
    """Run ``python -m exporter --once`` against ``sim``: (exit code, stdout, stderr, seconds,
    peak RSS of that process in MB)."""
    poll = {"late_data_window": "off", "month_interval": "off", **(extra or {})}
    timeout_setting = poll.pop("timeout", "2s")
    data = sim_config(sim, apps=apps, poll=poll)
    data["scaleengine"]["timeout"] = timeout_setting
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    cfg.chmod(0o600)
    out = tmp_path / "stdout"
    err = tmp_path / "stderr"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    started = time.monotonic()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--once", "--config", str(cfg)],
            stdout=fo, stderr=fe, env=env, cwd=ROOT,
        )  # fmt: skip
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                proc.wait()
                pytest.fail(f"--once did not end within {timeout}s:\n{err.read_text()[-2000:]}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return (
        proc.returncode,
        out.read_text(),
        err.read_text(),
        time.monotonic() - started,
        usage.ru_maxrss / 1024,  # KiB on Linux
    )


def test_once_a_dripping_answer_times_out_within_the_bound(tmp_path):
    """timeout 2s, default retries: the poll of a dripping app fails (up 0, outcome timeout)
    within about 15 s; unbounded, its 400-byte answer would take 200 s, each try."""
    with Simulator(apps={"drip": 8, "good": 4}, seed=2) as sim:
        sim.drip_interval = 0.5  # each read well within the per-read timeout
        sim.set_fault("drip", "drip")
        code, out, err, seconds, _ = _once(tmp_path, sim, ["drip", "good"], {"concurrency": 1})
    assert code == 1, err[-2000:]
    s = samples(out)
    assert value(s, "scaleengine_up", app="drip") == 0
    assert value(s, "scaleengine_up", app="good") == 1
    assert value(s, "scaleengine_poll_errors_total", app="drip", outcome="timeout") == 1
    assert value(s, "scaleengine_api_requests_total", app="drip", outcome="timeout") == 4
    assert value(s, "scaleengine_poll_duration_seconds", app="drip") < 20  # bar ~15 s
    duration = value(s, "scaleengine_poll_duration_seconds", app="drip")
    print(f"dripping app failed after {duration:.1f}s")
    assert seconds < 60  # generous: the whole run, interpreter start included
    assert "Traceback" not in err


def test_once_refuses_huge_answers_and_stays_under_400_mb(tmp_path):
    """A 1 MB gzip answer inflating to 1 GiB, a 200 MB body and an endless chunked body are
    refused (outcome too_large, not retried) with the default 64 MiB cap, and the process
    doing the polls stays under 400 MB RSS."""
    apps = {"bomb": 3, "huge": 3, "endless": 3, "good": 4}
    with Simulator(apps=apps, seed=2) as sim:
        sim.set_fault("bomb", "gzip_bomb")
        sim.set_fault("huge", "huge_body")
        sim.set_fault("endless", "endless_body")
        code, out, err, _, rss_mb = _once(tmp_path, sim, list(apps), {"timeout": "60s"})
    assert code == 1, err[-2000:]
    s = samples(out)
    for app in ("bomb", "huge", "endless"):
        assert value(s, "scaleengine_up", app=app) == 0
        assert value(s, "scaleengine_poll_errors_total", app=app, outcome="too_large") == 1
        assert value(s, "scaleengine_api_requests_total", app=app, outcome="too_large") == 1
    assert value(s, "scaleengine_up", app="good") == 1
    assert rss_mb < 400, f"peak RSS {rss_mb:.0f} MB"
    print(f"peak RSS of --once refusing the bomb, 200 MB and endless bodies: {rss_mb:.0f} MB")


def test_once_busy_is_one_request_and_api_1000(tmp_path):
    with Simulator(apps={"busy": 4, "good": 4}, seed=2) as sim:
        sim.set_fault("busy", "failure_1000")
        code, out, err, _, _ = _once(tmp_path, sim, ["busy", "good"])
        made = sim.requests_for("busy")
    assert code == 1
    s = samples(out)
    assert made == 1  # no retries within the poll
    assert value(s, "scaleengine_up", app="busy") == 0
    assert value(s, "scaleengine_poll_errors_total", app="busy", outcome="api_1000") == 1
    assert value(s, "scaleengine_up", app="good") == 1


def test_busy_backs_off_doubling_and_honours_retry_after(rig):
    sim, exporter, url = rig
    poller = exporter.poller
    cfg = exporter.config.poll  # busy_backoff 2m, busy_backoff_max 15m by default
    assert (cfg.busy_backoff, cfg.busy_backoff_max) == (120, 900)
    sim.set_fault("bad", "failure_1000")
    made = []
    for _ in range(12):  # a poll every minute for 12 minutes of simulated time
        before = sim.requests_for("bad")
        assert not poller.poll_app(K("bad"))
        assert poller.poll_app(K("good"))
        made.append(sim.requests_for("bad") - before)
        sim.clock.advance(60)
    # requests at 0, 2 min (backoff 2m), 6 min (4m), 14 min (8m): none in between
    assert made == [1, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0]
    exporter.exposition.render_now()
    s = scrape(url)
    assert value(s, "scaleengine_up", app="bad") == 0
    assert value(s, "scaleengine_up", app="good") == 1
    # counted once per busy answer, not once per skipped poll
    assert value(s, "scaleengine_poll_errors_total", app="bad", outcome="api_1000") == 3
    assert value(s, "scaleengine_api_requests_total", app="bad", outcome="api_1000") == 3
    assert "backing off" in exporter.store.view().status[K("bad")].last_error
    # once the API answers again the back-off is over
    sim.set_fault("bad", None)
    sim.clock.advance(8 * 60)
    assert poller.poll_app(K("bad"))
    # 429 with Retry-After longer than the back-off: the Retry-After wins
    sim.retry_after = 600
    sim.set_fault("bad", "http_429", times=1)
    assert not poller.poll_app(K("bad"))
    before = sim.requests_for("bad")
    sim.clock.advance(590)
    assert not poller.poll_app(K("bad"))
    assert sim.requests_for("bad") == before
    sim.clock.advance(20)
    assert poller.poll_app(K("bad"))


def _run_scheduler(exporter, seconds: float, interval: float = 1.0) -> dict[str, int]:
    counts: dict[str, int] = {}
    lock = threading.Lock()
    real_poll = exporter.poller.poll_app

    def counting(name: str) -> bool:
        try:
            return real_poll(name)
        finally:
            with lock:
                counts[name] = counts.get(name, 0) + 1

    exporter.poller.poll_app = counting  # type: ignore[method-assign]
    exporter.poller.start()
    time.sleep(seconds)
    exporter.poller.shutdown()
    return counts


def test_a_dripping_app_does_not_starve_others_with_concurrency_1():
    """One poll worker: the dripping app's polls end at their deadline, so the good app still
    gets its turns (unbounded, the first drip would hold the only worker for minutes)."""
    with Simulator(apps={"drip": 8, "good": 4}, seed=2) as sim:
        sim.drip_interval = 0.3  # each read well within the per-read timeout
        sim.set_fault("drip", "drip")
        config = parse_config(
            sim_config(
                sim,
                scaleengine={"timeout": "1s"},
                poll={"interval": "1s", "concurrency": 1, "retries": 0,
                      "late_data_window": "off", "month_interval": "off"},
            ),
            env={},
        )  # fmt: skip
        exporter = Exporter(config)
        counts = _run_scheduler(exporter, 12)
    assert counts.get(K("good"), 0) >= 3, counts
    assert counts.get(K("drip"), 0) >= 2, counts


def test_busy_app_keeps_others_on_schedule_with_the_real_scheduler():
    with Simulator(apps={"busy": 4, "good": 4}, seed=2) as sim:
        sim.set_fault("busy", "failure_1000")
        config = parse_config(
            sim_config(
                sim,
                poll={"interval": "1s", "busy_backoff": "3s", "busy_backoff_max": "3s",
                      "late_data_window": "off", "month_interval": "off"},
            ),
            env={},
        )  # fmt: skip
        exporter = Exporter(config)
        counts = _run_scheduler(exporter, 11)
        times = [e["timestamp"] for e in sim.request_log if e.get("app") == "busy"]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    # at 0, then after 3 s, then after 3 s again (6 s doubled, capped at 3 s); a gap is longer
    # than its back-off by the wait for the next 1 s poll
    assert len(times) >= 3, times
    assert gaps[0] >= 2.5, gaps  # 3 s minus the latency of a loaded machine
    assert 2.5 <= gaps[1] < 5.0, gaps  # capped at 3 s: not 6 s
    assert counts.get(K("good"), 0) >= 4, counts
    assert counts.get(K("busy"), 0) >= 4, counts  # scheduled polls run, without requests


@pytest.mark.parametrize("mode", ["shift_first", "shift_later"])
def test_pages_that_move_once_are_published_exactly(rig, mode):
    """A video climbing across a page boundary mid-read: the exporter reads again and
    publishes the exact day totals (read naively, one video counts twice, another is lost)."""
    sim, exporter, url = rig
    today = datetime.fromtimestamp(START, UTC).date()
    poller = exporter.poller
    assert poller.poll_all()
    sim.clock.advance(600)
    sim.set_fault("bad", mode, times=1)
    assert poller.poll_app(K("bad"))
    exporter.exposition.render_now()
    s = scrape(url)
    assert value(s, "scaleengine_up", app="bad") == 1
    assert value(s, "scaleengine_vse_app_day_bytes", app="bad") == sim.reported("bad", today)[0]
    assert poller.poll_app(K("bad"))  # growth counts once a second read confirms it
    exporter.exposition.render_now()
    s = scrape(url)
    grown = sim.reported("bad", today)[0] - sim.reported("bad", today, at=START)[0]
    assert value(s, "scaleengine_vse_bytes_total", app="bad") == grown
    per_video = {
        dict(labels)["video_url"]: v
        for (name, labels), v in s.items()
        if name == "scaleengine_vse_day_bytes"
        and labels[:2] == (("account", "4242"), ("app", "bad"))
    }
    truth = sim.reported_videos("bad", today.year, today.month, today.day)
    assert per_video == {u: b for u, (b, _) in truth.items()}
