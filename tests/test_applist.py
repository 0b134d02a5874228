"""app.list (issue 17, "a typo is never a healthy zero"): the request as the simulator checks
it, the answer shapes the client accepts, `list-apps`, and scaleengine_app_listed from --once
and from the daemon (its serving process), all against the simulator over real HTTP."""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import urllib.parse
import urllib.request

import pytest
import yaml
from helpers import ROOT, free_port, http_get, samples, sim_config, stop_process, wait_for

from exporter.phpjson import php_json_encode
from exporter.scaleengine import ApiError, ScaleEngineClient
from exporter.scaleengine.protocol import build_app_list_request, sign
from exporter.simulator import Simulator

WRONG_SECRET = "wrong-secret-9b1c2d3e4f5a6b7c8d9e0f1a2b3c4d5e"


@pytest.fixture
def sim():
    s = Simulator()
    s.start()
    try:
        yield s
    finally:
        s.stop()


def write_config(tmp_path, sim, **sections) -> str:
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(sim_config(sim, **sections)))
    path.chmod(0o600)
    return str(path)


def run(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    return subprocess.run(
        [sys.executable, "-m", "exporter", *args],
        capture_output=True, text=True, timeout=60, cwd=ROOT, env=env,
    )  # fmt: skip


def post(sim, body: str) -> dict:
    data = urllib.parse.urlencode({"json": body}).encode()
    with urllib.request.urlopen(urllib.request.Request(sim.url, data=data), timeout=10) as r:
        return json.loads(r.read())


def client_for_sim(sim, **kw) -> ScaleEngineClient:
    return ScaleEngineClient(
        sim.url, sim.cdn_id, sim.api_key, sim.api_secret, timeout=5, retries=0, **kw
    )


# -- the simulator checks app.list as strictly as usage.vse ------------------------------


def _signed(sim, request: dict, secret: str | None = None) -> str:
    return php_json_encode({**request, "signature": sign(request, secret or sim.api_secret)})


def test_simulator_answers_a_good_app_list_in_its_documented_shape(sim):
    request = build_app_list_request(sim.api_key, sim.cdn_id, sim.clock.now())
    answer = post(sim, _signed(sim, request))
    assert answer == {
        "status": "success",
        "message": "Found 3 applications",
        "data": [
            {"name": "demo-origin", "type": "origin"},
            {"name": "live-events", "type": "origin"},
            {"name": "vod-library", "type": "origin"},
        ],
    }
    assert list(sim.request_log)[-1]["outcome"] == "success"


@pytest.mark.parametrize(
    "change, code",
    [
        ("extra_field", "0006"),
        ("wrong_order", "0006"),
        ("missing_cdn", "0006"),
        ("cdn_id", "0006"),
        ("bad_signature", "0003"),
        ("old_timestamp", "0002"),
        ("wrong_key", "0001"),
    ],
)
def test_simulator_refuses_a_wrong_app_list(sim, change, code):
    request = build_app_list_request(sim.api_key, sim.cdn_id, sim.clock.now())
    secret = None
    if change == "extra_field":
        request["app"] = "demo-origin"
    elif change == "wrong_order":
        request = {k: request[k] for k in ("command", "timestamp", "api_key", "cdn")}
    elif change == "missing_cdn":
        del request["cdn"]
    elif change == "cdn_id":
        request["cdn_id"] = request.pop("cdn")
    elif change == "bad_signature":
        secret = WRONG_SECRET
    elif change == "old_timestamp":
        request["timestamp"] -= 301
    elif change == "wrong_key":
        request["api_key"] = "X" * 32
    answer = post(sim, _signed(sim, request, secret))
    assert answer["status"] == "failure" and answer["code"] == code
    entry = list(sim.request_log)[-1]
    assert entry["outcome"] == "failure" and entry["code"] == code


# -- the answer shapes the client accepts ------------------------------------------------

SHAPES = {
    "data_objects_name": {"status": "success", "data": [{"name": "a1"}, {"name": "b2"}]},
    "apps_objects_name": {"status": "success", "apps": [{"name": "a1"}, {"name": "b2"}]},
    "data_strings": {"status": "success", "data": ["a1", "b2"]},
    "apps_strings": {"status": "success", "message": "ok", "apps": ["a1", "b2"]},
    "app_name_key": {"status": "success", "data": [{"app_name": "a1"}, {"app_name": "b2"}]},
    "app_key": {"status": "success", "apps": [{"app": "a1", "id": 7}, {"app": "b2"}]},
    "object_of_objects": {"status": "success", "data": {"a1": {"id": 1}, "b2": {"id": 2}}},
    "no_status": {"apps": ["a1", "b2"]},
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
def test_every_plausible_answer_shape_gives_the_names(sim, shape):
    sim.app_list_override = json.dumps(SHAPES[shape]).encode()
    with client_for_sim(sim) as client:
        entries = client.list_apps()
    assert [e["name"] for e in entries] == ["a1", "b2"]


def test_the_entries_keep_the_fields_they_came_with(sim):
    sim.app_list_override = json.dumps(SHAPES["app_key"]).encode()
    with client_for_sim(sim) as client:
        entries = client.list_apps()
    assert entries == [{"name": "a1", "app": "a1", "id": 7}, {"name": "b2", "app": "b2"}]


GARBAGE = {
    "no_list": {"status": "success", "result": "secret-value-1", "total": 3},
    "list_elsewhere": {"status": "success", "items": ["secret-value-1"]},
    "entry_without_name": {"status": "success", "data": [{"title": "secret-value-1"}]},
    "data_a_string": {"status": "success", "data": "secret-value-1"},
    "odd_status": {"status": "secret-value-1", "data": []},
}


@pytest.mark.parametrize("shape", sorted(GARBAGE))
def test_an_unknown_shape_is_bad_response_naming_the_keys_not_the_values(sim, shape, caplog):
    sim.app_list_override = json.dumps(GARBAGE[shape]).encode()
    caplog.set_level(logging.WARNING, logger="exporter.scaleengine")
    with client_for_sim(sim) as client, pytest.raises(ApiError) as info:
        client.list_apps()
    assert info.value.outcome == "bad_response"
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    for key in GARBAGE[shape]:
        assert repr(key) in warnings[0]
    assert "secret-value-1" not in warnings[0] and "secret-value-1" not in info.value.message


def test_a_failure_answer_maps_like_usage_vse(sim):
    sim.set_fault("app.list", "failure_0005")
    with client_for_sim(sim) as client, pytest.raises(ApiError) as info:
        client.list_apps()
    assert (info.value.outcome, info.value.code, info.value.retryable) == (
        "api_0005", "0005", False,
    )  # fmt: skip


def test_a_transient_failure_is_retried_and_busy_is_not(sim):
    sim.set_fault("app.list", "http_500", times=1)
    with ScaleEngineClient(
        sim.url, sim.cdn_id, sim.api_key, sim.api_secret, timeout=5, retries=2,
        backoff_base=0.01, backoff_max=0.02,
    ) as client:  # fmt: skip
        assert len(client.list_apps()) == 3
        assert sum(1 for e in sim.request_log if e.get("command") == "app.list") == 2
        sim.set_fault("app.list", "failure_1000")
        with pytest.raises(ApiError) as info:
            client.list_apps()
    assert info.value.busy and info.value.outcome == "api_1000"
    assert sum(1 for e in sim.request_log if e.get("command") == "app.list") == 3


# -- list-apps --------------------------------------------------------------------------


def test_list_apps_prints_the_accounts_apps(tmp_path, sim):
    cfg = write_config(tmp_path, sim)
    proc = run("list-apps", "--config", cfg)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "demo-origin\nlive-events\nvod-library\n"
    proc = run("list-apps", "--config", cfg, "--format", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)[1] == {
        "account": "4242",
        "name": "live-events",
        "type": "origin",
    }


def test_list_apps_with_a_wrong_secret_exits_1_with_the_apis_message(tmp_path, sim):
    cfg = write_config(tmp_path, sim, scaleengine={"api_secret": WRONG_SECRET})
    proc = run("list-apps", "--config", cfg)
    assert proc.returncode == 1
    assert proc.stdout == ""
    assert "API error 0003" in proc.stderr and "HMAC-SHA256 Signature Failed" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert WRONG_SECRET not in proc.stderr and sim.api_key not in proc.stderr


def test_list_apps_with_a_bad_config_exits_2_as_check_config_says(tmp_path, sim):
    data = sim_config(sim)
    data["scaleengine"]["cdn_id"] = "not-a-number"
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    proc = run("list-apps", "--config", str(path))
    check = run("--check-config", "--config", str(path))
    assert proc.returncode == 2 and check.returncode == 2
    error = [line for line in proc.stderr.splitlines() if "error" in line]
    assert error == [line for line in check.stderr.splitlines() if "error" in line]
    assert "cdn_id" in error[0] and "Traceback" not in proc.stderr
    assert len(sim.request_log) == 0


def test_list_apps_help_names_every_flag():
    proc = run("list-apps", "--help")
    assert proc.returncode == 0
    for flag in ("--config", "--format", "--log.level", "--log.format"):
        assert flag in proc.stdout


# -- scaleengine_app_listed -------------------------------------------------------------


def test_once_with_a_typo_marks_the_app_unlisted_and_suggests_the_name(tmp_path, sim):
    cfg = write_config(tmp_path, sim, apps=["demo-origin", "demo-orgin", "live-events"])
    proc = run("--once", "--config", cfg)
    got = samples(proc.stdout)
    assert (
        got[
            (
                "scaleengine_app_listed",
                (
                    ("account", "4242"),
                    ("app", "demo-orgin"),
                ),
            )
        ]
        == 0
    )
    assert (
        got[
            (
                "scaleengine_app_listed",
                (
                    ("account", "4242"),
                    ("app", "demo-origin"),
                ),
            )
        ]
        == 1
    )
    assert (
        got[
            (
                "scaleengine_app_listed",
                (
                    ("account", "4242"),
                    ("app", "live-events"),
                ),
            )
        ]
        == 1
    )
    warnings = [line for line in proc.stderr.splitlines() if "not in the account" in line]
    assert len(warnings) == 1
    assert "demo-orgin" in warnings[0] and "did you mean demo-origin" in warnings[0]


def test_once_without_an_app_list_answer_has_no_listed_gauge(tmp_path, sim):
    sim.set_fault("app.list", "failure_0005")
    cfg = write_config(tmp_path, sim)
    proc = run("--once", "--config", cfg)
    assert proc.returncode == 0, proc.stderr  # polling goes on as before
    got = samples(proc.stdout)
    assert not [k for k in got if k[0] == "scaleengine_app_listed"]
    assert (
        got[
            (
                "scaleengine_up",
                (
                    ("account", "4242"),
                    ("app", "demo-origin"),
                ),
            )
        ]
        == 1
    )
    assert sum("app.list failed" in line for line in proc.stderr.splitlines()) == 1


def test_the_daemon_serves_the_verdict_and_marks_the_landing_page(tmp_path, sim):
    cfg = write_config(tmp_path, sim, apps=["demo-origin", "demo-orgin"])
    port = free_port()
    log = open(tmp_path / "daemon.log", "w")  # noqa: SIM115 - closed below
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter", "--config", cfg,
         "--web.listen-address", f"127.0.0.1:{port}"],
        stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, env=env,
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def listed():
            try:
                status, _, body = http_get(url + "/metrics", timeout=2)
            except OSError:
                return None
            got = samples(body) if status == 200 else {}
            key = (
                "scaleengine_app_listed",
                (
                    ("account", "4242"),
                    ("app", "demo-orgin"),
                ),
            )
            return got if key in got else None

        got = wait_for(listed, timeout=30, what="scaleengine_app_listed from the daemon")
        assert (
            got[
                (
                    "scaleengine_app_listed",
                    (
                        ("account", "4242"),
                        ("app", "demo-orgin"),
                    ),
                )
            ]
            == 0
        )
        assert (
            got[
                (
                    "scaleengine_app_listed",
                    (
                        ("account", "4242"),
                        ("app", "demo-origin"),
                    ),
                )
            ]
            == 1
        )
        _, _, page = http_get(url + "/")
        assert "not in the account's app list — did you mean demo-origin?" in page.decode()
        assert page.decode().count("not in the account") == 1
        # a reload asks app.list again at once (not an hour later): the new app is listed
        with open(cfg, "w") as fh:
            fh.write(yaml.safe_dump(sim_config(sim, apps=["demo-origin", "live-events"])))
        proc.send_signal(signal.SIGHUP)

        def relisted():
            _, _, body = http_get(url + "/metrics", timeout=2)
            got = samples(body)
            key = (
                "scaleengine_app_listed",
                (
                    ("account", "4242"),
                    ("app", "live-events"),
                ),
            )
            return got if key in got else None

        got = wait_for(relisted, timeout=30, what="app.list after the reload")
        assert (
            got[
                (
                    "scaleengine_app_listed",
                    (
                        ("account", "4242"),
                        ("app", "live-events"),
                    ),
                )
            ]
            == 1
        )
        assert (
            "scaleengine_app_listed",
            (
                ("account", "4242"),
                ("app", "demo-orgin"),
            ),
        ) not in got
    finally:
        stop_process(proc)
        log.close()
