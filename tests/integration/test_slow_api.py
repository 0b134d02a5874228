"""A slow but valid API against the daemon as a user runs it (issue 15): a poll has a whole
deadline (poll.timeout), one slow app does not keep the others from being polled at least
every two intervals even with poll.concurrency 1, and an app whose polls stop ending on time
is down (outcome overdue), not fresh."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
from helpers import ROOT, free_port, http_get, samples, sim_config, stop_process, wait_for

from exporter.simulator import Simulator


def start_daemon(tmp_path: Path, data: dict) -> tuple[subprocess.Popen, str, Path]:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(data))
    cfg.chmod(0o600)
    log = tmp_path / "daemon.log"
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    with open(log, "w") as fh:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(cfg),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=fh, env=env, cwd=ROOT,
        )  # fmt: skip
    return proc, f"http://127.0.0.1:{port}/metrics", log


def scrape(url: str) -> dict:
    try:
        status, _, body = http_get(url, timeout=2)
    except OSError:
        return {}
    return samples(body) if status == 200 else {}


def get(s: dict, name: str, **labels: str) -> float | None:
    if "app" in labels:  # the single form's account: the cdn_id (no scaleengine.account)
        labels = {"account": "4242", **labels}
    return s.get((name, tuple(sorted(labels.items()))))


def watch(url: str, seconds: float) -> list[tuple[float, dict]]:
    """(time, samples) of a scrape every 0.2 s for ``seconds``."""
    seen = []
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        seen.append((time.time(), scrape(url)))
        time.sleep(0.2)
    return seen


def successes(seen: list[tuple[float, dict]], app: str) -> list[float]:
    """The distinct last-success times of ``app`` seen, in order."""
    out: list[float] = []
    for _, s in seen:
        t = get(s, "scaleengine_last_success_timestamp_seconds", app=app)
        if t is not None and (not out or t != out[-1]):
            out.append(t)
    return out


def test_a_slow_app_does_not_keep_the_others_from_their_polls_with_concurrency_1(tmp_path):
    """One poll thread; one app whose pages come 0.3 s apart, 200 of them (a minute a read,
    more than all the others together by far): its polls end at poll.timeout (2 s) with
    outcome poll_timeout, and the other apps are still polled at least every two intervals
    (8 s) and never shown down. Unbounded, the slow app's first poll holds the only thread
    for a minute."""
    with Simulator(apps={"slow": 400, "a": 6, "b": 6}, seed=4) as sim:
        sim.page_delay = {"slow": 0.3}
        data = sim_config(
            sim,
            scaleengine={"timeout": "1s"},
            poll={"interval": "4s", "timeout": "2s", "concurrency": 1, "page_size": 2,
                  "retries": 0, "month_interval": "off", "late_data_window": "off"},
        )  # fmt: skip
        proc, url, log = start_daemon(tmp_path, data)
        try:
            wait_for(lambda: get(scrape(url), "scaleengine_up", app="a") == 1, 20, "a polled")
            seen = watch(url, 30)
        finally:
            stop_process(proc)
    for app in ("a", "b"):
        times = successes(seen, app)
        gaps = [round(y - x, 2) for x, y in zip(times, times[1:], strict=False)]
        assert len(times) >= 5, (app, times)  # about every 4 s over 30 s
        assert max(gaps) <= 8, (app, gaps)  # at least every two intervals
        ups = {get(s, "scaleengine_up", app=app) for _, s in seen if s}
        assert ups == {1}, (app, ups)  # never down, never overdue
    last = next(s for _, s in reversed(seen) if s)
    assert get(last, "scaleengine_up", app="slow") == 0
    assert get(last, "scaleengine_poll_errors_total", app="slow", outcome="poll_timeout") >= 3
    # the request running at the deadline is cut, and counted by why
    assert get(last, "scaleengine_api_requests_total", app="slow", outcome="poll_timeout") >= 1
    assert get(last, "scaleengine_api_requests_total", app="slow", outcome="timeout") is None
    assert get(last, "scaleengine_poll_duration_seconds", app="slow") < 4  # ended, not hung
    text = log.read_text()
    assert "Traceback" not in text
    assert "poll.timeout 2s" in text  # the log says which limit ended the poll


def test_an_app_not_polled_on_time_is_down_and_says_overdue(tmp_path):
    """Six slow apps and one poll thread: each slow poll takes all of its poll.timeout
    (2 s), so the good app waits about 12 s between polls, past 2 x interval + poll.timeout
    (6 s). While it waits it is down with outcome overdue (counted once per episode), and up
    again once polled; its last good data stays until stale_after."""
    slow = [f"slow-{i}" for i in range(6)]
    with Simulator(apps={**{a: 400 for a in slow}, "good": 6}, seed=4) as sim:
        sim.page_delay = dict.fromkeys(slow, 0.3)
        data = sim_config(
            sim,
            scaleengine={"timeout": "1s"},
            apps=["good", *slow],
            poll={"interval": "2s", "timeout": "2s", "concurrency": 1, "page_size": 2,
                  "retries": 0, "month_interval": "off", "late_data_window": "off",
                  "stale_after": "1h"},
        )  # fmt: skip
        proc, url, log = start_daemon(tmp_path, data)
        try:
            wait_for(lambda: get(scrape(url), "scaleengine_up", app="good") == 1, 20, "polled")
            seen = watch(url, 30)
        finally:
            stop_process(proc)
    states = [
        (
            get(s, "scaleengine_up", app="good"),
            get(s, "scaleengine_poll_errors_total", app="good", outcome="overdue"),
            get(s, "scaleengine_vse_app_day_bytes", app="good"),
        )
        for _, s in seen
        if s
    ]
    down = [i for i, (up, _, _) in enumerate(states) if up == 0]
    assert down, "the good app never showed its lateness"
    up_after = [i for i, (up, _, _) in enumerate(states) if up == 1 and i > down[0]]
    assert up_after, "up again once polled"
    for i in down:
        up, overdue, day_bytes = states[i]
        assert overdue is not None and overdue >= 1
        assert day_bytes is not None  # the last good data, until stale_after
    overdue_counts = [o for _, o, _ in states if o is not None]
    episodes = sum(1 for i in range(1, len(states)) if states[i][0] == 0 and states[i - 1][0] == 1)
    # once per episode, not once per check
    assert max(overdue_counts) <= episodes + 1, (overdue_counts, episodes)
    text = log.read_text()
    assert "poll overdue" in text and "Traceback" not in text
