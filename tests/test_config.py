"""Tests for exporter.config."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import zoneinfo
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import SecretStr, ValidationError

from exporter.config import (
    Config,
    ConfigError,
    load_config,
    parse_config,
    parse_duration,
    parse_size,
)
from exporter.web.webconfig import load_web_config

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures" / "config"
VALID = sorted((FIXTURES / "valid").glob("*.yaml"))
INVALID = sorted((FIXTURES / "invalid").glob("*.yaml"))
ENV = {"SCALEENGINE_API_KEY": "env-key-123", "SCALEENGINE_API_SECRET": "env-secret-456"}
SECRETS = {"cdn_id": 158, "api_key": "inline-key-xyz", "api_secret": "inline-secret-xyz"}


def expected_error(path: Path) -> str:
    first = path.read_text().splitlines()[0]
    match = re.fullmatch(r"# error: (.+)", first)
    assert match, f"{path.name}: first line must be '# error: <expected fragment>'"
    return match.group(1)


def base(**sections):
    data = {"scaleengine": dict(SECRETS), "apps": ["demo-origin"]}
    data.update(sections)
    return data


# --------------------------------------------------------------------------- fixtures


def test_fixture_dirs_are_populated():
    assert len(VALID) >= 3
    assert len(INVALID) >= 20


@pytest.mark.parametrize("path", VALID, ids=lambda p: p.name)
def test_valid_fixture_loads(path: Path):
    config = load_config(path, env=ENV)
    assert isinstance(config, Config)
    assert config.accounts[0].apps
    assert config.poll.stale_after >= config.poll.interval


@pytest.mark.parametrize("path", INVALID, ids=lambda p: p.name)
def test_invalid_fixture_names_field(path: Path):
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    message = str(info.value)
    assert expected_error(path) in message
    assert message.startswith(str(path))
    assert "\n" not in message
    for secret in ("inline-key", "api_secret: s,", "'k'", "'s'"):
        assert secret not in message


def test_example_config_loads():
    config = load_config(ROOT / "config.example.yaml", env=ENV)
    assert config.accounts[0].cdn_id == 158
    assert [app.name for app in config.accounts[0].apps] == ["demo-origin", "vod-library"]
    assert config.accounts[0].apps[1].daily_bytes_budget == 500 * 10**9
    assert config.accounts[0].apps[1].monthly_bytes_budget == 10 * 1024**4
    assert config.poll.interval == 300.0
    assert config.poll.stale_after == 900.0
    assert config.secret_values() == ["env-key-123", "env-secret-456"]


def test_full_fixture_values():
    config = load_config(FIXTURES / "valid" / "full.yaml", env={})
    se = config.accounts[0]
    assert se.api_url == "https://api.scaleengine.net/dev/"
    assert se.cdn_id == 42
    assert isinstance(se.api_key, SecretStr)
    assert se.api_key.get_secret_value() == "inline-key"
    assert se.api_secret.get_secret_value() == "inline-secret"
    assert se.timeout == 2.5
    assert (
        config.accounts[0].apps[0].name == "demo-origin" and config.accounts[0].apps[0].urls is None
    )
    assert config.accounts[0].apps[1].urls == ["sestore/x/a.mp4", "sestore/x/b.mp4"]
    assert config.accounts[0].apps[2].name == "2024"
    poll = config.poll
    assert poll.interval == 5400.0
    assert poll.month_interval is None
    assert poll.timezone == "America/Toronto"
    assert poll.tz == zoneinfo.ZoneInfo("America/Toronto")
    assert (poll.page_size, poll.max_pages, poll.concurrency, poll.retries) == (10000, 5, 1, 0)
    assert poll.late_data_window == 0.0
    assert poll.stale_after == 86400.0
    assert config.limits.max_videos_per_app == 1
    assert config.limits.include is not None and config.limits.include.search("sestore/x")
    assert config.limits.exclude is not None and config.limits.exclude.search("a.tmp")
    assert config.web.listen_address == "[::1]:9000"
    assert (config.web.listen_host, config.web.listen_port) == ("::1", 9000)
    assert config.web.telemetry_path == "/scaleengine/metrics"
    # Relative paths resolve against the config file's directory.
    assert config.web.config_file == str(FIXTURES / "valid" / "web.yml")
    assert config.state.path == "/var/lib/scaleengine-exporter/state.json"


def test_defaults():
    config = parse_config(base())
    assert config.accounts[0].api_url == "https://api.scaleengine.net/stable/"
    assert config.accounts[0].timeout == 10.0
    assert config.poll.interval == 300.0
    assert config.poll.month_interval == 3600.0
    assert config.poll.timezone == "UTC"
    assert config.poll.page_size == 1000
    assert config.poll.max_pages == 1000
    assert config.poll.concurrency == 4
    assert config.poll.retries == 3
    assert config.poll.late_data_window == 7200.0
    assert config.poll.stale_after == 900.0
    assert config.limits.max_videos_per_app == 1000
    assert config.limits.include is None and config.limits.exclude is None
    assert config.web.listen_address == ":8491"
    assert (config.web.listen_host, config.web.listen_port) == ("", 8491)
    assert config.web.telemetry_path == "/metrics"
    assert config.web.config_file is None
    assert config.state.path is None


def test_parse_config_keeps_relative_paths_without_base_dir():
    config = parse_config(base(web={"config_file": "web.yml"}, state={"path": "s.json"}))
    assert config.web.config_file == "web.yml"
    assert config.state.path == "s.json"


def test_config_is_immutable():
    config = parse_config(base())
    with pytest.raises(ValidationError, match="frozen"):
        config.poll.interval = 1  # type: ignore[misc]
    assert config.poll.interval == parse_config(base()).poll.interval


# --------------------------------------------------------------------------- units


@pytest.mark.parametrize(
    "text, seconds",
    [
        ("30s", 30.0),
        ("5m", 300.0),
        ("2h", 7200.0),
        ("1d", 86400.0),
        ("1h30m", 5400.0),
        ("1w", 604800.0),
        ("250ms", 0.25),
        ("1.5h", 5400.0),
        ("1H", 3600.0),
        (" 10s ", 10.0),
        ("45", 45.0),
        (45, 45.0),
        (2.5, 2.5),
        (0, 0.0),
    ],
)
def test_parse_duration(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    "value", ["fast", "", "5x", "m5", "1h 30", "-5s", -1, True, None, [], "1e3s", "s"]
)
def test_parse_duration_rejects(value):
    with pytest.raises(ValueError):
        parse_duration(value)


def test_parse_duration_rejects_nonfinite():
    for value in (float("nan"), float("inf"), 10**400, "9" * 400 + "s"):
        with pytest.raises(ValueError):
            parse_duration(value)


@pytest.mark.parametrize(
    "value, size",
    [
        (0, 0),
        (1234, 1234),
        ("1234", 1234),
        ("1B", 1),
        ("1KB", 1000),
        ("1kB", 1000),
        ("500gB", 500 * 10**9),
        ("500 GB", 500 * 10**9),
        ("1 MB", 10**6),
        ("500GB", 500 * 10**9),
        ("1.5TB", 1_500_000_000_000),
        ("2PB", 2 * 10**15),
        ("1KiB", 1024),
        ("1 miB", 1024**2),
        ("1 MIB", 1024**2),
        ("7b", 7),
        ("3GiB", 3 * 1024**3),
        ("10TiB", 10 * 1024**4),
        ("1PiB", 1024**5),
        (1024.0, 1024),
    ],
)
def test_parse_size(value, size):
    assert parse_size(value) == size


@pytest.mark.parametrize(
    "value", ["", "GB", "5 XB", "5 G", "-1", -1, "1.5.5GB", "1e9", True, None, 1.5, "5  GB"]
)
def test_parse_size_rejects(value):
    with pytest.raises(ValueError):
        parse_size(value)


@pytest.mark.parametrize(
    "value, write",
    [
        ("500Gb", "500GB"),
        ("500gb", "500GB"),
        ("1kb", "1KB"),
        ("1.5 tb", "1.5 TB"),
        ("2Pb", "2PB"),
        ("10Tib", "10TiB"),
        ("1 mib", "1 MiB"),
        ("3GIb", "3GiB"),
    ],
)
def test_parse_size_refuses_bits(value, write):
    """A lowercase b after a multiplier reads as bits: refused, naming the byte spelling."""
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value) == (
        f"invalid size '{value}': a lowercase b means bits; write {write} for bytes"
    )


# --------------------------------------------------------------------------- errors


def test_error_names_nested_path():
    data = base(apps=["a", "b", {"name": "c", "monthly_bytes_budget": "lots"}])
    with pytest.raises(ConfigError) as info:
        parse_config(data, source="config.yaml")
    assert str(info.value).startswith("config.yaml: apps[2].monthly_bytes_budget: invalid size")
    assert info.value.field == "apps[2].monthly_bytes_budget"


def test_bad_duration_message():
    with pytest.raises(ConfigError) as info:
        parse_config(base(poll={"interval": "fast"}), source="config.yaml")
    assert str(info.value) == (
        "config.yaml: poll.interval: invalid duration 'fast' (use e.g. 30s, 5m, 2h)"
    )


def test_unknown_field_message():
    with pytest.raises(ConfigError) as info:
        parse_config(base(poll={"intervall": "5m"}), source="config.yaml")
    assert str(info.value) == "config.yaml: unknown field 'poll.intervall'"


def test_bool_is_not_a_number():
    with pytest.raises(ConfigError, match="poll.page_size"):
        parse_config(base(poll={"page_size": True}))


def test_not_a_mapping():
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(["a"])
    with pytest.raises(ConfigError, match="empty"):
        parse_config(None)


def test_yaml_syntax_error_has_line_and_column(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_text("scaleengine:\n  cdn_id: 1\n   bad: [\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env=ENV)
    assert re.search(r"line \d+, column \d+", str(info.value))
    assert str(path) in str(info.value)


def test_unreadable_config_names_file(tmp_path: Path):
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError, match=re.escape(str(path))):
        load_config(path)
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path)  # a directory


def test_invalid_utf8(tmp_path: Path):
    path = tmp_path / "c.yaml"
    path.write_bytes(b"apps: [\xff]\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path, env=ENV)


def test_secrets_never_in_errors():
    secret = "sup3r-s3cret-value"
    for data in (
        base(scaleengine={"cdn_id": 1, "api_key": secret, "api_secret": secret, "x": 1}),
        base(scaleengine={"cdn_id": "bad", "api_key": secret, "api_secret": secret}),
        base(scaleengine={"cdn_id": 1, "api_key": [secret], "api_secret": {secret: secret}}),
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(data)
        assert secret not in str(info.value)
    config = parse_config(base(scaleengine={"cdn_id": 1, "api_key": secret, "api_secret": "y"}))
    assert secret not in repr(config) and secret not in str(config)


# --------------------------------------------------------------------------- secrets


def test_secrets_from_env():
    config = parse_config({"scaleengine": {"cdn_id": 5}, "apps": ["a"]}, env=ENV)
    assert config.secret_values() == ["env-key-123", "env-secret-456"]


def test_inline_secrets_win_over_env():
    config = parse_config(base(), env=ENV)
    assert config.secret_values() == ["inline-key-xyz", "inline-secret-xyz"]


def test_env_defaults_to_os_environ(monkeypatch):
    monkeypatch.setenv("SCALEENGINE_API_KEY", "from-os-env")
    monkeypatch.setenv("SCALEENGINE_API_SECRET", "from-os-env-2")
    config = parse_config({"scaleengine": {"cdn_id": 5}, "apps": ["a"]})
    assert config.secret_values() == ["from-os-env", "from-os-env-2"]


def test_missing_secrets_name_env_var():
    with pytest.raises(ConfigError) as info:
        parse_config({"scaleengine": {"cdn_id": 5}, "apps": ["a"]}, env={})
    assert "scaleengine.api_key" in str(info.value)
    assert "SCALEENGINE_API_KEY" in str(info.value)
    with pytest.raises(ConfigError) as info:
        parse_config(
            {"scaleengine": {"cdn_id": 5}, "apps": ["a"]}, env={"SCALEENGINE_API_KEY": "k"}
        )
    assert "scaleengine.api_secret" in str(info.value)
    assert "SCALEENGINE_API_SECRET" in str(info.value)


def test_secret_files_relative_to_config_dir(tmp_path: Path, caplog):
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key").write_text("file-key\n")
    (secrets / "secret").write_text("file-secret\r\n")
    os.chmod(secrets / "key", 0o600)
    os.chmod(secrets / "secret", 0o600)
    path = tmp_path / "config.yaml"
    path.write_text(
        "scaleengine:\n  cdn_id: 9\n  api_key_file: secrets/key\n"
        f"  api_secret_file: {secrets / 'secret'}\napps: [a]\n"
    )
    os.chmod(path, 0o600)
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        config = load_config(path, env=ENV)
    assert config.secret_values() == ["file-key", "file-secret"]
    assert config.accounts[0].api_key_file == str(secrets / "key")
    assert not caplog.records


def test_exposed_files_warn(tmp_path: Path, caplog):
    key = tmp_path / "key"
    key.write_text("file-key\n")
    os.chmod(key, 0o644)
    path = tmp_path / "config.yaml"
    path.write_text("scaleengine:\n  cdn_id: 9\n  api_key_file: key\n  api_secret: s\napps: [a]\n")
    os.chmod(path, 0o640)
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        load_config(path, env={})
    messages = [r.getMessage() for r in caplog.records if r.name == "exporter.config"]
    assert any(str(key) in m for m in messages)
    assert any(str(path) in m for m in messages)
    assert all("file-key" not in m for m in messages)


def test_secret_file_errors(tmp_path: Path):
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cases = {
        "api_key_file: missing.txt": "scaleengine.api_key_file",
        f"api_key_file: {empty}": "scaleengine.api_key_file: secret file",
        f"api_key_file: {tmp_path}": "scaleengine.api_key_file: cannot read",
        "api_key_file: 12": "scaleengine.api_key_file: must be a file path",
    }
    for line, fragment in cases.items():
        path = tmp_path / "config.yaml"
        path.write_text(f"scaleengine:\n  cdn_id: 9\n  {line}\n  api_secret: s\napps: [a]\n")
        with pytest.raises(ConfigError) as info:
            load_config(path, env=ENV)
        assert fragment in str(info.value), line


def test_both_inline_and_file_is_an_error():
    data = base()
    data["scaleengine"]["api_secret_file"] = "/dev/null"
    with pytest.raises(ConfigError, match="scaleengine.api_secret: give either"):
        parse_config(data)


# --------------------------------------------------------------------------- semantics


def test_fast_polling_warns(caplog):
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        config = parse_config(base(poll={"interval": "10s"}))
    assert config.poll.interval == 10.0
    assert config.poll.stale_after == 30.0
    assert any("polled hard" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="exporter.config"):
        parse_config(base(poll={"interval": "60s"}))
    assert not any("polled hard" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("value", ["off", False, None, "OFF"])
def test_month_interval_off(value):
    assert parse_config(base(poll={"month_interval": value})).poll.month_interval is None


@pytest.mark.parametrize("value", ["off", 0, "0s", False, None])
def test_late_data_window_off(value):
    assert parse_config(base(poll={"late_data_window": value})).poll.late_data_window == 0.0


def test_stale_after_equal_to_interval_ok():
    config = parse_config(base(poll={"interval": "2m", "stale_after": 120}))
    assert config.poll.stale_after == 120.0


@pytest.mark.parametrize("addr", [":8491", "0.0.0.0:80", "localhost:0", "[::1]:9000", "[::]:1"])
def test_listen_addresses(addr):
    assert parse_config(base(web={"listen_address": addr})).web.listen_address == addr


@pytest.mark.parametrize("addr", ["8491", "host", ":", "[::1]", "::1:80", ":99999", "a b:1"])
def test_bad_listen_addresses(addr):
    with pytest.raises(ConfigError, match="web.listen_address"):
        parse_config(base(web={"listen_address": addr}))


def test_include_exclude_are_patterns():
    config = parse_config(base(limits={"include": r"\.mp4$", "exclude": "^tmp/"}))
    assert isinstance(config.limits.include, re.Pattern)
    assert config.limits.include.search("sestore/a.mp4")
    assert config.limits.exclude is not None and config.limits.exclude.search("tmp/x")


# --------------------------------------------------------------------------- properties

scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
KEYS = [
    "scaleengine", "apps", "poll", "limits", "web", "state", "cdn_id", "api_key", "api_secret",
    "api_key_file", "api_secret_file", "api_url", "timeout", "name", "urls", "interval",
    "daily_bytes_budget", "monthly_bytes_budget", "month_interval", "timezone", "page_size",
    "stale_after", "late_data_window", "include", "exclude", "listen_address", "path",
]  # fmt: skip
keys = st.sampled_from(KEYS) | st.text(max_size=10) | st.integers() | st.none()
nested = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=5),
    max_leaves=30,
)


def _section_strategy():
    return st.dictionaries(st.sampled_from(KEYS), nested, max_size=6)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=nested | st.dictionaries(st.sampled_from(KEYS), nested | _section_strategy()))
def test_parse_config_only_raises_config_error(data):
    for env in ({}, ENV):
        try:
            parse_config(data, env=env)
        except ConfigError as err:
            assert str(err)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    sections=st.fixed_dictionaries(
        {"scaleengine": st.fixed_dictionaries({"cdn_id": nested}, optional={"x": nested})},
        optional={k: _section_strategy() for k in ("poll", "limits", "web", "state")},
    ),
    apps=nested,
)
def test_parse_config_structured_only_raises_config_error(sections, apps):
    sections["apps"] = apps
    try:
        parse_config(sections, env=ENV)
    except ConfigError:
        pass


@settings(max_examples=300, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_load_config_arbitrary_bytes(tmp_path_factory, raw):
    path = tmp_path_factory.mktemp("cfg") / "config.yaml"
    path.write_bytes(raw)
    try:
        load_config(path, env=ENV)
    except ConfigError as err:
        assert str(err).startswith(str(path))


@pytest.mark.parametrize(
    "value,reason",
    [
        ("abc", "expected a whole number, not text"),
        (1.5, "expected a whole number, not a fraction"),
        (0, "must be greater than or equal to 1"),
    ],
)
def test_number_errors_read_like_the_others(value, reason):
    with pytest.raises(ConfigError) as ei:
        parse_config(base(poll={"page_size": value}))
    assert str(ei.value) == f"<config>: poll.page_size: {reason}"
    assert "Input should" not in str(ei.value)


# -- every file read: regular files only, bounded, never blocking (issue 15 item 10) -------


def _special(tmp_path: Path, kind: str) -> str:
    """A path that is not a readable regular file: a FIFO with no writer, a device, a folder."""
    if kind == "fifo":
        path = tmp_path / "fifo"
        os.mkfifo(path)  # a blocking open would never return
        return str(path)
    if kind == "folder":
        (tmp_path / "folder").mkdir()
        return str(tmp_path / "folder")
    return kind


def _sized(path: Path, size: int, head: bytes = b"") -> str:
    path.write_bytes(head + b"#" * (size - len(head)))
    return str(path)


KINDS = ["fifo", "/dev/zero", "folder"]
CONFIG_HEAD = b"scaleengine: {cdn_id: 9}\napps: [a]\n"


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("which", ["config", "web config", "secret file", "TLS file"])
def test_files_that_are_not_regular_are_refused_at_once(tmp_path, kind, which):
    path = _special(tmp_path, kind)
    with pytest.raises(ConfigError) as info:
        if which == "config":
            load_config(path, env=ENV)
        elif which == "web config":
            load_web_config(path)
        elif which == "secret file":
            conf = tmp_path / "c.yaml"
            conf.write_text(f"scaleengine:\n  cdn_id: 9\n  api_key_file: {path}\napps: [a]\n")
            load_config(conf, env=ENV)
        else:
            web = tmp_path / "web.yaml"
            web.write_text(f"tls_server_config:\n  cert_file: {path}\n  key_file: {path}\n")
            load_web_config(web)
    assert "cannot read" in str(info.value) and "not a regular file" in str(info.value)


def test_config_size_cap_4_mib(tmp_path):
    path = _sized(tmp_path / "c.yaml", 4194304, CONFIG_HEAD)
    assert load_config(path, env=ENV).accounts[0].apps[0].name == "a"
    path = _sized(tmp_path / "c.yaml", 4194305, CONFIG_HEAD)
    with pytest.raises(ConfigError, match="cannot read config file: larger than 4194304 bytes"):
        load_config(path, env=ENV)


def test_secret_file_size_cap_64_kib(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("scaleengine:\n  cdn_id: 9\n  api_key_file: key\napps: [a]\n")
    _sized(tmp_path / "key", 65536)
    assert len(load_config(conf, env=ENV).accounts[0].api_key.get_secret_value()) == 65536
    _sized(tmp_path / "key", 65537)
    with pytest.raises(ConfigError, match="larger than 65536 bytes"):
        load_config(conf, env=ENV)


def test_tls_file_size_cap_1_mib(tmp_path):
    from exporter.web.webconfig import _read_pem

    head = b"-----BEGIN CERTIFICATE-----\n"
    path = _sized(tmp_path / "cert.pem", 1048576, head)
    assert len(_read_pem(path, "cert_file", "web.yaml", "CERTIFICATE")) == 1048576
    path = _sized(tmp_path / "cert.pem", 1048577, head)
    with pytest.raises(ConfigError, match="larger than 1048576 bytes"):
        _read_pem(path, "cert_file", "web.yaml", "CERTIFICATE")


def test_check_config_on_a_fifo_ends_with_exit_2(tmp_path):
    """As a user runs it: --check-config on a FIFO answers at once instead of hanging."""
    fifo = _special(tmp_path, "fifo")
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--config", fifo, "--check-config"],
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert proc.returncode == 2 and "not a regular file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


# --------------------------------------------------------------------------- poll.timeout


@pytest.mark.parametrize(
    "interval,expected",
    [("5m", 240.0), ("1m", 48.0), ("13s", 10.4), ("12s", 10.0), ("1s", 10.0), ("1h", 2880.0)],
)
def test_poll_timeout_defaults_to_80_percent_of_the_interval_at_least_10s(interval, expected):
    config = parse_config(base(poll={"interval": interval}), warn_fast_poll=False)
    assert config.poll.timeout == pytest.approx(expected)


def test_poll_timeout_up_to_the_interval_and_above_zero():
    assert parse_config(base(poll={"interval": "5m", "timeout": "5m"})).poll.timeout == 300.0
    assert parse_config(base(poll={"timeout": "1ms"})).poll.timeout == 0.001
    assert parse_config(base(poll={"timeout": None})).poll.timeout == 240.0
    for value, why in [
        ("5m1s", "must be at most poll.interval (300s)"),
        ("0s", "must be greater than 0"),
        ("soon", "invalid duration"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(base(poll={"interval": "5m", "timeout": value}), source="c.yaml")
        assert str(err.value).startswith("c.yaml: poll.timeout: "), str(err.value)
        assert why in str(err.value)
        assert err.value.field == "poll.timeout"
