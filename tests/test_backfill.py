"""`scaleengine-exporter backfill` against the simulator over real HTTP on loopback.

The simulator runs on the real clock (its timestamp check stays on), so the days used here are
computed from today: past days, which it serves complete. Prometheus and promtool consuming the
output are in tests/integration/test_backfill_prometheus.py.
"""

from __future__ import annotations

import hashlib
import io
import os
import signal
import stat
import subprocess
import sys
import threading
from collections import Counter
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from helpers import ROOT, need_binary, sim_config, wait_for
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from exporter import backfill
from exporter.backfill import Progress, day_timestamp, plan_days
from exporter.config import parse_config
from exporter.poller import fold_videos
from exporter.simulator import Simulator

APPS = {"vod-a": 9, "live-b": 6}
MAX_VIDEOS = 4
TZ = "America/New_York"


def this_month_start(tz: str = TZ) -> date:
    return datetime.now(ZoneInfo(tz)).date().replace(day=1)


def previous_month(first: date) -> date:
    return (first - timedelta(days=1)).replace(day=1)


@pytest.fixture
def sim():
    s = Simulator(apps=APPS, tz=TZ)
    s.start()
    try:
        yield s
    finally:
        s.stop()


def config_data(sim: Simulator, **poll: object) -> dict:
    return sim_config(
        sim,
        poll={"timezone": TZ, "retries": 0, "concurrency": 2, **poll},
        limits={"max_videos_per_app": MAX_VIDEOS},
    )


def make_config(sim: Simulator, **poll: object):
    return parse_config(config_data(sim, **poll), env={})


def write_config(tmp_path: Path, sim: Simulator, **poll: object) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config_data(sim, **poll)))
    path.chmod(0o600)
    return path


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "backfill", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def parse(text: str) -> dict[tuple[str, tuple, int], float]:
    """Samples by (name, labels, timestamp); fails on a duplicate or a missing # EOF."""
    assert text.endswith("# EOF\n")
    out: dict[tuple[str, tuple, int], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())), int(float(s.timestamp)))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def sample_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("#")]


def expected(sim: Simulator, days: list[date]) -> dict[tuple[str, tuple, int], int]:
    """What the file must hold for these days, from the simulator's own truth."""
    tz = ZoneInfo(TZ)
    out: dict[tuple[str, tuple, int], int] = {}
    for app in APPS:
        month_b = month_r = 0
        for day in days:
            if day.day == 1:
                month_b = month_r = 0
            ts = day_timestamp(day, tz)
            videos = sim.reported_videos(app, day.year, day.month, day.day)
            b, r = sim.delivered(app, day)
            month_b += b
            month_r += r
            lab = (
                ("account", "4242"),
                ("app", app),
            )
            out[("scaleengine_vse_app_day_bytes", lab, ts)] = b
            out[("scaleengine_vse_app_day_requests", lab, ts)] = r
            out[("scaleengine_vse_app_day_videos", lab, ts)] = len(videos)
            out[("scaleengine_vse_app_month_bytes", lab, ts)] = month_b
            out[("scaleengine_vse_app_month_requests", lab, ts)] = month_r
            for url, vb, vr in fold_videos(videos, MAX_VIDEOS):
                vlab = (("account", "4242"), ("app", app), ("video_url", url))
                out[("scaleengine_vse_day_bytes", vlab, ts)] = vb
                out[("scaleengine_vse_day_requests", vlab, ts)] = vr
    return out


def test_plan_and_timestamps():
    assert plan_days(date(2026, 3, 14), date(2026, 3, 16))[0] == date(2026, 3, 1)
    assert len(plan_days(date(2026, 3, 14), date(2026, 4, 2))) == 33
    tz = ZoneInfo("Europe/Berlin")
    # 2026-03-29 has 23 hours in Berlin: the sample is one second before the next midnight
    ts = day_timestamp(date(2026, 3, 29), tz)
    assert datetime.fromtimestamp(ts, tz).isoformat() == "2026-03-29T23:59:59+02:00"
    assert datetime.fromtimestamp(ts + 1, tz).isoformat() == "2026-03-30T00:00:00+02:00"
    assert day_timestamp(date(2026, 1, 1), ZoneInfo("UTC")) == int(
        datetime(2026, 1, 1, 23, 59, 59, tzinfo=UTC).timestamp()
    )


def test_writes_each_day_exactly_as_served(sim, tmp_path):
    """Mid-month --from: the month's earlier days are read too, so month to date is exact."""
    first = previous_month(this_month_start())
    start, end = first + timedelta(days=5), first + timedelta(days=8)
    out = tmp_path / "history.om"
    err = io.StringIO()
    code = backfill.run(make_config(sim), start, end, str(out), stderr=err)
    assert code == 0, err.getvalue()
    text = out.read_text()
    got = parse(text)
    want = expected(sim, plan_days(start, end))
    assert got == want
    # the month query of the API agrees with the sum of its days (a complete past month)
    whole = previous_month(first)
    month_out = tmp_path / "month.om"
    last = first - timedelta(days=1)
    assert backfill.run(make_config(sim), whole, last, str(month_out), stderr=err) == 0
    month = parse(month_out.read_text())
    for app in APPS:
        served = sim.reported_videos(app, whole.year, whole.month, None)
        total = sum(b for b, _ in served.values())
        ts = day_timestamp(last, ZoneInfo(TZ))
        assert (
            month[
                (
                    "scaleengine_vse_app_month_bytes",
                    (
                        ("account", "4242"),
                        ("app", app),
                    ),
                    ts,
                )
            ]
            == total
        )
    # progress: plain lines (stderr is not a terminal) with days done of days asked, per app
    lines = err.getvalue()
    for app in APPS:
        assert f"app {app}: 9/9 days" in lines
    assert "month to date needs every day of the month" in lines


def test_families_grouped_and_series_in_time_order(sim, tmp_path):
    first = previous_month(this_month_start())
    out = tmp_path / "h.om"
    assert backfill.run(make_config(sim), first, first + timedelta(days=3), str(out)) == 0
    seen_families: list[str] = []
    last_ts: dict[str, int] = {}
    for line in out.read_text().splitlines():
        if line.startswith("# TYPE"):
            name = line.split()[2]
            assert name not in seen_families
            seen_families.append(name)
        elif not line.startswith("#"):
            series, _, ts = line.rpartition(" ")
            series = series.rpartition(" ")[0]
            assert series.startswith(seen_families[-1])
            assert int(ts) > last_ts.get(series, 0), line
            last_ts[series] = int(ts)


def test_rerun_over_a_partly_written_range_adds_no_duplicates(sim, tmp_path):
    first = previous_month(this_month_start())
    part, whole = tmp_path / "part.om", tmp_path / "whole.om"
    cfg = make_config(sim)
    assert backfill.run(cfg, first, first + timedelta(days=4), str(part)) == 0
    sim.clear_log()
    err = io.StringIO()
    end = first + timedelta(days=9)
    assert backfill.run(cfg, first + timedelta(days=2), end, str(part), stderr=err) == 0
    days = {(e["app"], e["day"]) for e in sim.request_log}
    assert days == {(app, d) for app in APPS for d in range(6, 11)}, "kept days read again"
    assert "10 app-days already in" in err.getvalue()
    assert backfill.run(cfg, first, end, str(whole)) == 0
    # the resumed file is the file a single run writes, and holds no sample twice
    assert part.read_text() == whole.read_text()
    lines = sample_lines(part.read_text())
    assert len(lines) == len(set(lines))
    parse(part.read_text())


def test_a_file_written_before_accounts_is_the_single_accounts(sim, tmp_path):
    """An output file without the account label (written by backfill before several
    accounts) is read back as the single account's days: a rerun reads none again and
    writes them with the label."""
    first = previous_month(this_month_start())
    out = tmp_path / "h.om"
    cfg = make_config(sim)
    assert backfill.run(cfg, first, first + timedelta(days=2), str(out)) == 0
    labelled = out.read_text()
    old = labelled.replace('account="4242",', "")  # the account: the simulator's cdn_id
    assert old != labelled and "account=" not in old
    out.write_text(old)
    sim.clear_log()
    assert backfill.run(cfg, first, first + timedelta(days=2), str(out)) == 0
    assert not sim.request_log
    assert out.read_text() == labelled


def test_failing_day_exit_1_names_it_and_every_other_day_is_written(sim, tmp_path):
    first = previous_month(this_month_start())
    bad = first + timedelta(days=3)
    end = first + timedelta(days=6)
    sim.set_day_fault("vod-a", bad, "http_500")
    out = tmp_path / "h.om"
    cfg_path = write_config(tmp_path, sim, retries=1)
    proc = run_cli(
        "--config", str(cfg_path), "--from", first.isoformat(), "--to", end.isoformat(),
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 1, proc.stderr
    assert f"app vod-a day {bad.isoformat()} could not be read" in proc.stderr
    assert "http_status" in proc.stderr
    assert sim.api_key not in proc.stderr and sim.api_secret not in proc.stderr
    got = parse(out.read_text())
    want = expected(sim, plan_days(first, end))
    tz = ZoneInfo(TZ)
    missing = {k for k in want if k not in got}
    # the bad day, and vod-a's month to date from that day on (it cannot be exact)
    assert {(k[0], dict(k[1])["app"], k[2]) for k in missing} == (
        {
            (name, "vod-a", day_timestamp(bad, tz))
            for name, *_ in [k for k in want if k[2] == day_timestamp(bad, tz)]
        }
        | {
            (name, "vod-a", day_timestamp(first + timedelta(days=d), tz))
            for d in range(4, 7)
            for name in ("scaleengine_vse_app_month_bytes", "scaleengine_vse_app_month_requests")
        }
    )
    assert all(got[k] == want[k] for k in got)
    # the day is fixed: a rerun reads only it and completes the file
    sim.set_day_fault("vod-a", bad, None)
    sim.clear_log()
    proc = run_cli(
        "--config", str(cfg_path), "--from", first.isoformat(), "--to", end.isoformat(),
        "--output", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert {(e["app"], e["day"]) for e in sim.request_log} == {("vod-a", bad.day)}
    assert parse(out.read_text()) == want


def test_busy_api_is_waited_for_then_read(sim, tmp_path):
    first = previous_month(this_month_start())
    sim.set_fault("live-b", "failure_1000", times=2)
    err = io.StringIO()
    out = tmp_path / "h.om"
    code = backfill.run(
        make_config(sim), first, first + timedelta(days=1), str(out), busy_wait=0.01, stderr=err
    )
    assert code == 0, err.getvalue()
    assert "busy (error 1000), waiting 0.01s (busy try 2 of" in err.getvalue()
    assert parse(out.read_text()) == expected(sim, plan_days(first, first + timedelta(days=1)))


def test_busy_without_end_gives_up_on_the_day(sim, tmp_path):
    first = previous_month(this_month_start())
    sim.set_day_fault("live-b", first, "failure_1000")
    err = io.StringIO()
    sim.clear_log()
    code = backfill.run(
        make_config(sim), first, first, str(tmp_path / "h.om"), busy_wait=0.01, stderr=err
    )
    assert code == 1
    asked = [e for e in sim.request_log if e["app"] == "live-b"]
    assert len(asked) == backfill.BUSY_TRIES + 1
    assert f"app live-b day {first.isoformat()} could not be read" in err.getvalue()


def test_auth_error_stops_asking_for_that_app(sim, tmp_path):
    first = previous_month(this_month_start())
    sim.set_day_fault("vod-a", first, "failure_0001")
    sim.clear_log()
    err = io.StringIO()
    out = tmp_path / "h.om"
    code = backfill.run(make_config(sim), first, first + timedelta(days=4), str(out), stderr=err)
    assert code == 1
    assert sim.requests_for("vod-a") == 1
    text = err.getvalue()
    assert "4 later day(s) of the app not tried" in text
    # not retried, so not "after retries"; a plain rerun would not help: say to fix it first
    assert "could not be read: api_0001" in text and "after retries" not in text
    assert "fix the cause above" in text
    got = parse(out.read_text())
    assert {dict(k[1])["app"] for k in got} == {"live-b"}


def test_not_our_file_is_refused_and_left_alone(sim, tmp_path):
    out = tmp_path / "notes.txt"
    out.write_text("my notes\n")
    cfg = write_config(tmp_path, sim)
    day = previous_month(this_month_start())
    proc = run_cli("--config", str(cfg), "--from", day.isoformat(), "--output", str(out))
    assert proc.returncode == 2
    assert "is not a file written by scaleengine-exporter backfill" in proc.stderr
    assert out.read_text() == "my notes\n"


def test_stdout_output(sim, tmp_path):
    cfg = write_config(tmp_path, sim)
    day = previous_month(this_month_start())
    proc = run_cli(
        "--config", str(cfg), "--from", day.isoformat(), "--to", day.isoformat(), "--output", "-"
    )
    assert proc.returncode == 0, proc.stderr
    assert parse(proc.stdout) == expected(sim, [day])
    assert "app vod-a: 1/1 days" in proc.stderr


def test_progress_bar_on_a_terminal():
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    stream = Terminal()
    progress = Progress(stream, tty=stream.isatty(), columns=200)
    progress.add("a", 4, 0)
    progress.add("b", 4, 2)
    progress.day("a", date(2026, 1, 1), ok=True)
    progress.message("note")
    progress.close()
    progress.message("done")
    text = stream.getvalue()
    assert "\r" in text and "[" + "#" * 11 in text and "1/4" in text and "3/8 days" in text
    assert text.endswith("3/8 days  a 1/4 b 2/4\nscaleengine-exporter backfill: done\n"), text


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--to", "{today}"], "is not in the past"),
        (["--to", "{tomorrow}"], "is not in the past"),
        (["--from", "{yesterday}", "--to", "{two_days_ago}"], "is after --to"),
        (["--from", "{long_ago}"], "days asked, at most 400"),
        (["--from", "2026-02-30"], "day is out of range"),
        (["--from", "26-1-1"], "is not a date written YYYY-MM-DD"),
    ],
)
def test_bad_arguments_exit_2(sim, tmp_path, args, message):
    today = datetime.now(ZoneInfo(TZ)).date()
    values = {
        "today": today,
        "tomorrow": today + timedelta(days=1),
        "yesterday": today - timedelta(days=1),
        "two_days_ago": today - timedelta(days=2),
        "long_ago": today - timedelta(days=401),
    }
    argv = [a.format(**{k: v.isoformat() for k, v in values.items()}) for a in args]
    if "--from" not in argv:
        argv += ["--from", values["two_days_ago"].isoformat()]
    out = tmp_path / "h.om"
    cfg = write_config(tmp_path, sim)
    sim.clear_log()
    proc = run_cli("--config", str(cfg), "--output", str(out), *argv)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists() and not sim.request_log


def test_400_days_are_accepted(sim, tmp_path):
    today = datetime.now(ZoneInfo(TZ)).date()
    with pytest.raises(ValueError, match="401 days"):
        backfill.check_range(today - timedelta(days=401), today - timedelta(days=1), today)
    end = backfill.check_range(today - timedelta(days=400), None, today)
    assert end == today - timedelta(days=1)


def test_bad_config_exit_2(tmp_path):
    cfg = tmp_path / "c.yaml"
    # only apps is wrong (without a scaleengine section, that is the first error named)
    cfg.write_text("scaleengine: {cdn_id: 1, api_key: k, api_secret: s}\napps: []\n")
    cfg.chmod(0o600)
    proc = run_cli("--config", str(cfg), "--from", "2026-01-01", "--output", "-")
    assert proc.returncode == 2
    assert "apps: must list at least one app" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_help_documents_every_flag():
    proc = run_cli("--help")
    assert proc.returncode == 0
    for action in backfill.build_parser()._actions:
        for option in action.option_strings:
            assert option in proc.stdout
        assert action.help, action.option_strings
    assert "create-blocks-fromopenmetrics" in "".join(proc.stdout.split())


def test_flag_style_cli_still_works(sim, tmp_path):
    cfg = write_config(tmp_path, sim)
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(cfg)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ},
    )
    assert proc.returncode == 0 and "config ok" in proc.stdout


def test_request_counts_per_day(sim, tmp_path):
    """One request per app and day (page size above the day's rows): no needless API load."""
    first = previous_month(this_month_start())
    sim.clear_log()
    end = first + timedelta(days=2)
    assert backfill.run(make_config(sim), first, end, str(tmp_path / "h")) == 0
    counts = Counter((e["app"], e["day"]) for e in sim.request_log)
    assert counts == Counter({(app, d): 1 for app in APPS for d in (1, 2, 3)})


def test_warns_when_yesterday_may_still_grow(sim, tmp_path):
    cfg = write_config(tmp_path, sim)
    tz = ZoneInfo(TZ)
    today = datetime.now(tz).date()
    half_past_midnight = datetime.combine(today, datetime.min.time(), tz).timestamp() + 1800
    yesterday = (today - timedelta(days=1)).isoformat()
    err = io.StringIO()
    argv = ["--config", str(cfg), "--from", yesterday, "--output", str(tmp_path / "h.om")]
    code = backfill.main(argv, now=lambda: half_past_midnight, stderr=err)
    assert code == 0, err.getvalue()
    assert f"warning: {yesterday} may still receive late data for 90 more minutes" in err.getvalue()
    err = io.StringIO()
    code = backfill.main(argv, now=lambda: half_past_midnight + 7200, stderr=err)
    assert code == 0 and "late data" not in err.getvalue()


def test_an_unexpected_error_in_one_app_is_reported_exit_1(sim, tmp_path, monkeypatch):
    """A bug (not an API error) in one app's thread is not lost: exit 1, the app named."""
    first = previous_month(this_month_start())
    real = backfill.day_usage

    def broken(result, app, config):
        if app.name == "vod-a":
            raise RuntimeError("bug")
        return real(result, app, config)

    monkeypatch.setattr(backfill.runner, "day_usage", broken)  # where run() looks it up
    err = io.StringIO()
    out = tmp_path / "h.om"
    assert backfill.run(make_config(sim), first, first, str(out), stderr=err) == 1
    assert "app vod-a: unexpected RuntimeError" in err.getvalue()
    assert {dict(k[1])["app"] for k in parse(out.read_text())} == {"live-b"}


@pytest.mark.parametrize("concurrency", [1, 2])
def test_poll_concurrency_apps_at_once(sim, tmp_path, concurrency):
    """While one app waits on a slow answer, the other is read only with concurrency 2."""
    first = previous_month(this_month_start())
    sim.fault_delay = 2.0
    sim.set_day_fault("vod-a", first, "timeout")  # answers after 2 s (error 0004)
    sim.clear_log()
    cfg = make_config(sim, concurrency=concurrency)
    end = first + timedelta(days=2)
    assert backfill.run(cfg, first, end, str(tmp_path / "h.om"), stderr=io.StringIO()) == 1
    order = [e["app"] for e in sim.request_log]
    assert order.count("vod-a") == 3 and order.count("live-b") == 3, order
    second_vod = [i for i, app in enumerate(order) if app == "vod-a"][1]
    live_done = max(i for i, app in enumerate(order) if app == "live-b")
    # with 2 at once, live-b is read while vod-a's first day hangs; with 1, after vod-a
    assert (live_done < second_vod) == (concurrency == 2), order


def test_progress_bar_fits_the_terminal_line():
    stream = io.StringIO()
    progress = Progress(stream, tty=True, columns=20)
    progress.add("an-app-with-a-long-name", 400, 0)
    progress.day("an-app-with-a-long-name", date(2026, 1, 1), ok=True)
    assert all(len(part) <= 19 for part in stream.getvalue().split("\r\033[K"))


def test_unwritable_output_directory_exit_2_before_any_request(sim, tmp_path):
    if os.geteuid() == 0:
        target = Path("/proc/h.om")  # a directory that not even root can create files in
    else:
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        target = locked / "h.om"
    cfg = write_config(tmp_path, sim)
    sim.clear_log()
    day = previous_month(this_month_start()).isoformat()
    proc = run_cli("--config", str(cfg), "--from", day, "--to", day, "--output", str(target))
    assert proc.returncode == 2 and "--output: cannot write in" in proc.stderr, proc.stderr
    assert not sim.request_log


def _hang_one_day(sim: Simulator, day: date) -> None:
    """vod-a's ``day`` answers only after 30 s; the client gives up after its 8 s timeout."""
    sim.fault_delay = 30.0
    sim.set_day_fault("vod-a", day, "timeout")


def test_checkpoint_writes_the_days_read_while_others_still_run(sim, tmp_path):
    first = previous_month(this_month_start())
    _hang_one_day(sim, first + timedelta(days=2))
    data = config_data(sim)
    data["scaleengine"]["timeout"] = "8s"
    cfg = parse_config(data, env={})
    out = tmp_path / "h.om"
    codes: list[int] = []
    end = first + timedelta(days=4)
    thread = threading.Thread(
        target=lambda: codes.append(
            backfill.run(cfg, first, end, str(out), stderr=io.StringIO(), checkpoint_seconds=0)
        )
    )
    thread.start()
    try:
        tz = ZoneInfo(TZ)
        second = (
            "scaleengine_vse_app_day_bytes",
            (
                ("account", "4242"),
                ("app", "vod-a"),
            ),
            day_timestamp(first + timedelta(days=1), tz),
        )

        def checkpointed() -> bool:
            return out.exists() and second in parse(out.read_text())

        wait_for(checkpointed, 30, "a checkpoint with vod-a's days before the slow one")
        assert thread.is_alive(), "the run ended before vod-a's slow day: nothing proved"
    finally:
        thread.join(60)
    assert codes == [1]


def test_interrupted_run_keeps_what_it_read_and_a_rerun_completes_it(sim, tmp_path):
    first = previous_month(this_month_start())
    slow = first + timedelta(days=2)
    _hang_one_day(sim, slow)
    data = config_data(sim)
    data["scaleengine"]["timeout"] = "8s"
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(yaml.safe_dump(data))
    cfg_path.chmod(0o600)
    out = tmp_path / "h.om"
    end = first + timedelta(days=4)
    argv = [sys.executable, "-m", "exporter", "backfill", "--config", str(cfg_path)]
    argv += ["--from", first.isoformat(), "--to", end.isoformat(), "--output", str(out)]
    proc = subprocess.Popen(argv, cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:

        def hanging() -> bool:
            return any(e["app"] == "vod-a" and e["day"] == slow.day for e in sim.request_log)

        wait_for(hanging, 30, "vod-a's slow day to be asked")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "interrupted: writing the days read so far" in stderr
    kept = {(dict(k[1])["app"], k[2]) for k in parse(out.read_text())}
    tz = ZoneInfo(TZ)
    assert ("vod-a", day_timestamp(first + timedelta(days=1), tz)) in kept
    assert ("vod-a", day_timestamp(slow, tz)) not in kept
    sim.set_day_fault("vod-a", slow, None)
    sim.clear_log()
    rerun = run_cli(*argv[4:])
    assert rerun.returncode == 0, rerun.stderr
    asked = {(e["app"], e["day"]) for e in sim.request_log}
    assert ("vod-a", slow.day) in asked and ("vod-a", first.day) not in asked
    assert parse(out.read_text()) == expected(sim, plan_days(first, end))


def test_folds_like_the_daemon_label_cap_included(sim):
    """backfill and the daemon fold with the same limits: a long URL is cut like a live one."""
    from exporter.scaleengine import UsageResult

    data = config_data(sim)
    data["limits"] = {"max_videos_per_app": 10, "max_label_length": 64}
    config = parse_config(data, env={})
    long_url = "https://cdn.example/" + "x" * 500 + ".mp4"
    result = UsageResult(videos={long_url: (7, 1), "short.mp4": (5, 1)})
    usage = backfill.day_usage(result, config.accounts[0].apps[0], config)
    labels = [v[0] for v in usage.videos]
    assert "short.mp4" in labels and long_url not in labels
    assert all(len(label.encode()) <= 64 for label in labels)
    assert usage.videos == fold_videos(result.videos, 10, max_label_length=64)


LONG_MP4 = "sestore/vod/" + "x" * 4984 + ".mp4"  # 5000 bytes
FILTER_ROWS = [(LONG_MP4, 700, 7), ("sestore/vod/short.mp4", 100, 1), ("vod_stream01", 50, 5)]


@pytest.mark.parametrize(
    ("limits", "want"),
    [
        ({"exclude": r"\.mp4$"}, {"vod_stream01": 50, "__other__": 800}),
        (
            {"include": "x{4984}\\.mp4$"},
            {"sestore/vod/" + "x" * 71 + "~" + hashlib.sha256(LONG_MP4.encode()).hexdigest()[:16]:
             700, "__other__": 150},
        ),
    ],
)  # fmt: skip
def test_include_exclude_see_a_long_url_as_sent_as_in_the_daemon(tmp_path, limits, want):
    """backfill filters on each URL as sent too: with max_label_length 100, exclude '\\.mp4$'
    folds a 5000-byte .mp4 URL into __other__, and an include matching only its tail keeps
    it under its cut label (its first 83 bytes, "~" and 16 hex digits of its SHA-256)."""
    day = previous_month(this_month_start())
    with Simulator(apps={"vod": 3}, tz=TZ, static_rows={"vod": FILTER_ROWS}) as fsim:
        data = config_data(fsim)
        data["limits"] = {"max_label_length": 100, **limits}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
        out = tmp_path / "h.om"
        proc = run_cli("--config", str(path), "--from", day.isoformat(), "--to",
                       day.isoformat(), "--output", str(out))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    got = parse(out.read_text())
    ts = day_timestamp(day, ZoneInfo(TZ))
    shown = {
        dict(labels)["video_url"]: v
        for (name, labels, t), v in got.items()
        if name == "scaleengine_vse_day_bytes" and t == ts
    }
    assert shown == want
    assert (
        got[
            (
                "scaleengine_vse_app_day_bytes",
                (
                    ("account", "4242"),
                    ("app", "vod"),
                ),
                ts,
            )
        ]
        == 850
    )
    assert (
        got[
            (
                "scaleengine_vse_app_day_videos",
                (
                    ("account", "4242"),
                    ("app", "vod"),
                ),
                ts,
            )
        ]
        == 3
    )


def test_answer_size_cap_applies_as_in_the_daemon(tmp_path):
    """scaleengine.max_response_bytes bounds backfill's answers as it bounds the daemon's: an
    app whose answers are over the cap fails with too_large, the other app is written."""
    first = previous_month(this_month_start())
    with Simulator(apps={"big": 40, "small": 2}, tz=TZ) as big_sim:
        big_sim.start()
        data = config_data(big_sim)
        data["scaleengine"]["max_response_bytes"] = "1KiB"  # "big"'s day: about 4 kB
        err = io.StringIO()
        out = tmp_path / "h.om"
        config = parse_config(data, env={})
        code = backfill.run(config, first, first + timedelta(days=1), str(out), stderr=err)
    assert code == 1
    assert f"app big day {first.isoformat()}" in err.getvalue()
    assert "too_large" in err.getvalue()
    assert {dict(k[1])["app"] for k in parse(out.read_text())} == {"small"}


# -- the output file: regular files only, bounded, never blocking (issue 15 item 10) --------


@pytest.mark.parametrize("kind", ["fifo", "/dev/zero", "/dev/full", "folder", "2**30+1 bytes"])
def test_output_that_is_not_a_readable_file_exit_2_before_any_request(sim, tmp_path, kind):
    if kind == "fifo":
        target = tmp_path / "h.om"
        os.mkfifo(target)  # no writer: a blocking open would hang
    elif kind == "folder":
        target = tmp_path / "h.om"
        target.mkdir()
    elif kind.startswith("2**30"):
        target = tmp_path / "h.om"
        with open(target, "wb") as fh:  # sparse: 1 GiB + 1 byte without writing them
            fh.truncate(1073741825)
    else:
        target = Path(kind)
    cfg = write_config(tmp_path, sim)
    sim.clear_log()
    day = previous_month(this_month_start()).isoformat()
    proc = run_cli("--config", str(cfg), "--from", day, "--to", day, "--output", str(target))
    assert proc.returncode == 2, proc.stderr
    reason = "larger than 1073741824 bytes" if kind.startswith("2**") else "not a regular file"
    assert f"cannot read {target}: " in proc.stderr and reason in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sim.request_log
    if kind == "/dev/zero":
        assert stat.S_ISCHR(os.stat("/dev/zero").st_mode)  # still the device, not replaced


def test_carriage_return_in_a_video_url_round_trips(tmp_path):
    """A \\r in a label value is a character (OpenMetrics escapes only \\\\, \\" and \\n):
    written raw, promtool takes it, and a rerun reads the file back without a request."""
    rows = {"vod-a": [("clip\r1.mp4", 500, 3), ('q"\\\n.mp4', 40, 1)], "live-b": []}
    with Simulator(apps=APPS, tz=TZ, static_rows=rows) as sim:
        cfg = write_config(tmp_path, sim)
        out = tmp_path / "h.om"
        day = previous_month(this_month_start()).isoformat()
        args = ("--config", str(cfg), "--from", day, "--to", day, "--output", str(out))
        first = run_cli(*args)
        assert first.returncode == 0, first.stderr
        assert b'video_url="clip\r1.mp4"' in out.read_bytes()
        sim.clear_log()
        again = run_cli(*args)
        assert again.returncode == 0, again.stderr
        assert not sim.request_log, "a rerun read days the file already holds"
    text = out.read_bytes().decode()
    urls = {
        s.labels.get("video_url") for f in text_string_to_metric_families(text) for s in f.samples
    }
    assert urls - {None} == {"clip\r1.mp4", 'q"\\\n.mp4'}
    blocks = subprocess.run(
        [need_binary("promtool"), "tsdb", "create-blocks-from", "openmetrics", str(out),
         str(tmp_path / "blocks")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert blocks.returncode == 0, blocks.stdout + blocks.stderr


def test_with_discovery_every_app_app_list_names_is_read(tmp_path):
    """discovery.enabled without apps: backfill reads the apps app.list names (filtered);
    a failed listing reads nothing and exits 1 naming the account."""
    with Simulator(apps={"vod-a": 2, "live-b": 2, "vod-c": 1}, tz=TZ) as sim:
        data = config_data(sim)
        del data["apps"]
        data["discovery"] = {"enabled": True, "exclude": "^live-"}
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(data))
        path.chmod(0o600)
        day = (this_month_start() - timedelta(days=1)).replace(day=1)
        out = tmp_path / "history.om"
        args = ["--config", str(path), "--from", day.isoformat(), "--to", day.isoformat()]
        proc = run_cli(*args, "--output", str(out))
        assert proc.returncode == 0, proc.stderr
        apps = {dict(k[1])["app"] for k in parse(out.read_text())}
        assert apps == {"vod-a", "vod-c"}
        sim.set_fault("app.list", "failure_0005")
        again = tmp_path / "again.om"
        proc = run_cli(*args, "--output", str(again))
    assert proc.returncode == 1
    assert f"cannot list the apps of account {sim.cdn_id} (discovery)" in proc.stderr
    assert "Traceback" not in proc.stderr and not again.exists()
