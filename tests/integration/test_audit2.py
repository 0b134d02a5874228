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
        assert 3.6 <= g[0] < 6.5, f"{app}: Retry-After: 600 capped at 4 s, got gaps {g}"
        assert 3.6 <= g[1] < 6.5, f"{app}: gaps {g}"
    g = gaps(request_times(sim, "doubling"))[:5]
    assert 0.6 <= g[0] < 2.6, f"busy_backoff 1s: gaps {g}"
    assert 1.6 <= g[1] < 3.6, f"doubled to 2s: gaps {g}"
    assert 3.6 <= g[2] < 6.5, f"doubled to 4s: gaps {g}"
    assert 3.6 <= g[3] < 6.5 and 3.6 <= g[4] < 6.5, f"capped at 4s, not 8/16: gaps {g}"
    assert value(s, "scaleengine_up", app="doubling") == 0
