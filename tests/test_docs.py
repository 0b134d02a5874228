"""The README followed word for word: "Real use" against the standalone simulator, and the
Docker command that passes flags after the image name."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys

import yaml
from helpers import ROOT, free_port, samples, wait_for


def test_real_use_against_the_standalone_simulator(tmp_path):
    """`python -m exporter.simulator` prints what the config needs; config.example.yaml with
    only api_url and cdn_id changed then polls it, its vod-library urls included."""
    readme = (ROOT / "README.md").read_text()
    assert "mkdir -p /etc/scaleengine-exporter\ncp config.example.yaml" in readme
    port = free_port()
    sim = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", str(port)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, cwd=ROOT,
    )  # fmt: skip
    try:
        printed: dict[str, str] = {}

        def credentials():
            line = sim.stdout.readline()
            if ":" in line and line.startswith("  "):
                key, _, value = line.strip().partition(":")
                printed[key.strip()] = value.strip()
            return printed if "apps" in printed else None

        wait_for(credentials, 30, "the simulator's credentials")
        assert f"api_url: http://127.0.0.1:{port}/stable/" in readme.replace("8099", str(port))
        example = (ROOT / "config.example.yaml").read_text()
        config = example.replace(
            "api_url: https://api.scaleengine.net/stable/",
            f"api_url: http://127.0.0.1:{port}/stable/",
        ).replace("cdn_id: 158", f"cdn_id: {printed['cdn_id']}")
        data = yaml.safe_load(config)
        apps = {a if isinstance(a, str) else a["name"] for a in data["apps"]}
        assert apps <= set(printed["apps"].split(", ")), "the example's apps exist in the simulator"
        path = tmp_path / "config.yaml"
        path.write_text(config)
        env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
        env["SCALEENGINE_API_KEY"] = printed["api_key"]
        env["SCALEENGINE_API_SECRET"] = printed["api_secret"]
        proc = subprocess.run(
            [sys.executable, "-m", "exporter", "--once", "--config", str(path)],
            capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        s = samples(proc.stdout)
        urls = [u for a in data["apps"] if isinstance(a, dict) for u in a.get("urls", [])]
        for url in urls:  # the example's urls have usage in the simulator
            # the single form's account label is its cdn_id (no scaleengine.account)
            labels = (("account", printed["cdn_id"]), ("app", "vod-library"), ("video_url", url))
            key = ("scaleengine_vse_day_bytes", labels)
            assert s.get(key, 0) > 0, url
    finally:
        sim.send_signal(signal.SIGINT)
        sim.wait(10)


def test_docker_flags_after_the_image_repeat_the_default_command():
    """Flags after the image name replace CMD: the README's full command keeps all of it."""
    dockerfile = (ROOT / "Dockerfile").read_text()
    cmd = re.search(r"^CMD (\[.*?\])", dockerfile, re.M | re.S)
    assert cmd
    default = yaml.safe_load(cmd.group(1).replace("\\\n", ""))
    readme = (ROOT / "README.md").read_text()
    assert "replace the image's default command" in readme
    blocks = re.findall(r"```sh\n(.*?)```", readme, re.S)
    runs = [" ".join(b.replace("\\\n", " ").split()) for b in blocks if "docker run" in b]
    full = [r for r in runs if re.search(r"scaleengine-exporter --(?!name)", r)]
    assert full, runs
    assert all(" ".join(default) in r for r in full), full
