"""Every fault mode of the simulator against the assembled exporter over real HTTP: no crash,
no traceback, /metrics keeps answering, the app is down with its outcome counted, the other
app untouched, and no byte lost or counted twice once the API recovers."""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC, datetime

import pytest
from helpers import (
    FAULT_OUTCOMES,
    http_get,
    php_verify_simulator,
    samples,
    sim_config,
    wait_for,
)

from exporter.cli import Exporter
from exporter.config import parse_config
from exporter.simulator import FAULT_MODES, ROW_FAULTS, SimClock, Simulator
from exporter.web import WebApp, serve

APPS = {"bad": 12, "good": 6}
START = datetime(2026, 2, 3, 9, 0, tzinfo=UTC).timestamp()

EXPECTED = FAULT_OUTCOMES  # mode -> (outcome label, retried within the poll)


def test_every_fault_mode_is_covered():
    assert set(EXPECTED) | ROW_FAULTS == set(FAULT_MODES)


@pytest.fixture
def rig():
    clock = SimClock(START)
    with Simulator(apps=APPS, clock=clock, seed=5) as sim:
        sim.fault_delay = 1.0
        sim.record_bodies = True
        config = parse_config(
            sim_config(
                sim,
                scaleengine={"timeout": "0.4s"},
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


def value(s: dict, name: str, **labels) -> float | None:
    return s.get((name, tuple(sorted(labels.items()))))


@pytest.mark.parametrize("mode", sorted(FAULT_MODES))
def test_fault_mode(rig, mode, caplog):
    sim, exporter, url = rig
    today = datetime.fromtimestamp(START, UTC).date()
    poller = exporter.poller
    assert poller.poll_all()
    sim.clock.advance(600)
    sim.set_fault("bad", mode)
    good_before = exporter.store.view().usage["good"]
    requests_before = sim.requests_for("bad")
    with caplog.at_level(logging.DEBUG):
        ok = poller.poll_all()
    exporter.exposition.render_now()
    # no traceback anywhere in the log, at any level
    assert not [r for r in caplog.records if r.exc_info], "a traceback was logged"
    s = scrape(url)
    assert value(s, "scaleengine_up", app="good") == 1
    assert exporter.store.view().usage["good"] is not good_before  # polled as usual
    assert value(s, "scaleengine_vse_app_day_bytes", app="good") == sim.reported("good", today)[0]
    if mode in ROW_FAULTS:
        # bad rows skipped and counted; the rest of the page kept; the poll is otherwise good
        assert ok
        assert value(s, "scaleengine_vse_skipped_rows_total", app="bad") >= 1
        assert value(s, "scaleengine_up", app="bad") == 1
    else:
        outcome, retried = EXPECTED[mode]
        assert not ok
        assert value(s, "scaleengine_up", app="bad") == 0
        assert value(s, "scaleengine_poll_errors_total", app="bad", outcome=outcome) == 1
        if mode not in ("ignore_offset", "count_changes", "empty_page_early"):
            # a request-level failure is counted per HTTP request too
            assert value(s, "scaleengine_api_requests_total", app="bad", outcome=outcome) >= 1
        made = sim.requests_for("bad") - requests_before
        if mode in ("ignore_offset", "count_changes", "empty_page_early"):
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
        if mode == "failure_0002":  # the log says what to check
            said = " ".join(str(r.__dict__.get("err", "")) for r in warning)
            assert "clock" in said and "UTC time" in said
    # recovery: the counter is exactly the growth since the first poll, nothing twice
    sim.set_fault("bad", None)
    sim.clock.advance(600)
    assert poller.poll_all()
    exporter.exposition.render_now()
    s = scrape(url)
    # (with a row fault, the bytes of a skipped row were not seen then; they are counted once
    # the row is good)
    grown = sim.reported("bad", today)[0] - sim.reported("bad", today, at=START)[0]
    assert value(s, "scaleengine_vse_bytes_total", app="bad") == grown


def test_transient_errors_retried_within_the_poll(rig):
    sim, exporter, url = rig
    sim.set_fault("bad", "http_503", times=2)
    assert exporter.poller.poll_app("bad")  # two failures, then the third try succeeds
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
    assert value(s, "scaleengine_api_requests_total", app="good", outcome="connection") >= 1


def test_slow_app_does_not_delay_the_others(rig):
    """With the real scheduler: an app whose API calls hang does not hold up another's polls."""
    sim, exporter, _ = rig
    sim.fault_delay = 3.0
    sim.set_fault("bad", "timeout")
    counts = {"good": 0}
    real_poll = exporter.poller.poll_app
    lock = threading.Lock()

    def counting(name: str) -> bool:
        result = real_poll(name)
        with lock:
            counts[name] = counts.get(name, 0) + 1
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
