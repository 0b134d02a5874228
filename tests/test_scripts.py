"""scripts/demo.sh and scripts/test.sh: a second run with .venv in place needs no network."""

from __future__ import annotations

import os
import signal
import subprocess
import time

from helpers import ROOT, free_port, http_get, wait_for

# pip with every package source unreachable: no index, no find-links, no config file
OFFLINE = {
    "PIP_CONFIG_FILE": os.devnull,
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_EXTRA_INDEX_URL": "",
    "PIP_FIND_LINKS": "",
    "PIP_NO_INDEX": "1",
    "PIP_DEFAULT_TIMEOUT": "3",
    "PIP_RETRIES": "0",
}


def _bash(script: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", "-c", script],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_second_demo_run_is_offline_and_quick():
    # the first run (as scripts/test.sh does before pytest) may install; with the network
    first = _bash("source scripts/lib.sh && ensure_venv '.[test]'")
    assert first.returncode == 0, first.stderr
    # a second one must not need any package source
    again = _bash("source scripts/lib.sh && ensure_venv '.[test]'", OFFLINE)
    assert again.returncode == 0, again.stderr
    assert again.stdout == "" and again.stderr == ""

    port = free_port()
    t0 = time.monotonic()
    proc = subprocess.Popen(
        ["./scripts/demo.sh", "--web.listen-address", f"127.0.0.1:{port}"],
        cwd=ROOT,
        env={**os.environ, **OFFLINE},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:

        def serving():
            if proc.poll() is not None:
                return "exited"
            try:
                status, _, body = http_get(f"http://127.0.0.1:{port}/metrics", timeout=1)
            except OSError:
                return None
            return "ok" if status == 200 and b"scaleengine_up" in body else None

        # generous: the point is that it starts without pip, not a stopwatch
        result = wait_for(serving, 60, "the demo's /metrics")
        elapsed = time.monotonic() - t0
        print(f"second ./scripts/demo.sh served /metrics after {elapsed:.2f} s")
        assert result == "ok", proc.stdout.read() if proc.stdout else ""
    finally:
        proc.send_signal(signal.SIGTERM)
        out = proc.communicate(timeout=15)[0]
    assert "installing" not in out and "pip" not in out.lower(), out


def test_wheel_builds_without_setuptools_deprecation_warnings(tmp_path):
    import shutil
    import sys
    import zipfile

    src = tmp_path / "src"  # a copy: an in-tree build would leave build/ in the checkout
    shutil.copytree(ROOT / "exporter", src / "exporter", ignore=shutil.ignore_patterns("__py*"))
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "-v", "-w", str(tmp_path)],
        cwd=src,
        capture_output=True,
        text=True,
        timeout=480,
    )
    out = result.stdout + result.stderr
    assert result.returncode == 0, out[-3000:]
    assert "DeprecationWarning" not in out and "deprecated" not in out.lower(), out[-3000:]
    (wheel,) = tmp_path.glob("scaleengine_exporter-*.whl")
    with zipfile.ZipFile(wheel) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        assert "License-Expression: Apache-2.0" in z.read(meta).decode()
        licence = next(n for n in z.namelist() if n.endswith(".dist-info/licenses/LICENSE"))
        assert b"Apache License" in z.read(licence)
