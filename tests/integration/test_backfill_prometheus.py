"""History end to end: backfill -> promtool create-blocks-from openmetrics -> Prometheus.

`scaleengine-exporter backfill` runs as a subprocess against the simulator (real HTTP on
loopback, real clock); Debian's promtool turns its file into TSDB blocks and Debian's prometheus
is started on those blocks. Prometheus must answer, at each midnight, each day's total, each
video's bytes and the month to date with exactly what the simulator served, and the dashboard's
history panels, queried as Grafana queries them, must return the same.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from helpers import ROOT, need_binary, sim_config, start_prometheus, stop_process

from exporter.backfill import plan_days
from exporter.poller import fold_videos
from exporter.simulator import Simulator

APPS = {"vod-a": 20, "live-b": 10}
MAX_VIDEOS = 12
DASHBOARD = ROOT / "grafana" / "scaleengine-usage.json"
HISTORY_PANELS = ("Daily bytes per app", "Month by month")
DAY = 86400
# What Prometheus holds for a day the exporter served live: a sample every SCRAPE seconds, and
# for STALE seconds after midnight still the previous day's values (until the next poll).
LIVE_APP = "scraped-live"
ACCOUNT = "4242"  # the single form's account label: the simulator's cdn_id
SCRAPE = 300
BACKFILLED = f'app!="{LIVE_APP}"'
STALE = 300


@dataclass
class History:
    sim: Simulator
    start: date  # --from (mid-month)
    end: date  # --to
    days: list[date]  # every day written (from the first of --from's month)
    url: str  # Prometheus
    backfill: subprocess.CompletedProcess

    def api(self, path: str, **params: Any) -> Any:
        query = urllib.parse.urlencode({k: str(v) for k, v in params.items()})
        try:
            with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=30) as resp:
                body = json.loads(resp.read())
        except urllib.error.HTTPError as err:
            pytest.fail(f"{path} {params}: HTTP {err.code}: {err.read()[:500]!r}")
        assert body["status"] == "success", body
        return body["data"]

    def at(self, expr: str, t: int) -> dict[tuple[tuple[str, str], ...], float]:
        result = self.api("/api/v1/query", query=expr, time=t)["result"]
        return {tuple(sorted(r["metric"].items())): float(r["value"][1]) for r in result}


def midnight_after(day: date) -> int:
    """Unix time of the midnight (UTC) that closes ``day``."""
    return int(datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC).timestamp())


def outage_day(sim: Simulator, days: list[date]) -> int:
    """The live exporter was down from 23:00 of this day to 00:30 of the next: the first day
    followed by a bigger one (so the days followed by a smaller one test the stale values)."""
    totals = [sim.delivered("live-b", d)[0] for d in days]
    return next(i for i in range(len(days) - 1) if totals[i + 1] > totals[i])


def live_down(sim: Simulator, days: list[date]) -> tuple[int, int]:
    midnight = midnight_after(days[outage_day(sim, days)])
    return midnight - 3600, midnight + 1800


def last_served(sim: Simulator, days: list[date], i: int) -> int:
    """When day i's last value was served (the bar of a live day shows that value)."""
    midnight = midnight_after(days[i])
    down_start, down_end = live_down(sim, days)
    if down_start < midnight <= down_end:
        return down_start - SCRAPE
    return midnight - SCRAPE


def live_like(sim: Simulator, app: str, days: list[date]) -> str:
    """OpenMetrics of what scraping the live exporter leaves in Prometheus for these days
    (app relabelled LIVE_APP): growing day and month totals, a scrape every SCRAPE seconds,
    the previous day's last values served for STALE seconds after midnight, one outage."""
    lines: dict[str, list[str]] = {"day": [], "month": []}
    down_start, down_end = live_down(sim, days)
    before = 0  # the month's earlier days (days[0] is the 1st)
    for i, day in enumerate(days):
        start = midnight_after(day) - DAY
        for t in range(start, start + DAY + STALE, SCRAPE):
            if down_start <= t < down_end:
                continue
            if t < start + STALE and i:
                continue  # the previous day's values are still served
            b = sim.reported(app, day, at=min(t, last_served(sim, days, i)))[0]
            labels = f'account="{ACCOUNT}",app="{LIVE_APP}"'
            lines["day"].append(f"scaleengine_vse_app_day_bytes{{{labels}}} {b} {t}")
            lines["month"].append(f"scaleengine_vse_app_month_bytes{{{labels}}} {before + b} {t}")
        before += sim.delivered(app, day)[0]
    return (
        "# TYPE scaleengine_vse_app_day_bytes gauge\n"
        + "\n".join(lines["day"])
        + "\n# TYPE scaleengine_vse_app_month_bytes gauge\n"
        + "\n".join(lines["month"])
        + "\n# EOF\n"
    )


def _wait(what: str, check, timeout: float, proc: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"{what}: prometheus exited with {proc.returncode}\n{log.read_text()}")
        try:
            if check():
                return
        except OSError:
            pass
        time.sleep(0.3)
    pytest.fail(f"timed out waiting for {what}\n{log.read_text()[-3000:]}")


def create_blocks(promtool: str, openmetrics: Path, data: Path, *flags: str) -> None:
    """promtool tsdb create-blocks-from openmetrics: FILE's samples as blocks in DATA."""
    run = subprocess.run(
        [
            promtool,
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            *flags,
            str(openmetrics),
            str(data),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, f"promtool refused {openmetrics.name}:\n{run.stderr}"


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Iterator[History]:
    promtool = need_binary("promtool")
    need_binary("prometheus")  # missing: fail before the slow steps
    tmp = tmp_path_factory.mktemp("history")
    today = datetime.now(UTC).date()
    this_month = today.replace(day=1)
    previous = (this_month - timedelta(days=1)).replace(day=1)
    before = (previous - timedelta(days=1)).replace(day=1)
    # a complete month read from a mid-month --from, and the first days of the next month
    start, end = before + timedelta(days=14), previous + timedelta(days=9)
    sim = Simulator(apps=APPS)
    sim.start()
    proc = None
    try:
        config = tmp / "config.yaml"
        config.write_text(
            yaml.safe_dump(
                sim_config(
                    sim,
                    poll={"timezone": "UTC", "concurrency": 2},
                    limits={"max_videos_per_app": MAX_VIDEOS},
                )
            )
        )
        config.chmod(0o600)
        out = tmp / "history.om"
        backfill = subprocess.run(
            [sys.executable, "-m", "exporter", "backfill", "--config", str(config)]
            + ["--from", start.isoformat(), "--to", end.isoformat(), "--output", str(out)],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert backfill.returncode == 0, backfill.stderr
        data = tmp / "data"
        # as the README says: 31-day blocks, not one block per day
        create_blocks(promtool, out, data, "--max-block-duration=744h")
        blocks = list(data.iterdir())
        days = (end - before).days + 1  # reading starts on the 1st of --from's month
        assert 0 < len(blocks) <= days // 31 + 2 < days, f"{len(blocks)} blocks for {days} days"
        live = tmp / "live.om"
        live_days = [d for d in plan_days(start, end) if d >= previous]
        live.write_text(live_like(sim, "live-b", live_days))
        create_blocks(promtool, live, data)
        (tmp / "prometheus.yml").write_text("global: {}\n")
        # time retention counts back from the newest block: keep the history
        url, proc, log = start_prometheus(tmp / "prometheus.yml", data, tmp, "10y")

        def ready() -> bool:
            with urllib.request.urlopen(url + "/-/ready", timeout=5) as resp:
                return resp.status == 200

        _wait("Prometheus /-/ready", ready, 120, proc, log)
        yield History(sim, start, end, plan_days(start, end), url, backfill)
    finally:
        if proc is not None:
            stop_process(proc)
        sim.stop()


def test_backfill_reported_progress(history):
    for app in APPS:
        n = len(history.days)
        assert f"app {app}: {n}/{n} days" in history.backfill.stderr


def test_each_days_total(history):
    for day in history.days:
        got = history.at(
            f"max_over_time(scaleengine_vse_app_day_bytes{{{BACKFILLED}}}[23h])",
            midnight_after(day),
        )
        want = {
            (("account", ACCOUNT), ("app", app)): history.sim.delivered(app, day)[0] for app in APPS
        }
        assert got == want, day
        got = history.at(
            f"max_over_time(scaleengine_vse_app_day_requests{{{BACKFILLED}}}[23h])",
            midnight_after(day),
        )
        assert got == {
            (("account", ACCOUNT), ("app", app)): history.sim.delivered(app, day)[1] for app in APPS
        }


def test_each_videos_bytes(history):
    folded_seen = False
    for day in history.days:
        got = history.at(
            f"max_over_time(scaleengine_vse_day_bytes{{{BACKFILLED}}}[23h])", midnight_after(day)
        )
        want = {}
        for app in APPS:
            served = history.sim.reported_videos(app, day.year, day.month, day.day)
            for url, nbytes, _ in fold_videos(served, MAX_VIDEOS):
                want[(("account", ACCOUNT), ("app", app), ("video_url", url))] = nbytes
                folded_seen |= url == "__other__"
        assert got == want, day
    assert folded_seen, "the cap never folded a video into __other__: the test proves less"
    urls = {dict(k)["video_url"] for k in got}
    assert any(not u.isascii() for u in urls), "no non-ASCII video_url made it through"


def test_month_to_date(history):
    totals = {app: 0 for app in APPS}
    for day in history.days:
        if day.day == 1:
            totals = {app: 0 for app in APPS}
        for app in APPS:
            totals[app] += history.sim.delivered(app, day)[0]
        got = history.at(
            f"max_over_time(scaleengine_vse_app_month_bytes{{{BACKFILLED}}}[23h])",
            midnight_after(day),
        )
        assert got == {(("account", ACCOUNT), ("app", app)): totals[app] for app in APPS}, day
    # the complete month equals what the API answers for the month as a whole
    month = history.days[0]
    last = (month.replace(day=28) + timedelta(days=4)).replace(day=1) - timedelta(days=1)
    got = history.at(
        f"max_over_time(scaleengine_vse_app_month_bytes{{{BACKFILLED}}}[23h])", midnight_after(last)
    )
    for app in APPS:
        served = history.sim.reported_videos(app, month.year, month.month, None)
        assert got[(("account", ACCOUNT), ("app", app))] == sum(b for b, _ in served.values())


def _panels() -> dict[str, dict]:
    dashboard = json.loads(DASHBOARD.read_text())
    return {p["title"]: p for p in dashboard["panels"] if p["title"] in HISTORY_PANELS}


def _grafana_query(expr: str, apps: list[str]) -> str:
    """The expression as Grafana sends it with $app set to these apps (multi-select) and
    $account to All (its all value, .*)."""
    escaped = [re.sub(r"([\\^$*+?.()|\[\]{}/])", r"\\\\\1", a) for a in apps]
    expr = expr.replace("$app", "(" + "|".join(escaped) + ")").replace("$account", ".*")
    assert "$" not in expr, expr
    return expr


def test_history_panels_are_daily_bars(history):
    panels = _panels()
    assert set(panels) == set(HISTORY_PANELS)
    assert panels["Daily bytes per app"]["timeFrom"] == "30d"
    for panel in panels.values():
        assert panel["interval"] == "1d"
        custom = panel["fieldConfig"]["defaults"]["custom"]
        assert custom["drawStyle"] == "bars" and custom["barAlignment"] == -1
        # a year of 1d steps fits: Grafana's step is max(interval, range / maxDataPoints)
        assert panel["maxDataPoints"] >= 366


@pytest.mark.parametrize("title", HISTORY_PANELS)
def test_history_panels_answer_each_day(history, title):
    """Queried as Grafana queries them (1d steps aligned on midnights), for one app and all."""
    panel = _panels()[title]
    first, last = midnight_after(history.days[0]), midnight_after(history.days[-1])
    for apps in (["live-b"], sorted(APPS)):
        for target in panel["targets"]:
            query = _grafana_query(target["expr"], apps)
            result = history.api(
                "/api/v1/query_range", query=query, start=first, end=last, step=DAY
            )["result"]
            assert sorted(r["metric"]["app"] for r in result) == apps, query
            for series in result:
                app = series["metric"]["app"]
                values = {int(t): float(v) for t, v in series["values"]}
                totals = 0
                for day in history.days:
                    b = history.sim.delivered(app, day)[0]
                    if title == "Daily bytes per app":
                        want = b
                    else:
                        totals = b if day.day == 1 else totals + b
                        want = totals
                    assert values.get(midnight_after(day)) == want, (title, app, day)


@pytest.mark.parametrize("title", HISTORY_PANELS)
def test_history_panels_read_live_days_too(history, title):
    """A live day: the bar is the day's last served value, not the previous day's stale values
    after midnight, and an outage across midnight still leaves the day its bar."""
    panel = _panels()[title]
    days = [d for d in history.days if d.month == history.end.month]
    assert len(days) == 10
    outage = outage_day(history.sim, days)
    first, last = midnight_after(days[0]), midnight_after(days[-1])
    query = _grafana_query(panel["targets"][0]["expr"], [LIVE_APP])
    result = history.api("/api/v1/query_range", query=query, start=first, end=last, step=DAY)
    values = {int(t): float(v) for t, v in result["result"][0]["values"]}
    month = 0
    smaller_after_larger = False
    for i, day in enumerate(days):
        b = history.sim.reported("live-b", day, at=last_served(history.sim, days, i))[0]
        want = b if title == "Daily bytes per app" else month + b
        assert values[midnight_after(day)] == want, (title, day)
        month += history.sim.delivered("live-b", day)[0]
        if i and i - 1 != outage and b < history.sim.delivered("live-b", days[i - 1])[0]:
            smaller_after_larger = True
    # the stale tail only matters after a bigger day: make sure the data has one
    assert smaller_after_larger or title == "Month by month"
