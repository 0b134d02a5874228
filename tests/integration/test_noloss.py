"""The no-loss figure: three simulated days with late data, outages and two restarts; the
counters' increase equals, to the byte, what the simulator delivered."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from helpers import php_verify_simulator, samples, sim_config

from exporter.cli import Exporter
from exporter.config import parse_config
from exporter.simulator import SimClock, Simulator

APPS = {"vod": 14, "live": 5}
DAY1 = datetime(2026, 5, 30, tzinfo=UTC)  # crosses a month end too
STEP = timedelta(minutes=15)
LATE = 3600  # the simulator delivers each day's last hour an hour late


def at(days: int, hours: float) -> float:
    return (DAY1 + timedelta(days=days, hours=hours)).timestamp()


OUTAGES = [  # (start, end, fault): each shorter than the late window
    (at(0, 18), at(0, 19), "http_503"),
    (at(1, 23.5), at(2, 1), "reset"),  # across midnight: yesterday's end arrives late
    (at(2, 6), at(2, 7.25), "failure_1000"),
]
RESTARTS = [at(1, 0.75), at(2, 12)]  # one inside the late window, one mid-day
END = at(3, 2.5)  # past day 3's late window


def config(sim: Simulator, state_path: str):
    return parse_config(
        sim_config(
            sim,
            poll={
                "interval": "15m",
                "late_data_window": "2h",
                "page_size": 4,
                "retries": 1,
                "month_interval": "1h",
            },
            state={"path": state_path},
        ),
        env={},
    )


def counters(exporter: Exporter) -> dict[str, int]:
    s = samples(exporter.exposition.text())
    return {
        app: int(s[("scaleengine_vse_bytes_total", (("account", "4242"), ("app", app)))])
        for app in APPS
    }


def test_no_loss_over_three_days_exact_to_the_byte(tmp_path, capsys):
    clock = SimClock(DAY1.timestamp())
    with Simulator(apps=APPS, clock=clock, seed=11, late_seconds=LATE) as sim:
        sim.fault_delay = 0.2
        sim.record_bodies = True
        cfg = config(sim, str(tmp_path / "state.json"))
        exporter = Exporter(cfg, clock=clock.now)
        first = None
        last_seen = {app: 0 for app in APPS}
        restarts = list(RESTARTS)
        failed_polls = 0
        t = DAY1.timestamp()
        while t <= END:
            clock.set(t)
            fault = next((f for s, e, f in OUTAGES if s <= t < e), None)
            sim.set_fault(None, fault)
            if restarts and t >= restarts[0]:
                restarts.pop(0)
                exporter.poller.shutdown()  # what SIGTERM does: state saved
                exporter = Exporter(cfg, clock=clock.now)
            ok = exporter.poller.poll_all()
            failed_polls += not ok
            assert ok == (fault is None)
            now_counters = counters(exporter)
            if first is None:
                first = now_counters
            for app in APPS:  # never decreases, across restarts too: no reset in Prometheus
                assert now_counters[app] >= last_seen[app]
                last_seen[app] = now_counters[app]
            t += STEP.total_seconds()
        sim.set_fault(None, None)
        # growth is counted once a second read confirms it: one more read at END
        assert exporter.poller.poll_all()
        final = counters(exporter)
        exporter.poller.shutdown()

        days = [DAY1.date() + timedelta(days=i) for i in range(3)]
        report = []
        for app in APPS:
            # delivered after the first poll: the late tail of the day before the start (its
            # last hour arrives after midnight), three whole days, and day 4 up to the end
            eve = DAY1.date() - timedelta(days=1)
            truth = sim.delivered(app, eve)[0] - sim.reported(app, eve, at=DAY1.timestamp())[0]
            truth += sum(sim.delivered(app, d)[0] for d in days)
            truth += sim.reported(app, datetime.fromtimestamp(END, UTC).date(), at=END)[0]
            increase = final[app] - first[app]
            report.append(f"{app}: counted {increase} bytes, delivered {truth} bytes")
            assert increase == truth, report[-1]
        assert failed_polls > 0
        checked = php_verify_simulator(sim)  # real PHP accepts every request sent
    with capsys.disabled():
        print(
            "\nno-loss figure over 3 days, 3 outages, 2 restarts: "
            + "; ".join(report)
            + f" (difference 0); {checked} requests checked by PHP"
        )
