"""Tests for exporter.web.basicauth through the web config: bcrypt checks, the cache of passed
logins, and the same cost for every failed login."""

from __future__ import annotations

import base64
import threading
import time
from pathlib import Path

import bcrypt
import pytest

from exporter.web.webconfig import WebConfig, load_web_config


def write_web_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- basic auth

HASH = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(rounds=4)).decode()


def basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


@pytest.fixture
def auth_web(tmp_path: Path) -> WebConfig:
    # $2y$ is what htpasswd writes; accept it as exporter-toolkit does.
    y_hash = "$2y$" + HASH[4:]
    return load_web_config(
        write_web_config(tmp_path, f"basic_auth_users:\n  alice: '{HASH}'\n  bob: '{y_hash}'\n")
    )


def test_basic_auth(auth_web: WebConfig):
    assert auth_web.auth_required
    assert auth_web.check_basic_auth(basic("alice", "s3cret"))
    assert auth_web.check_basic_auth(basic("bob", "s3cret"))
    assert auth_web.check_basic_auth("basic " + basic("alice", "s3cret")[6:])
    assert not auth_web.check_basic_auth(basic("alice", "wrong"))
    assert not auth_web.check_basic_auth(basic("carol", "s3cret"))
    assert not auth_web.check_basic_auth(None)
    assert not auth_web.check_basic_auth("")
    assert not auth_web.check_basic_auth("Bearer abc")
    assert not auth_web.check_basic_auth("Basic")
    assert not auth_web.check_basic_auth("Basic !!!notbase64")
    assert not auth_web.check_basic_auth("Basic " + base64.b64encode(b"nocolon").decode())
    assert not auth_web.check_basic_auth("Basic " + base64.b64encode(b"\xff:\xfe").decode())
    # The cache must not let a wrong password through after a right one.
    assert auth_web.check_basic_auth(basic("alice", "s3cret"))
    assert not auth_web.check_basic_auth(basic("alice", "s3cret "))
    assert not auth_web.check_basic_auth(basic("bob", "wrong"))


def test_basic_auth_cache_avoids_repeated_bcrypt(auth_web: WebConfig, monkeypatch):
    calls = []
    real = bcrypt.checkpw

    def counting(password, hashed):
        calls.append(1)
        time.sleep(0.05)  # make concurrent first checks overlap
        return real(password, hashed)

    monkeypatch.setattr("exporter.web.basicauth.bcrypt.checkpw", counting)
    header = basic("alice", "s3cret")
    results = []
    threads = [
        threading.Thread(target=lambda: results.append(auth_web.check_basic_auth(header)))
        for _ in range(50)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 50
    assert len(calls) == 1
    assert auth_web.check_basic_auth(header)
    assert len(calls) == 1
    assert not auth_web.check_basic_auth(basic("alice", "nope"))
    assert len(calls) == 2


def test_failed_login_costs_the_highest_configured_cost_for_every_user(tmp_path, monkeypatch):
    """Unknown users are checked against a dummy hash of the highest cost; a wrong password
    for a cheaper hash is padded with that check (the daemon test measures the times)."""
    strong = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=6)).decode()
    weak = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
    wc = load_web_config(
        write_web_config(tmp_path, f"basic_auth_users:\n  strong: '{strong}'\n  weak: '{weak}'\n")
    )
    costs: list[int] = []
    real = bcrypt.checkpw

    def spy(password, hashed):
        costs.append(int(hashed[4:6]))
        return real(password, hashed)

    monkeypatch.setattr("exporter.web.basicauth.bcrypt.checkpw", spy)
    assert not wc.check_basic_auth(basic("nobody", "pw"))
    assert costs == [6]
    costs.clear()
    assert not wc.check_basic_auth(basic("weak", "wrong"))
    assert costs == [4, 6]
    costs.clear()
    assert not wc.check_basic_auth(basic("strong", "wrong"))
    assert costs == [6]
    costs.clear()
    assert wc.check_basic_auth(basic("weak", "pw"))  # a right password is not padded
    assert costs == [4]
    assert wc.check_cached(basic("weak", "pw")) and not wc.check_cached(basic("weak", "x"))
