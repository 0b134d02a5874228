"""Second audit (issue 19): README promises and limits that no test could fail for, checked
black-box: the daemon or ``--once`` as a subprocess, polling the simulator over real HTTP on
loopback, the daemon's own HTTP server attacked with raw sockets.

Every limit is written here as a LITERAL number just under and just over it, never built from
the code's constant (a test built from a wrong constant passes with it). Each test was seen to
fail with a bug put in by hand: docs/mutation-testing.md, "Second audit (issue 19)".
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
import yaml
from helpers import ROOT, free_port, http_get, samples, sim_config, wait_for

from exporter.phpjson import php_json_encode
from exporter.simulator import Simulator, _Handler

# -- a simulator whose answers can carry an HTTP status, a Retry-After and padding -----------


class ShapedSimulator(Simulator):
    """The simulator, with per-app answer shapes the fault modes do not have: the API's JSON
    failure 1000 sent with HTTP 503 or 429 and a ``Retry-After`` header, and answers padded
    with trailing white space (valid JSON) to an exact size."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.status_for: dict[str, int] = {}  # app -> HTTP status of its failure answers
        self.retry_after_for: dict[str, str] = {}  # app -> Retry-After header value
        self.size_for: dict[str, int] = {}  # app -> exact byte size of its good answers
        self._shape = threading.local()  # the handler thread's answer shape

    def _answer(self, text: str):
        status, ctype, body, mode = super()._answer(text)
        try:
            app = json.loads(text).get("app")
        except (ValueError, AttributeError):
            app = None
        shape = {}
        if isinstance(app, str):
            if body.startswith(b'{"status":"failure"') and app in self.status_for:
                status = self.status_for[app]
                shape["retry_after"] = self.retry_after_for.get(app)
            elif status == 200 and app in self.size_for:
                size = self.size_for[app]
                assert len(body) <= size, "the answer is larger than the size asked"
                body += b" " * (size - len(body))
        self._shape.value = shape
        return status, ctype, body, mode

    def start(self, *args, **kwargs) -> str:
        url = super().start(*args, **kwargs)
        self._server.RequestHandlerClass = _ShapedHandler
        return url


class _ShapedHandler(_Handler):
    def _send(self, status: int, ctype: str, body: bytes) -> None:
        shape = getattr(self.server.sim._shape, "value", None) or {}
        retry_after = shape.get("retry_after")
        if retry_after is None:
            super()._send(status, ctype, body)
            return
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Retry-After", retry_after)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


# -- running the exporter ---------------------------------------------------------------------


def _env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")},
        "PYTHONUNBUFFERED": "1",
    }


def write_config(path: Path, sim: Simulator, **sections) -> str:
    poll = {"interval": "1s", "retries": 0, "month_interval": "off", "late_data_window": "off"}
    data = sim_config(sim, poll={**poll, **sections.pop("poll", {})}, **sections)
    path.write_text(yaml.safe_dump(data, allow_unicode=True))
    path.chmod(0o600)
    return str(path)


def run_once(config: str, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", config, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=_env(),
        cwd=ROOT,
    )


def start_daemon(config: str, *args: str, log: Path | None = None) -> tuple[subprocess.Popen, str]:
    port = free_port()
    err = subprocess.PIPE if log is None else log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", config]
        + ["--web.listen-address", f"127.0.0.1:{port}", *args],
        stdout=subprocess.DEVNULL,
        stderr=err,
        env=_env(),
        cwd=ROOT,
    )
    return proc, f"http://127.0.0.1:{port}"


def stop(proc: subprocess.Popen) -> str:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.stderr.read().decode(errors="replace") if proc.stderr else ""


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


def request_times(sim: Simulator, app: str) -> list[float]:
    """When the simulator received each first-page request for ``app``."""
    return [e["timestamp"] for e in list(sim.request_log) if e.get("app") == app]


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 2) for a, b in zip(times, times[1:], strict=False)]


# -- busy means later, not now -----------------------------------------------------------------


def test_busy_api_is_asked_again_after_retry_after_or_the_doubling_backoff_capped(tmp_path):
    """busy_backoff 1s, busy_backoff_max 4s, polls every second, five apps at once:

    * 503 and 429 with the API's JSON code 1000 and ``Retry-After: 3``: no request for 3 s
      (a Retry-After longer than busy_backoff wins), not 1 s;
    * the same with ``Retry-After: 600``: the next request after the max, 4 s, not 600 s;
    * code 1000 without Retry-After, for as long as it lasts: gaps of 1, 2, 4, then 4 and 4
      (the cap holds: not 8, not 16).

    Each gap is measured on the simulator's request log. A gap can only be longer than the
    back-off (the next scheduled poll after it), by up to a poll interval: the lower bounds are
    the promise ("no request before"), the upper bounds tell the cap from its double."""
    apps = {"s503": 2, "t429": 2, "s503long": 2, "t429long": 2, "doubling": 2}
    with ShapedSimulator(apps=apps) as sim:
        for app in apps:
            sim.set_fault(app, "failure_1000")
        sim.status_for.update(s503=503, t429=429, s503long=503, t429long=429)
        sim.retry_after_for.update(s503="3", t429="3", s503long="600", t429long="600")
        cfg = write_config(
            tmp_path / "c.yaml",
            sim,
            poll={"busy_backoff": "1s", "busy_backoff_max": "4s", "concurrency": 5},
        )
        proc, url = start_daemon(cfg)
        try:
            wait_for(
                lambda: len(request_times(sim, "doubling")) >= 6,
                60,
                "six requests of the app that stays busy",
            )
            s = scrape(url)
        finally:
            err = stop(proc)
    assert "Traceback" not in err, err
    for app in ("s503", "t429"):
        g = gaps(request_times(sim, app))
        assert len(g) >= 2, f"{app}: requests {g}"
        assert g[0] >= 2.6, f"{app}: asked again {g[0]} s after Retry-After: 3 (gaps {g})"
    for app in ("s503long", "t429long"):
        g = gaps(request_times(sim, app))
        assert len(g) >= 2, f"{app}: Retry-After: 600 was not capped at 4 s (gaps {g})"
        assert 3.6 <= g[0] < 7.5, f"{app}: Retry-After: 600 capped at 4 s, got gaps {g}"
        assert 3.6 <= g[1] < 7.5, f"{app}: gaps {g}"
    g = gaps(request_times(sim, "doubling"))[:5]
    assert 0.6 <= g[0] < 3.5, f"busy_backoff 1s: gaps {g}"
    assert 1.6 <= g[1] < 4.5, f"doubled to 2s: gaps {g}"
    assert 3.6 <= g[2] < 7.5, f"doubled to 4s: gaps {g}"
    assert 3.6 <= g[3] < 7.5 and 3.6 <= g[4] < 7.5, f"capped at 4s, not 8/16: gaps {g}"
    assert value(s, "scaleengine_up", app="doubling") == 0


# -- yesterday is polled for late_data_window after LOCAL midnight ----------------------------


def _fixed_zone(hours: int) -> str:
    """The IANA name of the fixed offset UTC+hours (Etc/GMT signs are inverted)."""
    hours = (hours + 12) % 24 - 12 if not -12 <= hours <= 14 else hours
    return "Etc/UTC" if hours == 0 else f"Etc/GMT{-hours:+d}"


def _days_asked(sim: Simulator, app: str) -> set[date]:
    return {
        date(e["year"], e["month"], e["day"])
        for e in list(sim.request_log)
        if e.get("app") == app and e.get("day") is not None
    }


def test_yesterday_is_polled_for_the_late_window_after_local_midnight_not_utc(tmp_path):
    """Two ``--once`` runs on the real clock in zones picked so that local midnight and UTC
    midnight are hours apart, whatever the time of day:

    * a zone where it is 00:mm now, with a window of mm + 30 minutes: inside the window, so
      yesterday (local) is asked too and its total exported;
    * a zone where it is 02:mm now, with a window of 1 h 30 + mm: past the window, so only
      today is asked.

    A window counted from UTC midnight gets the first wrong from 01:00 UTC on and the second
    wrong before 02:00 UTC."""
    now = datetime.now(UTC)
    minutes = now.minute
    cases = [
        # (local hour now, window in minutes, yesterday asked)
        (0, minutes + 30, True),
        (2, 90 + minutes, False),
    ]
    with Simulator(apps={"vod": 4}) as sim:
        for hour, window, inside in cases:
            zone = _fixed_zone(hour - now.hour)
            local = datetime.now(ZoneInfo(zone))
            assert local.hour == hour or local.minute == 0, (zone, local)
            sim.clear_log()
            cfg = write_config(
                tmp_path / f"c{hour}.yaml",
                sim,
                poll={"timezone": zone, "late_data_window": f"{window}m"},
            )
            proc = run_once(cfg)
            assert proc.returncode == 0, proc.stderr
            today = datetime.now(ZoneInfo(zone)).date()
            yesterday = today - timedelta(days=1)
            asked = _days_asked(sim, "vod")
            previous = value(
                samples(proc.stdout), "scaleengine_vse_app_previous_day_bytes", app="vod"
            )
            if inside:
                assert asked == {today, yesterday}, f"{zone} at {local:%H:%M}: asked {asked}"
                assert previous is not None and previous > 0
            else:
                assert asked == {today}, f"{zone} at {local:%H:%M}, window {window}m: {asked}"
                assert previous is None


# -- the poll worker holds the state file's lock ------------------------------------------------


def _children(pid: int) -> list[int]:
    return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_an_orphaned_poll_worker_keeps_a_second_exporter_out(tmp_path):
    """SIGKILL the serving process only: while its poll worker lives (held stopped here, so
    that it cannot exit before the second exporter tries), the lock is still held and a
    second exporter on the same state file exits 2. Let the worker go on: it notices its
    parent is gone, saves the state and exits, and the file is free again."""
    state = tmp_path / "state.json"
    with Simulator(apps={"news": 4}) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, state={"path": str(state)})
        proc, url = start_daemon(cfg)
        worker = None
        try:
            wait_for(lambda: value(scrape(url), "scaleengine_up", app="news") == 1, 30, "a poll")
            (worker,) = _children(proc.pid)
            os.kill(worker, signal.SIGSTOP)
            proc.kill()
            proc.wait(10)
            second = run_once(cfg)
            assert second.returncode == 2, (
                f"a second exporter ran beside the orphan: {second.stderr}"
            )
            assert str(state) in second.stderr and "Traceback" not in second.stderr
            os.kill(worker, signal.SIGCONT)
            wait_for(lambda: not _alive(worker), 20, "the orphaned worker to exit")
            worker = None
        finally:
            if worker is not None and _alive(worker):
                os.kill(worker, signal.SIGKILL)
            stop(proc)
        third = run_once(cfg)
        assert third.returncode == 0, third.stderr
        assert "state loaded" in third.stderr  # the orphan saved it on its way out


# -- reload and the lifecycle API ----------------------------------------------------------------


def _set_rows(sim: Simulator, app: str, rows: list) -> None:
    sim.static_rows[app] = rows
    sim._page_cache.clear()  # the simulator caches static pages


def test_reload_of_api_and_poll_settings_keeps_the_counters(tmp_path):
    """A SIGHUP that changes scaleengine.timeout, poll.retries and poll.page_size (every app
    gets a new client) keeps the counters of the apps that stay: after the reload they read
    what they read before, and go on from there by exactly the growth the API shows."""
    rows = {"news": [("news/a.mp4", 1000, 1)], "sport": [("sport/b.mp4", 500, 1)]}
    with Simulator(apps={"news": 1, "sport": 1}, static_rows=rows) as sim:
        path = tmp_path / "c.yaml"
        cfg = write_config(path, sim)
        proc, url = start_daemon(cfg)
        try:
            wait_for(lambda: value(scrape(url), "scaleengine_up", app="sport") == 1, 30, "polls")
            _set_rows(sim, "news", [("news/a.mp4", 3000, 4)])
            wait_for(
                lambda: value(scrape(url), "scaleengine_vse_bytes_total", app="news") == 2000,
                30,
                "news counter at 2000",
            )
            before = scrape(url)
            assert value(before, "scaleengine_vse_requests_total", app="news") == 3
            assert value(before, "scaleengine_vse_bytes_total", app="sport") == 0
            ts = "scaleengine_exporter_config_last_reload_success_timestamp_seconds"
            data = yaml.safe_load(path.read_text())
            data["scaleengine"]["timeout"] = "3s"
            data["poll"].update(retries=2, page_size=7)
            path.write_text(yaml.safe_dump(data))
            # watched every 20 ms through the reload: the counter is there and unchanged
            seen: list[float | None] = []
            done = threading.Event()

            def watch() -> None:
                while not done.is_set():
                    s = scrape(url)
                    if s is not None:  # a scrape that failed says nothing
                        seen.append(value(s, "scaleengine_vse_bytes_total", app="news"))
                    time.sleep(0.02)

            watcher = threading.Thread(target=watch, daemon=True)
            watcher.start()
            proc.send_signal(signal.SIGHUP)
            wait_for(lambda: value(scrape(url), ts) > value(before, ts), 30, "the reload")
            requests_before = len(sim.request_log)
            wait_for(lambda: len(sim.request_log) >= requests_before + 4, 30, "polls after it")
            done.set()
            watcher.join(10)
            assert len(seen) >= 20 and set(seen) == {2000}, sorted(set(seen), key=str)
            after = scrape(url)
            for name in ("scaleengine_vse_bytes_total", "scaleengine_vse_requests_total"):
                for app in ("news", "sport"):
                    assert value(after, name, app=app) == value(before, name, app=app), (
                        f"{name}{{app={app}}} was {value(before, name, app=app)} before the"
                        f" reload, {value(after, name, app=app)} after"
                    )
            assert sim.request_log[-1]["limit"] == 7  # the new page size is in use
            _set_rows(sim, "news", [("news/a.mp4", 3500, 6)])
            _set_rows(sim, "sport", [("sport/b.mp4", 800, 3)])

            def grown() -> dict | None:
                # growth counts once a second read confirms it (README): wait for the
                # counters, not only the day totals; a counter reset never gets there
                s = scrape(url)
                both = (
                    value(s, "scaleengine_vse_app_day_bytes", app="news") == 3500
                    and value(s, "scaleengine_vse_app_day_bytes", app="sport") == 800
                    and value(s, "scaleengine_vse_bytes_total", app="news") == 2500
                    and value(s, "scaleengine_vse_bytes_total", app="sport") == 300
                )
                return s if both else None

            s = wait_for(grown, 30, "both apps' growth polled")
            assert value(s, "scaleengine_vse_bytes_total", app="news") == 2500
            assert value(s, "scaleengine_vse_requests_total", app="news") == 5
            assert value(s, "scaleengine_vse_bytes_total", app="sport") == 300
            assert value(s, "scaleengine_vse_requests_total", app="sport") == 2
        finally:
            err = stop(proc)
    assert "Traceback" not in err and "config reloaded" in err, err


def _post(url: str) -> tuple[int, bytes]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as err:
        return err.code, err.read()


@pytest.fixture(scope="module")
def daemon(tmp_path_factory) -> Iterator[tuple[str, Path, Simulator]]:
    """One daemon started as a user would, WITHOUT --web.enable-lifecycle: (url, config,
    simulator)."""
    tmp = tmp_path_factory.mktemp("daemon")
    with Simulator(apps={"news": 3}) as sim:
        cfg = write_config(tmp / "c.yaml", sim)
        proc, url = start_daemon(cfg)
        try:
            wait_for(lambda: value(scrape(url), "scaleengine_up", app="news") == 1, 30, "a poll")
            yield url, Path(cfg), sim
        finally:
            err = stop(proc)
    assert "Traceback" not in err, err


def test_post_reload_is_403_without_the_lifecycle_flag(daemon):
    url, cfg, sim = daemon
    data = yaml.safe_load(cfg.read_text())
    sim.apps["sport"] = 2
    data["apps"] = ["news", "sport"]
    cfg.write_text(yaml.safe_dump(data))
    status, body = _post(url + "/-/reload")
    assert status == 403, (status, body)
    assert body == b"Lifecycle API is not enabled.\n"
    time.sleep(2)  # two poll intervals: a reload that happened anyway would poll sport
    assert value(scrape(url), "scaleengine_up", app="sport") is None
    assert not [e for e in list(sim.request_log) if e.get("app") == "sport"]


# -- limits promised in the README, with literal numbers just under and just over ---------------


def _exchange(url: str, raw: bytes, wait: float = 3.0) -> bytes:
    """Send ``raw`` on a new connection; what comes back within ``wait`` s or until close."""
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=wait) as s:
        s.sendall(raw)
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and b"\r\n\r\n" not in got:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


def _head(size: int) -> bytes:
    """A GET /-/healthy head of exactly ``size`` bytes, blank line included."""
    start, end = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nX-Pad: ", b"\r\n\r\n"
    head = start + b"p" * (size - len(start) - len(end)) + end
    assert len(head) == size
    return head


def test_a_request_head_of_16_kib_is_answered_one_byte_more_is_431(daemon):
    url = daemon[0]
    got = _exchange(url, _head(16384))
    assert got.startswith(b"HTTP/1.1 200 "), got[:100]
    got = _exchange(url, _head(16385))
    assert got.startswith(b"HTTP/1.1 431 "), got[:100]
    # the same heads arriving in pieces (h11's own limit on an incomplete head)
    for size, status in ((16384, b"200"), (16385, b"431")):
        host, port = url.removeprefix("http://").rsplit(":", 1)
        with socket.create_connection((host, int(port)), timeout=5) as s:
            head = _head(size)
            for i in range(0, len(head), 4000):
                s.sendall(head[i : i + 4000])
                time.sleep(0.05)
            got = s.recv(1000)
        assert got.startswith(b"HTTP/1.1 " + status + b" "), (size, got[:100])


def test_a_request_body_of_64_kib_is_read_one_byte_more_is_413(daemon):
    url = daemon[0]
    for size, status in ((65536, b"405"), (65537, b"413")):
        head = f"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n"
        got = _exchange(url, head.encode() + b"b" * size)
        assert got.startswith(b"HTTP/1.1 " + status + b" "), (size, got[:100])
    # chunked: the body's size, not the chunks', counts
    for size, status in ((65536, b"405"), (65537, b"413")):
        head = b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
        chunks = b"4000\r\n" + b"c" * 16384 + b"\r\n"  # 16 KiB each
        rest = size - 4 * 16384
        body = chunks * 4 + (f"{rest:x}\r\n".encode() + b"c" * rest + b"\r\n" if rest else b"")
        got = _exchange(url, head + body + b"0\r\n\r\n")
        assert got.startswith(b"HTTP/1.1 " + status + b" "), (size, got[:100])


def test_a_state_file_of_64_mib_is_read_one_byte_more_is_a_fresh_start(tmp_path):
    """A real state file padded with white space (valid JSON) to exactly 64 MiB is loaded; one
    byte more and it is not read: one warning, a fresh start."""
    state = tmp_path / "state.json"
    with Simulator(apps={"news": 3}) as sim:
        cfg = write_config(tmp_path / "c.yaml", sim, state={"path": str(state)})
        first = run_once(cfg)
        assert first.returncode == 0, first.stderr
        saved = state.read_bytes().rstrip()
        assert json.loads(saved)["accounts"]["4242"]["news"]  # the account: its cdn_id
        for size, loaded in ((67108864, True), (67108865, False)):
            state.write_bytes(saved + b" " * (size - len(saved)))
            assert state.stat().st_size == size
            proc = run_once(cfg)
            assert proc.returncode == 0, proc.stderr
            warnings = [line for line in proc.stderr.splitlines() if "starting fresh" in line]
            if loaded:
                assert "state loaded" in proc.stderr and not warnings, (size, proc.stderr)
            else:
                assert "state loaded" not in proc.stderr, (size, proc.stderr)
                assert len(warnings) == 1 and "larger than" in warnings[0], proc.stderr


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_an_answer_of_64_mib_is_read_one_byte_more_is_too_large(tmp_path, gzip):
    """scaleengine.max_response_bytes' default: an answer of exactly 64 MiB (valid JSON padded
    with white space) is read; one byte more is refused, outcome too_large. Plain, the
    Content-Length decides; gzipped, the size after decompression."""
    with ShapedSimulator(apps={"exact": 2, "over": 2}) as sim:
        sim.gzip_answers = gzip
        sim.size_for.update(exact=67108864, over=67108865)
        cfg = write_config(
            tmp_path / "c.yaml", sim, poll={"concurrency": 1}, scaleengine={"timeout": "60s"}
        )
        proc = run_once(cfg)
    s = samples(proc.stdout)
    assert value(s, "scaleengine_up", app="exact") == 1, proc.stderr
    assert value(s, "scaleengine_vse_app_day_bytes", app="exact") > 0
    assert value(s, "scaleengine_up", app="over") == 0
    assert value(s, "scaleengine_api_requests_total", app="over", outcome="too_large") == 1
    assert proc.returncode == 1


def test_a_video_url_of_1024_bytes_is_kept_one_byte_more_is_cut(tmp_path):
    """limits.max_label_length's default: a 1024-byte URL is its own label; a 1025-byte one is
    cut to at most 1024 bytes ending in ~ and 16 hex digits. Below 64 the setting is refused."""
    exact = "sestore/vod/" + "e" * (1024 - 12)
    over = "sestore/vod/" + "o" * (1025 - 12)
    # bytes, not characters: "é" is two bytes of UTF-8
    exact_utf8 = "sestore/utf/" + "é" * 506
    over_utf8 = "sestore/utf/x" + "é" * 506
    assert [len(u.encode()) for u in (exact, over, exact_utf8, over_utf8)] == [1024, 1025] * 2
    rows = {
        "vod": [(exact, 300, 3), (over, 200, 2)],
        "utf": [(exact_utf8, 30, 1), (over_utf8, 20, 1)],
    }
    with Simulator(apps={"vod": 1, "utf": 1}, static_rows=rows) as sim:
        proc = run_once(write_config(tmp_path / "c.yaml", sim))
        assert proc.returncode == 0, proc.stderr
        labels = {}
        utf = {}
        for k, v in samples(proc.stdout).items():
            if k[0] == "scaleengine_vse_day_bytes":
                (labels if dict(k[1])["app"] == "vod" else utf)[dict(k[1])["video_url"]] = v
        assert exact_utf8 in utf, "the 1024-byte UTF-8 URL was changed"
        assert utf.pop(exact_utf8) == 30
        ((cut_utf8, nbytes),) = utf.items()
        assert nbytes == 20 and len(cut_utf8.encode()) <= 1024 and cut_utf8[-17] == "~"
        assert exact in labels, f"the 1024-byte URL was changed: {[u[-20:] for u in labels]}"
        assert labels.pop(exact) == 300
        ((cut, nbytes),) = labels.items()
        assert nbytes == 200 and len(cut.encode()) <= 1024 and cut != over
        assert cut.startswith("sestore/vod/ooo") and cut[-17] == "~", cut[-20:]
        int(cut[-16:], 16)
        for length, code in ((63, 2), (64, 0)):
            cfg = write_config(tmp_path / "l.yaml", sim, limits={"max_label_length": length})
            check = subprocess.run(
                [sys.executable, "-m", "exporter", "--check-config", "--config", cfg],
                capture_output=True,
                text=True,
                timeout=60,
                env=_env(),
                cwd=ROOT,
            )
            assert check.returncode == code, (length, check.stderr)
            if code:
                assert "max_label_length" in check.stderr


def test_server_text_of_200_characters_is_kept_one_more_is_cut(tmp_path):
    """An API failure message reaches the log cut to 200 characters: 200 whole, 201 cut."""
    with Simulator(apps={"a200": 1, "a201": 1}) as sim:
        messages = {"a200": "x" * 197 + "END", "a201": "x" * 198 + "END"}
        assert [len(m) for m in messages.values()] == [200, 201]
        for app in messages:
            sim.set_fault(app, "failure_0005")
        current = threading.local()

        def failure(code: str, detail: str) -> bytes:
            message = messages[current.app]
            return php_json_encode({"status": "failure", "code": code, "message": message}).encode()

        answer = sim._answer

        def traced(text: str):
            current.app = json.loads(text)["app"]
            return answer(text)

        sim._failure = failure
        sim._answer = traced
        proc = run_once(write_config(tmp_path / "c.yaml", sim))
    assert proc.returncode == 1
    lines = {
        app: [line for line in proc.stderr.splitlines() if f"app={app} " in line]
        for app in messages
    }
    assert any("x" * 197 + "END'" in line for line in lines["a200"]), lines["a200"]
    assert not any("END" in line for line in lines["a201"]), lines["a201"]
    assert any("x" * 198 + "EN..." in line for line in lines["a201"]), lines["a201"]


def test_1000_videos_are_kept_one_more_folds_into_other(tmp_path):
    """limits.max_videos_per_app's default: an app with 1000 videos gets 1000 series and no
    __other__; with 1001, the top 1000 by bytes and the smallest in __other__."""
    rows = {
        "exact": [(f"v/{i:04d}.mp4", 5000 - i, 1) for i in range(1000)],
        "over": [(f"v/{i:04d}.mp4", 5000 - i, 1) for i in range(1001)],
    }
    with Simulator(apps={"exact": 1, "over": 1}, static_rows=rows) as sim:
        proc = run_once(write_config(tmp_path / "c.yaml", sim))
    assert proc.returncode == 0, proc.stderr
    series: dict[str, dict[str, float]] = {"exact": {}, "over": {}}
    for (name, labels), v in samples(proc.stdout).items():
        if name == "scaleengine_vse_day_bytes":
            series[dict(labels)["app"]][dict(labels)["video_url"]] = v
    assert len(series["exact"]) == 1000 and "__other__" not in series["exact"]
    assert len(series["over"]) == 1001 and series["over"]["__other__"] == 5000 - 1000
    assert "v/1000.mp4" not in series["over"]


def _status(url: str) -> int:
    try:
        return http_get(url, timeout=5)[0]
    except OSError:
        return 0


def _reloaded_at(url: str) -> float:
    try:
        status, _, body = http_get(url, timeout=5)
    except OSError:
        return 0.0
    name = "scaleengine_exporter_config_last_reload_success_timestamp_seconds"
    return (value(samples(body), name) or 0.0) if status == 200 else 0.0


def test_telemetry_path_follows_a_reload_and_the_flag_wins_over_the_file(tmp_path):
    """A reload moves the metrics to the file's new web.telemetry_path; with
    --web.telemetry-path the flag's path stays, before and after a reload."""
    with Simulator(apps={"news": 2}) as sim:
        for flag in (None, "/flagged"):
            path = tmp_path / f"c{bool(flag)}.yaml"
            cfg = write_config(path, sim, web={"telemetry_path": "/file-one"})
            proc, url = start_daemon(cfg, *(["--web.telemetry-path", flag] if flag else []))
            try:
                served = flag or "/file-one"
                started = wait_for(lambda: _reloaded_at(url + served), 30, f"metrics on {served}")  # noqa: B023
                assert _status(url + "/metrics") == 404
                if flag:
                    assert _status(url + "/file-one") == 404
                data = yaml.safe_load(path.read_text())
                data["web"]["telemetry_path"] = "/file-two"
                path.write_text(yaml.safe_dump(data))
                proc.send_signal(signal.SIGHUP)
                now_served = flag or "/file-two"
                wait_for(
                    lambda: _reloaded_at(url + now_served) > started,  # noqa: B023
                    30,
                    f"the reload, seen on {now_served}",
                )
                for gone in {"/file-one", "/file-two"} - {now_served}:
                    assert _status(url + gone) == 404, (flag, gone)
            finally:
                err = stop(proc)
            assert "Traceback" not in err and "config reloaded" in err, err


def test_a_head_dripped_slowly_is_cut_5_seconds_after_its_first_byte(daemon):
    """README: a request head must arrive whole within 5 s of its first byte. A header line
    every half second is cut at 5 s (neither earlier nor at a later deadline: 4.5-10 s)."""
    host, port = daemon[0].removeprefix("http://").rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=30) as s:
        started = time.monotonic()
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        cut = None
        for i in range(300):  # 30 s of drip if nobody cuts it
            # readable: the server answered or closed (a line every 0.5 s, checked every 0.1 s)
            if select.select([s], [], [], 0.1)[0]:
                cut = time.monotonic() - started
                break
            if i % 5 == 4:
                try:
                    s.sendall(b"X-Drip-%d: y\r\n" % i)
                except OSError:
                    cut = time.monotonic() - started
                    break
    assert cut is not None, "the server never cut the dripping head"
    assert 4.5 <= cut < 10, f"cut after {cut:.1f} s"


def test_month_interval_off_makes_no_month_request_and_no_month_series(tmp_path):
    """README: the month series only after the first month fetch, never with
    ``poll.month_interval: off``; with it on, --once fetches the month once and exports it."""
    with Simulator(apps={"vod": 3}) as sim:
        for setting, month in (("off", False), ("1h", True)):
            sim.clear_log()
            proc = run_once(
                write_config(tmp_path / "c.yaml", sim, poll={"month_interval": setting})
            )
            assert proc.returncode == 0, proc.stderr
            s = samples(proc.stdout)
            fetched = [
                e for e in list(sim.request_log) if e.get("app") == "vod" and e.get("day") is None
            ]
            shown = value(s, "scaleengine_vse_app_month_bytes", app="vod")
            if month:
                assert len(fetched) == 1 and shown is not None and shown > 0, (fetched, shown)
            else:
                assert fetched == [] and shown is None, (setting, fetched, shown)
                assert not [k for k in s if k[0].startswith("scaleengine_vse_app_month")]
