"""Hostile answers and fragile state (issue 8), against the exporter as a user runs it: the
daemon or ``--once`` in a subprocess, polling the simulator over real HTTP on loopback.

Nothing freezes (a lone surrogate in a video_url), nothing resets (restarts with a state
file, scraped every 10 ms), nothing grows without bound (label length), an exception inside a
poll is a failed poll, and the state file cannot crash, block or be shared by two exporters.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import yaml
from helpers import ROOT, free_port, http_get, promtool_check_metrics, samples, sim_config, wait_for

from exporter.simulator import Simulator

APPS = {"news": 10, "sport": 5}


@pytest.fixture
def sim():
    with Simulator(apps=APPS, seed=4) as s:
        s.fault_delay = 1.0
        yield s


def write_config(tmp_path: Path, sim: Simulator, **sections: dict) -> str:
    poll = {"interval": "1s", "retries": 0, "page_size": 5, **sections.pop("poll", {})}
    data = sim_config(sim, poll=poll, **sections)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    return str(path)


def _env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")},
        "PYTHONUNBUFFERED": "1",
    }


def run_once(*args: str, timeout: float = 60, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--once", *args],
        capture_output=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
        **kwargs,
    )


def start_daemon(config: str, port: int | None = None) -> tuple[subprocess.Popen, str]:
    port = port or free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", config]
        + ["--web.listen-address", f"127.0.0.1:{port}"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
        cwd=ROOT,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> bytes:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.stderr.read() if proc.stderr else b""


def scrape(url: str) -> dict | None:
    try:
        status, _, body = http_get(url + "/metrics", timeout=5)
    except OSError:
        return None
    return samples(body) if status == 200 else None


def value(s: dict | None, name: str, **labels: str) -> float | None:
    if "app" in labels:  # the single form's account: the cdn_id (no scaleengine.account)
        labels = {"account": "4242", **labels}
    return None if s is None else s.get((name, tuple(sorted(labels.items()))))


# -- nothing freezes ---------------------------------------------------------------------


def test_lone_surrogate_once_prints_valid_utf8_without_traceback(tmp_path, sim):
    sim.set_fault("news", "surrogate_url")
    proc = run_once("--config", write_config(tmp_path, sim))
    assert b"Traceback" not in proc.stderr, proc.stderr.decode(errors="replace")
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")
    text = proc.stdout.decode("utf-8")  # strict: valid UTF-8
    assert promtool_check_metrics(proc.stdout).strip() == ""
    s = samples(text)
    assert value(s, "scaleengine_up", app="news") == 1
    news = {dict(k[1])["video_url"]: v for k, v in s.items() if k[0] == "scaleengine_vse_day_bytes"}
    news = {u: v for u, v in news.items() if "/news/" in u or u == "__other__"}
    assert [u for u in news if "bad\ufffdurl" in u], "the hostile URL, its surrogate replaced"
    assert sum(news.values()) == value(s, "scaleengine_vse_app_day_bytes", app="news")


def test_lone_surrogate_daemon_keeps_every_app_updating(tmp_path, sim):
    """One app's hostile row must not freeze /metrics: every app's request counters and
    last-success times keep moving, and the hostile app is up with its data."""
    sim.set_fault("news", "surrogate_url")
    proc, url = start_daemon(write_config(tmp_path, sim))
    try:

        def polled() -> dict | None:
            s = scrape(url)
            ok = s is not None and all(
                value(s, "scaleengine_vse_app_day_bytes", app=a) for a in APPS
            )
            return s if ok else None

        first = wait_for(polled, 30, "usage of every app despite the hostile row")
        assert value(first, "scaleengine_up", app="news") == 1

        def moved() -> bool:
            s = scrape(url)
            return all(
                (value(s, "scaleengine_last_success_timestamp_seconds", app=a) or 0)
                > value(first, "scaleengine_last_success_timestamp_seconds", app=a)
                and value(s, "scaleengine_api_requests_total", app=a, outcome="success")
                > value(first, "scaleengine_api_requests_total", app=a, outcome="success")
                for a in APPS
            )

        wait_for(moved, 30, "later polls of every app on /metrics")
    finally:
        err = stop(proc)
    assert b"Traceback" not in err, err.decode(errors="replace")


# -- nothing grows without bound -----------------------------------------------------------


def test_long_video_urls_are_capped_distinct_and_exact(tmp_path):
    prefix = "sestore/news/" + "x" * 100_000
    rows = [(prefix + "/one.mp4", 300, 3), (prefix + "/two.mp4", 200, 2), ("short.mp4", 100, 1)]
    with Simulator(apps={"news": 1}, static_rows={"news": rows}) as sim:
        for limit, extra in ((1024, {}), (200, {"limits": {"max_label_length": 200}})):
            proc = run_once("--config", write_config(tmp_path, sim, **extra))
            assert proc.returncode == 0, proc.stderr.decode(errors="replace")
            assert len(proc.stdout) < 20_000  # not 200 kB of labels
            s = samples(proc.stdout)
            videos = {
                dict(k[1])["video_url"]: v
                for k, v in s.items()
                if k[0] == "scaleengine_vse_day_bytes"
            }
            assert len(videos) == 3  # distinct URLs stay distinct series
            assert all(len(u.encode()) <= limit for u in videos)
            assert (
                sum(videos.values()) == 600 == value(s, "scaleengine_vse_app_day_bytes", app="news")
            )
            assert videos["short.mp4"] == 100


# -- an exception inside a poll is a failed poll -------------------------------------------

_LIMITED = """
import resource, sys
from exporter.cli import main
import exporter.poller, exporter.scaleengine, requests, json  # noqa: loaded before the limit
with open("/proc/self/status") as fh:
    size = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
# room for a normal poll, not for a 50 MB answer: a real MemoryError inside the poll
resource.setrlimit(resource.RLIMIT_AS, (size + 96 * 2**20, resource.RLIM_INFINITY))
sys.exit(main(sys.argv[1:]))
"""


def test_memory_error_inside_a_poll_is_a_failed_poll(tmp_path):
    hostile = [("sestore/huge/" + "y" * 50_000_000 + ".mp4", 1, 1)]  # a 50 MB answer
    small = [(f"sestore/small/v{i}.mp4", 1000 - i, 1) for i in range(5)]
    with Simulator(
        apps={"huge": 1, "small": 1}, static_rows={"huge": hostile, "small": small}
    ) as sim:
        config = write_config(
            tmp_path,
            sim,
            poll={"month_interval": "off", "concurrency": 1},
            scaleengine={"timeout": "60s"},  # the simulator takes a while to write 50 MB
        )
        proc = subprocess.run(
            [sys.executable, "-c", _LIMITED, "--once", "--config", config],
            capture_output=True,
            timeout=120,
            env={**_env(), "MALLOC_ARENA_MAX": "1"},
            cwd=ROOT,
        )
    err = proc.stderr.decode(errors="replace")
    assert proc.returncode == 1, err
    assert "Traceback" not in err, err
    assert "MemoryError" in err  # the log says what happened
    s = samples(proc.stdout)
    assert value(s, "scaleengine_up", app="huge") == 0
    assert value(s, "scaleengine_poll_errors_total", app="huge", outcome="internal") == 1
    assert value(s, "scaleengine_up", app="small") == 1
    assert value(s, "scaleengine_vse_app_day_bytes", app="small") == sum(r[1] for r in small)


# -- nothing resets --------------------------------------------------------------------------


def test_restarts_never_export_a_counter_below_its_saved_value(tmp_path, sim):
    """Scraped every 10 ms across three restarts (one port, one state file): each counter is
    absent until the state is loaded, never 0, so it never goes down."""
    config = write_config(tmp_path, sim, state={"path": str(tmp_path / "state.json")})
    port = free_port()
    names = ("scaleengine_vse_bytes_total", "scaleengine_vse_requests_total")
    seen: list[tuple[int, dict]] = []  # (run, sample values)
    run = [0]
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            s = scrape(f"http://127.0.0.1:{port}")
            if s is not None:
                seen.append((run[0], {(n, a): value(s, n, app=a) for n in names for a in APPS}))
            time.sleep(0.01)

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    errors = b""
    before = {a: 0.0 for a in APPS}  # each app's request counter at the end of the last run
    try:
        for i in range(4):
            run[0] = i
            proc, url = start_daemon(config, port)

            def counted(url: str = url) -> bool:
                s = scrape(url)
                now = {a: value(s, names[1], app=a) or 0 for a in APPS}
                if all(now[a] > before[a] for a in APPS):
                    before.update(now)
                    return True
                # traffic on demand: the simulator's own curve grows slowly at some hours
                for a in APPS:
                    sim.add_traffic(a, 1_000_000, 3)
                return False

            try:
                # counters that are worth losing: every app has counted something new in
                # this run, so that a restart that lost it would show
                wait_for(counted, 60, f"counters above the last run's (run {i})")
                time.sleep(0.5)
            finally:
                errors += stop(proc)
    finally:
        done.set()
        thread.join(10)
    assert b"Traceback" not in errors, errors.decode(errors="replace")
    last: dict = {}
    for i, values in seen:
        for key, v in values.items():
            if v is None:
                continue  # absent (state not loaded yet): allowed
            assert v >= last.get(key, 0), f"{key} went down from {last[key]} to {v} in run {i}"
            last[key] = v
    # the scraper really watched each start (the window of the old bug is ~0.3 s)
    for i in range(1, 4):
        assert len([v for r, v in seen if r == i]) >= 20


# -- state file ---------------------------------------------------------------------------


def test_unreadable_state_files_are_one_warning_and_a_fresh_start(tmp_path, sim):
    nested = tmp_path / "nested.json"
    nested.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    fifo = tmp_path / "fifo.json"
    os.mkfifo(fifo)  # no writer: a blocking open would never return
    for path in (nested, fifo):
        proc = run_once("--config", write_config(tmp_path, sim), "--state.path", str(path))
        err = proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, err
        assert "Traceback" not in err, err
        warnings = [line for line in err.splitlines() if "level=warning" in line]
        warnings = [line for line in warnings if "state" in line]
        assert len(warnings) == 1 and "starting fresh" in warnings[0], err
        assert value(samples(proc.stdout), "scaleengine_up", app="news") == 1


def test_second_exporter_on_one_state_file_exits_2(tmp_path, sim):
    state = tmp_path / "state.json"
    config = write_config(tmp_path, sim, state={"path": str(state)})
    first, url = start_daemon(config)
    try:
        wait_for(lambda: scrape(url), 30, "the first exporter")
        second, _ = start_daemon(config)
        second.wait(30)
        err = stop(second).decode()
        assert second.returncode == 2, err
        assert str(state) in err and "Traceback" not in err
        once = run_once("--config", config)
        assert once.returncode == 2 and str(state) in once.stderr.decode()
        assert scrape(url) is not None  # the first one is untouched
    finally:
        stop(first)
    assert first.returncode == 0
    # once the first is gone, the file is free again
    assert run_once("--config", config).returncode == 0


def test_failing_saves_are_counted(tmp_path, sim):
    """Once saves fail, scaleengine_state_last_save_timestamp_seconds stays EXACTLY at the last
    good save: watched every 20 ms, one value from the first failure on, no later than the
    moment the folder went away."""
    folder = tmp_path / "state"
    folder.mkdir()
    proc, url = start_daemon(write_config(tmp_path, sim, state={"path": str(folder / "s.json")}))
    names = (
        "scaleengine_state_save_failures_total",
        "scaleengine_state_last_save_timestamp_seconds",
    )
    seen: list[tuple[float | None, float | None]] = []  # (failures, last save) per scrape
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            s = scrape(url)
            if s is not None:
                seen.append(tuple(value(s, n) for n in names))
            time.sleep(0.02)

    thread = threading.Thread(target=scraper, daemon=True)
    try:
        first = wait_for(lambda: value(scrape(url), names[1]), 30, "a first save")
        assert value(scrape(url), names[0]) == 0
        thread.start()
        wait_for(lambda: len(seen) >= 5 and seen[-1][1] > first, 30, "a second save")
        # the folder goes away at once: a save either ended before or fails from now on
        shutil.move(folder, tmp_path / "gone")  # a rename: one step
        gone_at = time.time()
        wait_for(lambda: seen and (seen[-1][0] or 0) >= 3, 30, "three failed saves counted")
        done.set()
        thread.join(10)
        after = scrape(url)
        assert value(after, "scaleengine_up", app="news") == 1  # polling goes on
    finally:
        done.set()
        err = stop(proc)
    failing = [ts for failures, ts in seen if failures]
    assert len(failing) >= 20, f"only {len(failing)} scrapes while saves failed"
    assert len(set(failing)) == 1, f"the last save time moved while saves failed: {failing}"
    last_good = failing[0]
    assert last_good is not None and first < last_good <= gone_at + 0.5
    assert last_good == max(ts for _, ts in seen)  # the latest save seen is the last good one
    assert value(after, names[1]) == last_good
    assert b"could not save state" in err and b"Traceback" not in err


@pytest.mark.parametrize("where", ["missing folder", "parent is a file"])
def test_state_path_in_a_folder_that_cannot_hold_it_is_refused(tmp_path, sim, where):
    if where == "missing folder":
        path = tmp_path / "no-such-folder" / "state.json"
    else:
        (tmp_path / "plain").write_text("x")
        path = tmp_path / "plain" / "state.json"
    config = write_config(tmp_path, sim, state={"path": str(path)})
    for args in (["--check-config"], []):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--config", config, *args]
            + ["--web.listen-address", f"127.0.0.1:{free_port()}"],
            capture_output=True,
            text=True,
            timeout=60,
            env=_env(),
            cwd=ROOT,
        )
        assert proc.returncode == 2, proc.stderr
        assert "state.path" in proc.stderr and "Traceback" not in proc.stderr
    assert len(sim.request_log) == 0


def test_failed_saves_then_a_restart_never_export_a_counter_below_an_earlier_one(tmp_path, sim):
    """Issue 15 item 7: saves fail (the folder is replaced by a file, as a full disk would
    fail them) while the counters grow; the restart finds the older file again. Scraped every
    few ms across the restart (one port): no counter below a value scraped before, and the
    saved value really was below the last one exported (else the test proves nothing)."""
    folder = tmp_path / "state"
    folder.mkdir()
    saved = folder / "s.json"
    config = write_config(tmp_path, sim, state={"path": str(saved)})
    port = free_port()
    names = ("scaleengine_vse_bytes_total", "scaleengine_vse_requests_total")
    seen: list[dict] = []
    done = threading.Event()

    def scraper() -> None:
        while not done.is_set():
            s = scrape(f"http://127.0.0.1:{port}")
            if s is not None:
                seen.append({(n, a): value(s, n, app=a) for n in names for a in APPS})
            time.sleep(0.003)

    def grown(url: str, than: dict) -> dict | None:  # bytes: requests grow too slowly
        s = scrape(url)
        ok = all((value(s, names[0], app=a) or 0) > than.get((names[0], a), 0) for a in APPS)
        return {(names[0], a): value(s, names[0], app=a) for a in APPS} if ok else None

    thread = threading.Thread(target=scraper, daemon=True)
    thread.start()
    errors = b""
    try:
        proc, url = start_daemon(config, port)
        try:
            wait_for(lambda: grown(url, {}), 60, "counters above 0")
            last_save = "scaleengine_state_last_save_timestamp_seconds"
            wait_for(lambda: value(scrape(url), last_save), 30, "a first save")
            folder.rename(tmp_path / "kept")
            folder.write_text("not a folder")  # every save fails from now on
            failures = "scaleengine_state_save_failures_total"
            wait_for(lambda: (value(scrape(url), failures) or 0) >= 2, 30, "failed saves")
            data = json.loads((tmp_path / "kept" / "s.json").read_text())["accounts"]["4242"]
            on_disk = {(n, a): data[a][n[len("scaleengine_vse_") :]] for n in names for a in APPS}
            before = wait_for(lambda: grown(url, on_disk), 60, "counters above the saved ones")
        finally:
            errors += stop(proc)
        folder.unlink()
        (tmp_path / "kept").rename(folder)  # space again: the older file is what a restart finds
        count = len(seen)
        proc, url = start_daemon(config, port)
        try:
            wait_for(lambda: len(seen) > count + 20 and None not in seen[-1].values(), 60)
        finally:
            errors += stop(proc)
    finally:
        done.set()
        thread.join(10)
    assert b"Traceback" not in errors, errors.decode(errors="replace")
    assert all(on_disk[(names[0], a)] < before[(names[0], a)] for a in APPS), (on_disk, before)
    last: dict = {}
    for values in seen:
        for key, v in values.items():
            if v is None:
                continue  # absent (state not loaded or not confirmed yet): allowed
            assert v >= last.get(key, 0), f"{key} went down from {last[key]} to {v}"
            last[key] = v


# -- one bad read -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_rows",
    [
        [("a.mp4", 1500, 15), ("b.mp4", 9007199254740991, 2)],  # 2^53-1: held as exact
        [("a.mp4", 1500, 15), ("b.mp4", 200, 2), ("a2.mp4", 1500, 15)],  # 3200, not 1700
    ],
    ids=["huge row", "row listed twice"],
)
def test_one_outlier_poll_never_inflates_the_counters(bad_rows):
    """Issue 15 item 8: one poll's answer has an outlier row, the next ones are normal again:
    the counter ends equal to the true growth, to the byte (over real HTTP, poll by poll)."""
    from exporter.cli import Exporter
    from exporter.config import parse_config

    good = {"a.mp4": 1500, "b.mp4": 200}
    with Simulator(apps={"vod": 2}, static_rows={"vod": [("a.mp4", 1000, 10)]}) as sim:
        cfg = parse_config(sim_config(sim, poll={"late_data_window": "off"}), env={})
        exporter = Exporter(cfg)

        def poll(rows: list) -> float:
            sim.static_rows["vod"] = rows
            sim._page_cache.clear()
            assert exporter.poller.poll_all()
            return value(
                samples(exporter.exposition.text()), "scaleengine_vse_bytes_total", app="vod"
            )

        poll([("a.mp4", 1000, 10)])
        assert poll([("a.mp4", 1000, 10)]) == 0  # a day under way at start: its baseline
        poll([(u, b, 10) for u, b in good.items()])
        assert poll(bad_rows) == 700  # 1700 confirmed, the outlier not
        assert poll([(u, b, 10) for u, b in good.items()]) == 700
        poll([("a.mp4", 1800, 18), ("b.mp4", 200, 2)])
        assert poll([("a.mp4", 1800, 18), ("b.mp4", 200, 2)]) == 1000  # the true growth
        exporter.poller.shutdown()


# -- numbers in the state file ------------------------------------------------------------


@pytest.mark.parametrize(
    ("number", "loaded"),
    [
        ("9223372036854775807", True),  # 2^63-1: the largest accepted
        ("9223372036854775808", False),  # 2^63
        ("1" * 400, False),  # valid JSON, no float can hold it
        ("1e400", False),  # a float: infinity
        ("-1", False),
        ("12.5", False),
    ],
)
def test_numbers_in_the_state_file_are_bounded(tmp_path, sim, number, loaded):
    """Issue 15 item 9: a counter or baseline outside 0..2^63-1 is one warning and a fresh
    start; /metrics answers 200 whatever the file holds."""
    from datetime import UTC, datetime

    today = datetime.now(UTC).date().isoformat()
    state = tmp_path / "state.json"
    entry = f'{{"bytes_total":{number},"requests_total":1,"baselines":{{"{today}":[0,{number}]}}}}'
    apps = ",".join(f'"{a}":{entry}' for a in APPS)
    state.write_text(f'{{"version":1,"day":"{today}","apps":{{{apps}}}}}')
    proc, url = start_daemon(write_config(tmp_path, sim, state={"path": str(state)}))
    counter = "scaleengine_vse_requests_total"
    try:
        s = wait_for(
            lambda: value(scrape(url), counter, app="news") is not None and scrape(url), 30
        )
        if loaded:  # the saved baseline is above any real day: the saved value as it was
            assert value(s, counter, app="news") == 1
        else:  # a fresh counter, not the file's number
            assert value(s, "scaleengine_vse_bytes_total", app="news") < 10**12
        status, _, body = http_get(url + "/metrics", timeout=5)
        assert status == 200
        promtool_check_metrics(body)
    finally:
        err = stop(proc).decode(errors="replace")
    assert "Traceback" not in err, err
    warnings = [line for line in err.splitlines() if "state file" in line]
    if loaded:
        assert warnings == [], err
    else:
        assert len(warnings) == 1 and "corrupt, starting fresh" in warnings[0], err


def test_restart_past_the_late_window_reads_the_saved_yesterday_again(tmp_path):
    """Saves fail from 00:30 while yesterday's late data and today grow; the restart at 03:00
    (past the 2 h late window) finds the 00:30 file: its first poll reads yesterday too, so the
    counter goes on from every byte counted before the restart (exactly), not below it."""
    from datetime import UTC, datetime

    from exporter.cli import Exporter
    from exporter.config import parse_config
    from exporter.simulator import SimClock

    day0 = datetime(2026, 5, 10, tzinfo=UTC).timestamp()
    clock = SimClock(day0 - 3600)  # 23:00 the day before
    folder = tmp_path / "state"
    folder.mkdir()
    with Simulator(apps={"vod": 6}, clock=clock, seed=5, late_seconds=3600) as sim:
        poll = {"interval": "15m", "late_data_window": "2h", "month_interval": "off"}
        cfg = parse_config(
            sim_config(sim, poll=poll, state={"path": str(folder / "s.json")}), env={}
        )

        def counter(exporter: Exporter) -> float | None:
            s = samples(exporter.exposition.text())
            return value(s, "scaleengine_vse_bytes_total", app="vod")

        exporter = Exporter(cfg, clock=clock.now)
        exported = []
        for minutes in range(0, 240, 15):  # 23:00 .. 02:45
            clock.set(day0 - 3600 + minutes * 60)
            if minutes == 90:  # 00:30: the last save that works
                folder.rename(tmp_path / "kept")
                folder.write_text("not a folder")
            assert exporter.poller.poll_all()
            exported.append(counter(exporter))
        exporter.poller.shutdown()
        folder.unlink()
        (tmp_path / "kept").rename(folder)
        clock.set(day0 + 3 * 3600)  # 03:00: past the late window
        exporter = Exporter(cfg, clock=clock.now)
        assert counter(exporter) is None  # withheld until confirmed
        assert exporter.poller.poll_all()
        after = counter(exporter)
        exporter.poller.shutdown()
        yesterday = datetime(2026, 5, 9, tzinfo=UTC).date()
        today = yesterday.replace(day=10)
        start = day0 - 3600
        truth = sim.reported("vod", yesterday, at=day0 + 3 * 3600)[0]
        truth -= sim.reported("vod", yesterday, at=start)[0]
        truth += sim.reported("vod", today, at=day0 + 3 * 3600)[0]
    assert exported[-1] > exported[6], "nothing grew while the saves failed"
    assert after == truth
