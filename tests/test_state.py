"""Counter accounting and the state file."""

from __future__ import annotations

import json
import os
import stat

import pytest

from exporter.appkey import AppKey
from exporter.state import (
    AppCounters,
    StateFile,
    StateLockedError,
    check_state_path,
)


def test_growth_counted_once_confirmed_and_new_day_from_zero():
    c = AppCounters(origin_days={"2026-11-26"})
    assert c.observe("2026-11-26", 1000, 10) == (0, 0)  # under way at start: baseline only
    assert c.observe("2026-11-26", 1500, 12) == (0, 0)  # unconfirmed
    assert c.observe("2026-11-26", 1500, 12) == (500, 2)  # confirms 1500: counted
    assert c.observe("2026-11-26", 1400, 12) == (0, 0)  # a dip is not negative growth
    assert c.observe("2026-11-26", 1500, 12) == (0, 0)  # ...and not counted again after it
    assert c.observe("2026-11-26", 1500, 12) == (0, 0)
    assert c.observe("2026-11-27", 300, 1) == (0, 0)  # a new day: unconfirmed
    assert c.observe("2026-11-27", 300, 1) == (300, 1)  # ...counted from its own zero
    assert c.observe("2026-11-26", 1600, 12) == (0, 0)  # late data of yesterday
    assert c.observe("2026-11-26", 1600, 12) == (100, 0)
    assert (c.bytes_total, c.requests_total) == (900, 3)


@pytest.mark.parametrize(
    ("outlier", "requests"),
    [(9223372036854775807, 10), (3200, 20)],  # a row of 2^63-1; a row listed twice
)
def test_one_outlier_read_is_never_counted(outlier, requests):
    c = AppCounters()
    reads = [(1000, 10), (1700, 17), (outlier, requests), (1700, 17), (1800, 18), (1800, 18)]
    for day_bytes, day_requests in reads:
        c.observe("2026-11-26", day_bytes, day_requests)
    assert (c.bytes_total, c.requests_total) == (1800, 18)  # the true growth, to the byte


def test_two_reads_in_a_row_are_counted():
    """The trade: a value read twice in a row is taken as true (no plausibility guess)."""
    c = AppCounters()
    for day_bytes in (1000, 5000, 5000):
        c.observe("2026-11-26", day_bytes, 1)
    assert c.bytes_total == 5000


def test_state_roundtrip_atomic_and_private(tmp_path):
    path = tmp_path / "state.json"
    sf = StateFile(str(path))
    c = AppCounters(bytes_total=5, requests_total=2, baselines={"2026-11-26": (5, 2)})
    other = AppCounters(bytes_total=9, requests_total=4, baselines={})
    sf.save("2026-11-26", {AppKey("prod", "a"): c, AppKey("partner", "a"): other})
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["state.json"]  # no temp file left
    day, apps, legacy = sf.load(legacy_account="prod")
    assert day == "2026-11-26" and legacy is False
    a = apps[AppKey("prod", "a")]
    assert a.bytes_total == 5 and a.baselines == {"2026-11-26": (5, 2)}
    b = apps[AppKey("partner", "a")]  # the same app name in another account: its own entry
    assert (b.bytes_total, b.requests_total, b.baselines) == (9, 4, {})
    assert set(apps) == {AppKey("prod", "a"), AppKey("partner", "a")}


# a state file as the exporter wrote it before several accounts (version 1, by app only)
LEGACY = (
    b'{"version":1,"day":"2026-11-26","apps":{"news":{"bytes_total":123456789,'
    b'"requests_total":4321,"baselines":{"2026-11-25":[1000,10],"2026-11-26":[2000,20]}},'
    b'"sport":{"bytes_total":7,"requests_total":1,"baselines":{}}}}'
)


def test_a_legacy_state_file_loads_into_the_account_given(tmp_path):
    path = tmp_path / "state.json"
    path.write_bytes(LEGACY)
    day, apps, legacy = StateFile(str(path)).load(legacy_account="4242")
    assert day == "2026-11-26" and legacy is True
    assert set(apps) == {AppKey("4242", "news"), AppKey("4242", "sport")}
    news = apps[AppKey("4242", "news")]
    assert (news.bytes_total, news.requests_total) == (123456789, 4321)
    assert news.baselines == {"2026-11-25": (1000, 10), "2026-11-26": (2000, 20)}
    assert apps[AppKey("4242", "sport")].bytes_total == 7


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"{",
        b"[]",
        b'{"version": 1}',
        b'{"version":1,"day":"x","apps":{"a":{}}}',
        b'{"version":1,"day":"d","apps":{"a":{"bytes_total":-1,"requests_total":0,"baselines":{}}}}',
        b'{"version":1,"day":"d","apps":{"a":{"bytes_total":1,"requests_total":0,"baselines":{"d":[1]}}}}',
        b"\xff\xfe garbage",
        b'{"version":2,"day":"d","apps":{}}',  # version 2 keeps its apps under accounts
        b'{"version":2,"day":"d","accounts":{"p":{"a":{}}}}',
        b'{"version":2,"day":"d","accounts":{"p":{"a":{"bytes_total":-1,"requests_total":0,'
        b'"baselines":{}}}}}',
        b'{"version":3,"day":"d","accounts":{}}',
    ],
)
def test_corrupt_state_gives_one_warning_and_fresh_start(tmp_path, caplog, content):
    path = tmp_path / "state.json"
    path.write_bytes(content)
    with caplog.at_level("WARNING"):
        assert StateFile(str(path)).load() is None
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1


def test_truncated_state_file(tmp_path, caplog):
    path = tmp_path / "state.json"
    sf = StateFile(str(path))
    sf.save("2026-11-26", {AppKey("p", "a"): AppCounters(7, 1, {"2026-11-26": (7, 1)})})
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with caplog.at_level("WARNING"):
        assert sf.load() is None
    assert "corrupt" in caplog.text
    json.loads(data)  # the full file was valid JSON


def _one_warning(caplog, sf: StateFile) -> str:
    with caplog.at_level("INFO"):
        assert sf.load() is None
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, caplog.text
    assert not [r for r in caplog.records if r.exc_info]
    return f"{warnings[0].getMessage()}: {warnings[0].__dict__.get('err', '')}"


def test_missing_state_file_is_one_warning(tmp_path, caplog):
    assert "no state file" in _one_warning(caplog, StateFile(str(tmp_path / "none.json")))


def test_deeply_nested_state_is_a_fresh_start(tmp_path, caplog):
    path = tmp_path / "state.json"
    path.write_bytes(b"[" * 100_000 + b"]" * 100_000)
    assert "corrupt" in _one_warning(caplog, StateFile(str(path)))


def test_fifo_device_and_folder_are_a_fresh_start_without_blocking(tmp_path, caplog):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # no writer: a blocking open would hang forever
    for path in (str(fifo), "/dev/zero", str(tmp_path)):
        caplog.clear()
        assert "not a regular file" in _one_warning(caplog, StateFile(path))


def test_state_over_the_size_cap_is_not_read(tmp_path, caplog):
    path = tmp_path / "state.json"
    with open(path, "wb") as fh:  # sparse: 64 MiB + 1 byte without writing them
        fh.truncate(67108865)  # the README's number, not the code's constant
    assert "larger than" in _one_warning(caplog, StateFile(str(path)))
    small = StateFile(str(path), max_bytes=10)
    path.write_bytes(b'{"version":1}')
    caplog.clear()
    assert "larger than" in _one_warning(caplog, small)


def test_lock_is_exclusive_and_released(tmp_path):
    path = str(tmp_path / "state.json")
    first = StateFile(path)
    first.acquire()
    with pytest.raises(StateLockedError, match="state.json"):
        StateFile(path).acquire()
    first.release()
    StateFile(path).acquire()


def test_check_state_path(tmp_path):
    assert check_state_path(str(tmp_path / "state.json")) is None
    assert "does not exist" in check_state_path(str(tmp_path / "gone" / "state.json"))
    (tmp_path / "file").write_text("x")
    assert "not a folder" in check_state_path(str(tmp_path / "file" / "state.json"))
    assert "is a folder" in check_state_path(str(tmp_path))


@pytest.mark.parametrize(
    ("number", "ok"),
    [
        ("9223372036854775807", True),
        ("9223372036854775808", False),
        ("1" * 400, False),
        ("1e400", False),
        ("-9223372036854775808", False),
        ("true", False),
    ],
)
def test_state_numbers_are_bounded(tmp_path, caplog, number, ok):
    path = tmp_path / "state.json"
    for where in ("bytes_total", "baseline"):
        total = number if where == "bytes_total" else "0"
        base = number if where == "baseline" else "0"
        path.write_text(
            f'{{"version":1,"day":"d","apps":{{"a":{{"bytes_total":{total},'
            f'"requests_total":0,"baselines":{{"d":[{base},0]}}}}}}}}'
        )
        caplog.clear()
        if ok:
            loaded = StateFile(str(path)).load(legacy_account="p")[1]
            assert loaded[AppKey("p", "a")].bytes_total == int(total)
        else:
            assert "corrupt" in _one_warning(caplog, StateFile(str(path)))
