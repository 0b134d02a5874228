"""--config.auto-reload-interval on the real daemon: a ConfigMap-style update (the mounted
folder's ``..data`` symlink swapped, the file itself never written) is seen and applied as
SIGHUP would, a broken one is counted as a failed reload, and unchanged content is left alone.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import ROOT, free_port, http_get, samples, wait_for

from exporter.autoreload import ConfigWatcher, fingerprint
from exporter.simulator import Simulator

KEY = "AUTORELOADKEY00000000000000000001"
SECRET = "autoreload-secret-00000000000000000000000000000000000000000000000"
OK = "scaleengine_exporter_config_last_reload_successful"
WHEN = "scaleengine_exporter_config_last_reload_success_timestamp_seconds"


@pytest.fixture
def sim():
    rows = {"news": [("news/a.mp4", 1000, 1)], "sport": [("sport/b.mp4", 500, 1)]}
    with Simulator(
        api_key=KEY, api_secret=SECRET, apps={a: 1 for a in rows}, static_rows=rows
    ) as s:
        yield s


def config_text(sim: Simulator, apps: list[str]) -> str:
    listed = "".join(f"  - {a}\n" for a in apps)
    return (
        f"scaleengine:\n  api_url: {sim.url}\n  cdn_id: {sim.cdn_id}\n  api_key: {KEY}\n"
        f"  api_secret: {SECRET}\n  timeout: 2s\napps:\n{listed}"
        "poll:\n  interval: 1s\n  month_interval: off\n  retries: 0\n"
    )


class ConfigMapVolume:
    """A folder laid out as the kubelet mounts a ConfigMap: config.yaml -> ..data/config.yaml,
    ..data -> ..<timestamped folder>; an update writes a new folder and swaps ..data."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.version = 0
        root.mkdir()
        (root / "config.yaml").symlink_to("..data/config.yaml")

    @property
    def path(self) -> str:
        return str(self.root / "config.yaml")

    def update(self, text: str) -> None:
        self.version += 1
        folder = self.root / f"..2026_11_30_{self.version:04d}"
        folder.mkdir()
        (folder / "config.yaml").write_text(text)
        (folder / "config.yaml").chmod(0o600)
        old = os.readlink(self.root / "..data") if (self.root / "..data").exists() else None
        tmp = self.root / "..data_tmp"
        tmp.symlink_to(folder.name)
        os.rename(tmp, self.root / "..data")  # atomic, as the kubelet does
        if old is not None:
            for f in (self.root / old).iterdir():
                f.unlink()
            (self.root / old).rmdir()


def scrape(url: str) -> dict:
    try:
        status, _, body = http_get(url + "/metrics", timeout=5)
    except OSError:  # not listening yet
        return {}
    assert status == 200
    return samples(body)


def test_configmap_symlink_swap_is_reloaded_and_a_broken_one_counted(tmp_path, sim):
    volume = ConfigMapVolume(tmp_path / "config")
    volume.update(config_text(sim, ["news"]))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log_path = tmp_path / "stderr.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    with open(log_path, "w") as log_file:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", volume.path,
             "--config.auto-reload-interval=1s", "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL, stderr=log_file, env=env, cwd=ROOT,
        )  # fmt: skip
    try:
        up = (
            "scaleengine_up",
            (
                ("account", "4242"),
                ("app", "news"),
            ),
        )
        first = wait_for(lambda: (s := scrape(url)).get(up) == 1 and s, 30, "news polled")
        assert (
            "scaleengine_up",
            (
                ("account", "4242"),
                ("app", "sport"),
            ),
        ) not in first
        volume.update(config_text(sim, ["news", "sport"]))
        sport_up = (
            "scaleengine_up",
            (
                ("account", "4242"),
                ("app", "sport"),
            ),
        )
        s = wait_for(lambda: (s := scrape(url)).get(sport_up) == 1 and s, 30, "sport added")
        assert s[(OK, ())] == 1 and s[(WHEN, ())] > first[(WHEN, ())]
        volume.update("apps: [\n")  # broken YAML
        s = wait_for(lambda: (s := scrape(url)).get((OK, ())) == 0 and s, 30, "a failed reload")
        assert s.get(sport_up) == 1  # the last good config still runs
        volume.update(config_text(sim, ["sport"]))
        s = wait_for(
            lambda: (s := scrape(url)).get((OK, ())) == 1 and up not in s and s, 30, "news gone"
        )
    finally:
        proc.terminate()
        proc.wait(15)
    log = log_path.read_text()
    assert log.count("config file changed, reloading") == 3, log
    assert "config reload failed" in log and "Traceback" not in log


def test_a_bad_interval_is_refused_naming_the_flag(tmp_path, sim):
    cfg = tmp_path / "config.yaml"
    cfg.write_text(config_text(sim, ["news"]))
    cfg.chmod(0o600)
    for bad in ("soon", "0.5s", "-1s"):
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--config", str(cfg), "--check-config",
             f"--config.auto-reload-interval={bad}"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 2, (bad, proc.stderr)
        assert "--config.auto-reload-interval" in proc.stderr and "Traceback" not in proc.stderr


def test_watcher_reloads_on_content_change_only(tmp_path):
    path = tmp_path / "config.yaml"
    path.write_text("a: 1\n")
    calls = []
    watcher = ConfigWatcher(lambda: [str(path)], 3600, lambda: calls.append(1))
    assert watcher.check() is False
    path.write_text("a: 1\n")  # rewritten, same bytes: no reload
    os.utime(path, (0, 0))
    assert watcher.check() is False and calls == []
    path.write_text("a: 2\n")
    assert watcher.check() is True and calls == [1]
    assert watcher.check() is False and calls == [1]  # once per change
    path.unlink()  # gone: a change (the reload then fails and is counted)
    assert watcher.check() is True and calls == [1, 1]


def test_fingerprint_never_blocks_on_a_fifo(tmp_path):
    fifo = tmp_path / "config.yaml"
    os.mkfifo(fifo)  # no writer: a blocking open or read would never return
    before = fingerprint([str(fifo)])
    assert before == fingerprint([str(fifo)])
    fifo.unlink()
    fifo.write_text("x")
    assert fingerprint([str(fifo)]) != before


def test_the_log_names_the_file_that_changed(tmp_path, caplog):
    config, secret = tmp_path / "config.yaml", tmp_path / "secret"
    config.write_text("a: 1\n")
    secret.write_text("s3cret-1\n")
    watcher = ConfigWatcher(lambda: [str(config), str(secret)], 3600, lambda: None)
    secret.write_text("s3cret-2\n")  # a rotated secret, the config untouched
    with caplog.at_level("INFO", logger="exporter.autoreload"):
        assert watcher.check() is True
    (record,) = [r for r in caplog.records if "config file changed" in r.getMessage()]
    assert record.files == str(secret)
    assert "s3cret" not in caplog.text  # names, never content
