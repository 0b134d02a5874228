"""The usage.vse client: request building, parsing, pagination, errors and retries.

Real HTTP on loopback against the simulator; nothing of our network stack is mocked.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import socket
import time
from datetime import date

import pytest
from helpers import FAULT_OUTCOMES, FAULT_SUCCEEDS, wait_for
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.phpjson import php_json_encode
from exporter.scaleengine import (
    ApiError,
    Page,
    ScaleEngineClient,
    UsageResult,
    build_request,
    parse_page,
)
from exporter.simulator import FAULT_MODES, Simulator

DOC_EXAMPLE = b"""{
"status": "success",
"usage": [
    {"video_url": "sestore\\/jb\\/my_video.mp4", "bytes_total": "5106077", "requests_total": "0"},
    {"video_url": "sestore\\/jb\\/my_video.mp4", "bytes_total": "2875558", "requests_total": "0"}
    ],
"count": 2,
"message": "Found Video Usage",
"handle_time": "0.2191 seconds"
}"""


def make_client(sim: Simulator, **kw) -> ScaleEngineClient:
    kw.setdefault("timeout", 0.5)
    kw.setdefault("backoff_base", 0.01)
    kw.setdefault("backoff_max", 0.02)
    kw.setdefault("clock", sim.clock.now)
    return ScaleEngineClient(sim.url, sim.cdn_id, sim.api_key, sim.api_secret, **kw)


def today(sim: Simulator) -> date:
    return sim.today()


# -- build_request ---------------------------------------------------------------------------


def test_build_request_key_order():
    r = build_request("K", 158, "demo-origin", None, 2025, 1, 20, 1000, 0, 1737331200.9)
    assert list(r) == [
        "command", "api_key", "timestamp", "cdn", "app", "year", "month", "day", "limit", "offset",
    ]  # fmt: skip
    assert r["command"] == "usage.vse" and r["timestamp"] == 1737331200 and r["cdn"] == 158
    r = build_request("K", 158, "a", ["x/y", "z"], 2025, 1, None, 10, 20, 1)
    assert list(r) == [
        "command", "api_key", "timestamp", "cdn", "app", "url", "year", "month", "limit", "offset",
    ]  # fmt: skip
    assert r["url"] == ["x/y", "z"]
    with pytest.raises(ValueError):
        build_request("K", 1, "a", [], 2025, 1, None, 10, 0, 1)


# -- parse_page ------------------------------------------------------------------------------


def test_parse_doc_example():
    page = parse_page(DOC_EXAMPLE)
    assert isinstance(page, Page)
    assert page.rows == [
        ("sestore/jb/my_video.mp4", 5106077, 0),
        ("sestore/jb/my_video.mp4", 2875558, 0),
    ]
    assert page.count == 2 and page.skipped == 0
    assert page.handle_time == pytest.approx(0.2191)
    assert page.message == "Found Video Usage"


def _page(rows, count=None, **extra) -> bytes:
    obj = {"status": "success", "usage": rows, "count": len(rows) if count is None else count}
    obj.update(extra)
    return json.dumps(obj).encode()


def test_parse_plain_ints_and_limits():
    rows = [
        {"video_url": "a", "bytes_total": 5, "requests_total": 0},
        {"video_url": "b", "bytes_total": "9007199254740992", "requests_total": "007"},
        {"video_url": "c", "bytes_total": 9007199254740992, "requests_total": 1},
        {"video_url": "d", "bytes_total": "999999999999999", "requests_total": "9007199254740992"},
    ]
    page = parse_page(_page(rows))
    assert page.rows == [
        ("a", 5, 0),
        ("b", 9007199254740992, 7),
        ("c", 9007199254740992, 1),
        ("d", 999999999999999, 9007199254740992),
    ]
    assert page.skipped == 0


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ('"2000.0"', 2000),
        ('"2000.00"', 2000),
        ("2000.0", 2000),
        ('"2e3"', 2000),
        ('"2.5E3"', 2500),
        ("2.5e3", 2500),
        ('"2000e-3"', 2),
        ('"9007199254740992.0"', 9007199254740992),
        ("9007199254740992.000", 9007199254740992),
        ('"0.0"', 0),
    ],
)
def test_integral_numbers_written_as_decimals_are_accepted(raw, expected):
    """A whole number written with a fraction of zeros or an exponent, in a string or as a
    JSON number, is a usable count (bytes and requests alike)."""
    body = (
        '{"status":"success","count":1,"usage":[{"video_url":"v",'
        f'"bytes_total":{raw},"requests_total":{raw}}}]}}'
    ).encode()
    page = parse_page(body)
    assert page.rows == [("v", expected, expected)] and page.skipped == 0


@pytest.mark.parametrize(
    "raw",
    [
        '"9007199254740993"',  # 2**53 + 1: a float64 cannot hold it
        "9007199254740993",
        '"9007199254740993.0"',
        "9007199254740993.0",  # read exactly, not rounded to 2**53 on the way
        '"9007199254740993e0"',
        '"2000.5"',
        "2000.5",
        '"2000."',
        '".5"',
        '"1e-3"',
        '"1e400"',
        "1e400",
        '"-2000.0"',
        "-2000.0",
        '" 2000.0"',
        '"2000.0 "',
        '"0x10"',
        '"NaN"',
        "NaN",
        "Infinity",
    ],
)
def test_numbers_a_float64_cannot_hold_or_not_whole_are_skipped(raw):
    rows = (
        '{"video_url":"v","bytes_total":"1","requests_total":"1"},'
        f'{{"video_url":"x","bytes_total":{raw},"requests_total":"1"}},'
        f'{{"video_url":"y","bytes_total":"1","requests_total":{raw}}}'
    )
    page = parse_page(f'{{"status":"success","count":3,"usage":[{rows}]}}'.encode())
    assert page.rows == [("v", 1, 1)] and page.skipped == 2


@pytest.mark.parametrize(
    "bad",
    [
        {"bytes_total": "-1"},
        {"bytes_total": -1},
        {"bytes_total": "1.5"},
        {"bytes_total": 1.5},
        {"bytes_total": "12abc"},
        {"bytes_total": ""},
        {"bytes_total": " 12"},
        {"bytes_total": "+12"},
        {"bytes_total": "1_000"},
        {"bytes_total": "١٢٣"},  # Arabic-Indic digits: not ASCII
        {"bytes_total": True},
        {"requests_total": False},
        {"bytes_total": str(2**63)},
        {"bytes_total": 2**63},
        {"bytes_total": str(2**64)},
        {"bytes_total": None},
        {"bytes_total": [1]},
        {"requests_total": "x"},
        {"video_url": 5},
        {"video_url": None},
        "missing_bytes",
        "not_a_dict",
    ],
    ids=repr,
)
def test_bad_rows_skipped_rest_kept(bad):
    good = {"video_url": "v/1", "bytes_total": "10", "requests_total": "2"}
    if bad == "missing_bytes":
        row = {"video_url": "v/x", "requests_total": "1"}
    elif bad == "not_a_dict":
        row = ["v/x", "1", "1"]
    else:
        row = {"video_url": "v/x", "bytes_total": "1", "requests_total": "1", **bad}
    page = parse_page(_page([good, row, good]))
    assert page.rows == [("v/1", 10, 2), ("v/1", 10, 2)]
    assert page.skipped == 1
    assert page.count == 3


@pytest.mark.parametrize(
    "body",
    [
        {"usage": [], "count": 0},  # no status
        {"status": "ok", "usage": [], "count": 0},
        {"status": None, "usage": [], "count": 0},
        {"status": "success", "usage": {"1": {}}, "count": 1},
        {"status": "success", "usage": "none", "count": 1},
        {"status": "success", "usage": None, "count": 3},
        {"status": "success", "usage": [], "count": "x"},
        {"status": "success", "usage": [], "count": -1},
        {"status": "success", "usage": [], "count": 1.0},
        {"status": "success", "usage": [], "count": True},
        {"status": "success", "usage": [{"video_url": "a", "bytes_total": "1"}]},  # no count
    ],
    ids=repr,
)
def test_bad_response(body):
    with pytest.raises(ApiError) as ei:
        parse_page(json.dumps(body).encode())
    assert ei.value.outcome == "bad_response"
    assert ei.value.retryable is False


def test_tolerated_shapes():
    assert parse_page(b'{"status":"success","usage":null,"count":0}').rows == []
    assert parse_page(b'{"status":"success","usage":[],"count":"0"}').count == 0


@pytest.mark.parametrize(
    "body", [b"", b"<html>500</html>", b"\xff\xfe", b"[]", b'"x"', b"1", b"null", b"{"]
)
def test_invalid_json(body):
    with pytest.raises(ApiError) as ei:
        parse_page(body)
    assert ei.value.outcome == "invalid_json"
    assert not ei.value.retryable


@pytest.mark.parametrize(
    ("code", "retryable"),
    [("0000", False), ("0001", False), ("0002", False), ("0003", False), ("0004", True),
     ("0005", False), ("0006", False), ("1000", False), ("4242", False)],
)  # fmt: skip
def test_failure_codes(code, retryable):
    body = json.dumps({"status": "failure", "code": code, "message": "boom"}).encode()
    with pytest.raises(ApiError) as ei:
        parse_page(body)
    err = ei.value
    expected = "api_other" if code == "4242" else f"api_{code}"
    assert err.outcome == expected and err.code == code and err.retryable is retryable
    assert err.busy is (code == "1000")
    assert code in str(err) and "boom" in str(err)


def test_failure_without_code():
    with pytest.raises(ApiError) as ei:
        parse_page(b'{"status":"failure","message":"nope"}')
    assert ei.value.outcome == "api_other" and ei.value.code is None
    with pytest.raises(ApiError) as ei:
        parse_page(b'{"status":"failure","code":{"x":1}}')
    assert ei.value.outcome == "api_other"


def test_failure_messages_say_what_to_check():
    def msg(code):
        with pytest.raises(ApiError) as ei:
            parse_page(json.dumps({"status": "failure", "code": code, "message": "m"}).encode())
        return str(ei.value)

    assert "cdn_id" in msg("0001") and "api_key" in msg("0001")
    assert "api_secret" in msg("0003")
    assert "clock" in msg("0002") and "UTC" in msg("0002")


@pytest.mark.parametrize(
    ("value", "expected"),
    [("0.2191 seconds", 0.2191), ("3 seconds", 3.0), (".5s", 0.5), (0.25, 0.25), (1, 1.0),
     ("", None), ("fast", None), (None, None), (True, None), ("-1 seconds", None), ([], None)],
)  # fmt: skip
def test_handle_time(value, expected):
    page = parse_page(_page([], handle_time=value))
    assert page.handle_time == (pytest.approx(expected) if expected is not None else None)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_parse_page_arbitrary_bytes_raise_only_apierror(body):
    try:
        page = parse_page(body)
    except ApiError:
        return
    assert isinstance(page, Page)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=10), c, max_size=4),
    max_leaves=15,
)
_row = st.fixed_dictionaries(
    {},
    optional={
        "video_url": st.one_of(st.text(max_size=10), _json),
        "bytes_total": st.one_of(st.integers(), st.from_regex(r"\A-?[0-9]{0,21}\Z"), _json),
        "requests_total": st.one_of(st.integers(), st.text(max_size=5), _json),
    },
)
_pages = st.fixed_dictionaries(
    {},
    optional={
        "status": st.one_of(st.sampled_from(["success", "failure"]), _json),
        "usage": st.one_of(st.lists(st.one_of(_row, _json), max_size=6), _json),
        "count": st.one_of(st.integers(), _json),
        "code": _json,
        "message": _json,
        "handle_time": _json,
    },
)


@settings(max_examples=500, deadline=None)
@given(st.one_of(_json, _pages))
def test_parse_page_arbitrary_json_raise_only_apierror(value):
    try:
        body = json.dumps(value).encode()
    except ValueError:
        return
    try:
        page = parse_page(body)
    except ApiError as err:
        assert isinstance(err.outcome, str) and isinstance(err.retryable, bool)
        return
    for url, b, r in page.rows:
        assert type(url) is str and type(b) is int and type(r) is int
        assert 0 <= b < 2**63 and 0 <= r < 2**63
    assert len(page.rows) + page.skipped == len(value.get("usage") or [])


def test_parse_a_full_page():
    rows = [
        {"video_url": f"sestore/bench/clip-{i:05d}.mp4", "bytes_total": str(i * 7919 + 123456789),
         "requests_total": str(i)}
        for i in range(1000)
    ]  # fmt: skip
    body = php_json_encode(
        {"status": "success", "usage": rows, "count": 100_000, "message": "Found Video Usage",
         "handle_time": "0.2191 seconds"}
    ).encode()  # fmt: skip
    # speed is measured in bench/, not asserted here; this checks the big page parses whole
    page = parse_page(body)
    assert len(page.rows) == 1000 and page.count == 100_000
    assert page.rows[999] == ("sestore/bench/clip-00999.mp4", 999 * 7919 + 123456789, 999)


# -- the client against the simulator --------------------------------------------------------


def test_fetch_day_paginated_exact(simulator):
    outcomes = []
    with make_client(simulator, page_size=7, on_request=outcomes.append) as client:
        day = today(simulator)
        res = client.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert isinstance(res, UsageResult)
    expected = simulator.reported_videos("demo-origin", day.year, day.month, day.day)
    assert res.videos == expected
    total = (sum(v[0] for v in res.videos.values()), sum(v[1] for v in res.videos.values()))
    assert total == simulator.reported("demo-origin", day)
    assert res.count == res.rows and res.skipped == 0
    # each page after the first starts on the previous page's last row (the overlap check)
    assert res.pages == 1 + -(-(res.count - 7) // 6)
    # a second read when a video's repeated rows straddle a page boundary
    assert set(outcomes) == {"success"} and len(outcomes) == res.pages * res.reads
    offsets = [e["offset"] for e in simulator.request_log]
    # every row fetched once per read, plus the one overlapping row a page
    assert offsets == [0, *range(6, res.count - 1, 6)] * res.reads


def test_full_day_equals_delivered(simulator, sim_clock):
    day = today(simulator)
    yesterday = date.fromordinal(day.toordinal() - 1)
    with make_client(simulator, page_size=10) as client:
        res = client.fetch_usage(
            "vod-library", None, yesterday.year, yesterday.month, yesterday.day
        )
    total = (sum(v[0] for v in res.videos.values()), sum(v[1] for v in res.videos.values()))
    assert total == simulator.delivered("vod-library", yesterday)


def test_duplicates_summed(simulator):
    day = today(simulator)
    # the simulator splits some videos into two rows; the client must sum them
    raw = simulator._rows("vod-library", day.year, day.month, day.day)
    names = [r[0] for r in raw]
    dups = {n for n in names if names.count(n) > 1}
    assert dups, "simulator should produce duplicate rows"
    with make_client(simulator, page_size=1000) as client:
        res = client.fetch_usage("vod-library", None, day.year, day.month, day.day)
    for n in dups:
        assert res.videos[n] == (
            sum(r[1] for r in raw if r[0] == n),
            sum(r[2] for r in raw if r[0] == n),
        )
    assert res.rows == len(raw) and len(res.videos) == len(set(names))


def test_month_request(simulator):
    day = today(simulator)
    with make_client(simulator, page_size=25) as client:
        res = client.fetch_usage("live-events", None, day.year, day.month, None)
    assert res.videos == simulator.reported_videos("live-events", day.year, day.month, None)
    assert simulator.request_log[0]["day"] is None


def test_url_filter_and_unicode(simulator):
    day = today(simulator)
    wanted = [v for v in simulator.videos("demo-origin") if not v.isascii()]
    assert any(ord(c) > 0xFFFF for v in wanted for c in v)
    with make_client(simulator) as client:
        res = client.fetch_usage("demo-origin", wanted, day.year, day.month, day.day)
    assert set(res.videos) <= set(wanted)
    expected = {
        k: v
        for k, v in simulator.reported_videos("demo-origin", day.year, day.month, day.day).items()
        if k in wanted
    }
    assert res.videos == expected


def test_server_page_cap_below_limit(sim_clock):
    with Simulator(clock=sim_clock, max_page_size=4) as sim:
        day = sim.today()
        with make_client(sim, page_size=1000) as client:
            res = client.fetch_usage("vod-library", None, day.year, day.month, day.day)
        assert res.videos == sim.reported_videos("vod-library", day.year, day.month, day.day)
        assert res.pages == 1 + -(-(res.count - 4) // 3)  # 4 rows a page, 1 of them overlap


def test_empty_result(simulator):
    future = date.fromordinal(today(simulator).toordinal() + 40)
    with make_client(simulator) as client:
        res = client.fetch_usage("demo-origin", None, future.year, future.month, future.day)
        assert res.videos == {} and res.count == 0 and res.pages == 1
        res = client.fetch_usage("no-such-app", None, future.year, future.month, None)
        assert res.videos == {}


def test_fault_table_covers_all_modes():
    from exporter.simulator import LABEL_FAULTS, ROW_FAULTS

    assert set(FAULT_OUTCOMES) | ROW_FAULTS | LABEL_FAULTS | FAULT_SUCCEEDS == FAULT_MODES


@pytest.mark.parametrize("mode", sorted(FAULT_OUTCOMES))
def test_fault_modes(simulator, mode):
    outcome, retryable = FAULT_OUTCOMES[mode]
    simulator.set_fault("demo-origin", mode)
    seen = []
    day = today(simulator)
    # reading 64 MiB on a busy machine may take longer than 0.3 s; the timeout modes wait out
    # 0.3 s (the simulator's fault_delay is 1 s); the others get an answer at once, which on
    # a busy machine (tests run beside each other) may still take longer than 0.3 s: a
    # timeout there would be retried and the request count not tell the mode's own outcome
    timeout = {"too_large": 20.0, "timeout": 0.3}.get(outcome, 5.0)
    with make_client(
        simulator, page_size=10, retries=2, timeout=timeout, on_request=seen.append
    ) as c:
        with pytest.raises(ApiError) as ei:
            c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
        err = ei.value
        assert err.outcome == outcome and err.retryable is retryable
        n = simulator.requests_for("demo-origin")
        if retryable:
            # under load a request the client gave up on at 0.3 s may reach the simulator's
            # log later: wait for it (a fourth would still fail the equality)
            wait_for(lambda: simulator.requests_for("demo-origin") >= 3, 10, "three requests")
            time.sleep(0.2)
            n = simulator.requests_for("demo-origin")
            assert n == 3 and seen == [outcome] * 3
        elif outcome == "pagination":
            assert n >= 2 and set(seen) == {"success"}
        else:
            assert n == 1 and seen == [outcome]
        # other apps are not affected
        assert c.fetch_usage("live-events", None, day.year, day.month, day.day).count > 0


@pytest.mark.parametrize(
    "mode", ["reset", "timeout", "http_503", "failure_0004", "drip", "long_reason", "http_500_json"]
)
def test_transient_faults_retried_then_succeed(simulator, mode):
    simulator.set_fault(None, mode, times=2)
    seen = []
    day = today(simulator)
    with make_client(simulator, retries=3, timeout=0.3, on_request=seen.append) as c:
        res = c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert res.videos == simulator.reported_videos("demo-origin", day.year, day.month, day.day)
    assert seen[2:] == ["success"] and len(seen) == 3 and seen[0] != "success"
    assert simulator.requests_for("demo-origin") == 3


@pytest.mark.parametrize("code", ["0000", "0001", "0002", "0003", "0005", "0006"])
def test_non_retryable_codes_one_request(simulator, code):
    simulator.set_fault(None, f"failure_{code}", times=5)
    day = today(simulator)
    with make_client(simulator, retries=3) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert ei.value.outcome == f"api_{code}" and ei.value.code == code
    assert simulator.requests_for("demo-origin") == 1


@pytest.mark.parametrize(
    "mode",
    ["missing_fields", "negative_bytes", "fractional_bytes", "non_numeric_bytes", "huge_bytes",
     "bool_bytes", "long_digits"],
)  # fmt: skip
def test_bad_rows_skipped_in_fetch(simulator, mode):
    simulator.set_fault("vod-library", mode)
    day = today(simulator)
    with make_client(simulator, page_size=10) as c:
        res = c.fetch_usage("vod-library", None, day.year, day.month, day.day)
    assert res.videos == simulator.reported_videos("vod-library", day.year, day.month, day.day)
    assert res.skipped >= res.pages - 1  # about one bad row per page
    assert res.rows + res.skipped == res.count


def test_max_pages(simulator):
    day = today(simulator)
    with make_client(simulator, page_size=3, max_pages=2) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert ei.value.outcome == "pagination" and "max_pages" in str(ei.value)
    assert simulator.requests_for("demo-origin") == 2


def test_connection_refused():
    # bound but not listening: connects are refused, and no neighbour (pytest-xdist) can take
    # the port while the test runs
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        seen = []
        client = ScaleEngineClient(
            f"http://127.0.0.1:{port}/stable/", 1, "k" * 32, "s" * 64, timeout=0.5, retries=1,
            backoff_base=0.01, on_request=seen.append,
        )  # fmt: skip
        with client, pytest.raises(ApiError) as ei:
            client.fetch_usage("a", None, 2025, 1, 1)
    assert ei.value.outcome == "connection" and ei.value.retryable
    assert seen == ["connection", "connection"]


def test_clock_skew_gives_0002_with_local_time(simulator, sim_clock):
    skewed = lambda: sim_clock.now() - 3600  # noqa: E731
    day = today(simulator)
    with make_client(simulator, clock=skewed) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert ei.value.outcome == "api_0002" and not ei.value.retryable
    assert "clock" in str(ei.value)
    assert time.strftime("%Y-%m-%dT%H", time.gmtime(skewed())) in str(ei.value)


@pytest.mark.parametrize(
    ("kw", "outcome"),
    [({"api_secret": "wrong-secret-" + "x" * 51}, "api_0003"),
     ({"api_key": "WRONGKEY" * 4}, "api_0001"),
     ({"cdn_id": 1}, "api_0001")],
)  # fmt: skip
def test_secrets_never_in_errors(simulator, kw, outcome):
    args = {"cdn_id": simulator.cdn_id, "api_key": simulator.api_key,
            "api_secret": simulator.api_secret} | kw  # fmt: skip
    client = ScaleEngineClient(simulator.url, clock=simulator.clock.now, timeout=0.5, **args)
    day = today(simulator)
    with client, pytest.raises(ApiError) as ei:
        client.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    err = ei.value
    assert err.outcome == outcome
    text = str(err) + repr(err) + repr(err.args) + repr(client)
    for secret in (args["api_key"], args["api_secret"], simulator.api_secret):
        assert secret not in text
    assert "signature" not in text.lower() or "signature failed" in text.lower()
    assert '"command"' not in text


def test_server_echo_of_secret_is_scrubbed(sim_clock):
    # even if the server put our key or secret in its message, it would not reach the error
    sim = Simulator(clock=sim_clock)
    original = sim._failure
    sim._failure = lambda code, detail: original(code, f"{sim.api_key} {sim.api_secret}")
    with sim, make_client(sim) as c:
        sim.set_fault(None, "failure_0005")
        with pytest.raises(ApiError) as ei:
            c.fetch_usage("demo-origin", None, 2025, 1, 1)
    assert sim.api_key not in str(ei.value) and sim.api_secret not in str(ei.value)
    assert "***" in str(ei.value)


def test_user_agent_and_session_reuse(simulator):
    from exporter import __version__

    client = make_client(simulator)
    assert client.session.headers["User-Agent"] == f"scaleengine-exporter/{__version__}"
    assert client.session.verify is True
    client.close()
    c2 = make_client(simulator, user_agent="custom/1")
    assert c2.session.headers["User-Agent"] == "custom/1"
    c2.close()


def test_timestamp_from_clock(simulator, sim_clock):
    sim_clock.advance(100)
    day = today(simulator)
    with make_client(simulator) as c:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert simulator.request_log[-1]["request_timestamp"] == int(sim_clock.now())


def test_static_rows_pages_cached(sim_clock):
    rows = [(f"sestore/bench/v{i}.mp4", i * 1000, i) for i in range(2500)]
    with Simulator(clock=sim_clock, static_rows={"bench": rows}) as sim:
        with make_client(sim, page_size=1000) as c:
            a = c.fetch_usage("bench", None, 2025, 1, 20)
            b = c.fetch_usage("bench", None, 2025, 1, 20)
        assert a.videos == b.videos == {r[0]: (r[1], r[2]) for r in rows}
        assert a.pages == 3 and len(sim._page_cache) == 3


# -- a hostile or odd upstream (issue 8) -----------------------------------------------------


@pytest.mark.parametrize("mode", ["drip", "drip_headers"])
def test_timeout_bounds_the_whole_request(simulator, mode):
    # one byte a second: every single read is quick, the whole answer would take minutes
    simulator.drip_interval = 0.2
    simulator.set_fault("demo-origin", mode)
    day = today(simulator)
    started = time.monotonic()
    with make_client(simulator, timeout=1.0, retries=0) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert ei.value.outcome == "timeout" and ei.value.retryable
    assert "whole request" in str(ei.value)
    assert time.monotonic() - started < 15  # generous; unbounded it takes minutes


def test_the_session_recovers_after_a_deadline(simulator):
    simulator.drip_interval = 0.2
    simulator.set_fault("demo-origin", "drip", times=1)
    day = today(simulator)
    with make_client(simulator, timeout=1.0, retries=1) as c:
        res = c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
        again = c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    expected = simulator.reported_videos("demo-origin", day.year, day.month, day.day)
    assert res.videos == again.videos == expected


def test_max_response_bytes_counts_after_decompression(simulator):
    simulator.gzip_answers = True
    day = today(simulator)
    expected = simulator.reported_videos("vod-library", day.year, day.month, day.day)
    with make_client(simulator, page_size=1000) as c:
        assert c.fetch_usage("vod-library", None, day.year, day.month, day.day).videos == expected
    plain = len(simulator.answer(simulator_request(simulator, "vod-library", day))[2])
    assert plain > 4096
    # the gzip answer is much smaller than the cap, the inflated one is not
    seen = []
    with make_client(
        simulator, page_size=1000, max_response_bytes=plain - 1, on_request=seen.append
    ) as c:
        with pytest.raises(ApiError) as ei:
            c.fetch_usage("vod-library", None, day.year, day.month, day.day)
    assert ei.value.outcome == "too_large" and not ei.value.retryable
    assert seen == ["too_large"]  # not retried
    with make_client(simulator, page_size=1000, max_response_bytes=plain) as c:
        assert c.fetch_usage("vod-library", None, day.year, day.month, day.day).videos == expected


def simulator_request(sim: Simulator, app: str, day: date) -> str:
    from exporter.scaleengine import encode_body

    req = build_request(
        sim.api_key, sim.cdn_id, app, None, day.year, day.month, day.day, 1000, 0, sim.clock.now()
    )
    return encode_body(req, sim.api_secret)


@pytest.mark.parametrize("mode", ["shift_first", "shift_later"])
def test_pages_that_move_once_are_read_again_exactly(simulator, mode):
    # 60 videos, 7 rows a page: the last video jumps to the top after the first (second) page
    simulator.set_fault("vod-library", mode, times=1)
    day = today(simulator)
    with make_client(simulator, page_size=7) as c:
        res = c.fetch_usage("vod-library", None, day.year, day.month, day.day)
    expected = simulator.reported_videos("vod-library", day.year, day.month, day.day)
    assert res.videos == expected  # exact: nothing twice, nothing missing
    # moved once: exactly one read more than the same fetch needs when nothing moves (that is
    # 1, or 2 when a video's repeated rows straddle a page boundary and are read again)
    with make_client(simulator, page_size=7) as c:
        still = c.fetch_usage("vod-library", None, day.year, day.month, day.day)
    assert still.videos == expected
    assert res.reads == still.reads + 1, (res.reads, still.reads)


@pytest.mark.parametrize("mode", ["shift_first", "shift_later"])
def test_pages_that_never_settle_fail_with_pagination(simulator, mode):
    simulator.set_fault("vod-library", mode)
    day = today(simulator)
    with make_client(simulator, page_size=7) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("vod-library", None, day.year, day.month, day.day)
    assert ei.value.outcome == "pagination" and "3 full reads" in str(ei.value)
    starts = [e for e in simulator.request_log if e["offset"] == 0]
    assert len(starts) == 3


def test_repeated_rows_of_one_video_across_pages_are_summed():
    # the API's own example: one video in two rows, here on two different pages; stable
    rows = [("a", 50, 1), ("x", 40, 2), ("b", 30, 3), ("x", 20, 4), ("c", 10, 5)]
    with Simulator(static_rows={"app": rows}) as sim, make_client(sim, page_size=2) as c:
        res = c.fetch_usage("app", None, 2025, 1, 20)
    assert res.videos == {"a": (50, 1), "x": (60, 6), "b": (30, 3), "c": (10, 5)}
    assert res.reads == 2  # read twice to be sure, then accepted


@pytest.mark.parametrize(
    "body",
    [
        b'{"status":"success","usage":[]}',
        b'{"status":"success","usage":[],"count":"0"}',
        b'{"status":"success","usage":null}',
        b'{"status":"success","usage":null,"count":0,"message":"No Video Usage Found"}',
        b'{"status":"failure","message":"No Video Usage Found"}',
        b'{"status":"failure","code":"","message":"no usage found."}',
    ],
)
def test_empty_day_shapes(body):
    page = parse_page(body)
    assert page.rows == [] and page.count == 0 and page.skipped == 0


def test_failure_without_code_other_than_no_usage_is_not_empty():
    with pytest.raises(ApiError) as ei:
        parse_page(b'{"status":"failure","message":"No Video Usage Found; database down"}')
    assert ei.value.outcome == "api_other"


@pytest.mark.parametrize("mode", ["empty_no_count", "empty_count_string", "empty_usage_null",
                                  "failure_no_usage"])  # fmt: skip
def test_empty_days_over_http(simulator, mode):
    simulator.set_fault("demo-origin", mode)
    day = today(simulator)
    with make_client(simulator) as c:
        res = c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert res.videos == {} and res.count == 0


def test_busy_is_not_retried_within_the_fetch(simulator):
    simulator.set_fault("demo-origin", "failure_1000")
    day = today(simulator)
    with make_client(simulator, retries=3) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    assert ei.value.outcome == "api_1000" and ei.value.busy and not ei.value.retryable
    assert simulator.requests_for("demo-origin") == 1


def test_429_with_retry_after_is_busy(simulator):
    simulator.retry_after = 321
    simulator.set_fault("demo-origin", "http_429")
    day = today(simulator)
    with make_client(simulator, retries=3) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    err = ei.value
    assert err.outcome == "http_status" and err.busy and err.retry_after == 321
    assert simulator.requests_for("demo-origin") == 1


def test_non_2xx_json_failure_keeps_code_and_message(simulator):
    simulator.set_fault("demo-origin", "http_500_json")
    day = today(simulator)
    with make_client(simulator, retries=0) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    err = ei.value
    assert err.outcome == "api_0004" and err.code == "0004" and err.retryable
    assert "HTTP 500" in str(err) and "database gone" in str(err)


def test_partial_rows_keep_their_bytes(simulator):
    simulator.set_fault("demo-origin", "partial_rows")
    day = today(simulator)
    with make_client(simulator, page_size=10) as c:
        res = c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    expected = simulator.reported_videos("demo-origin", day.year, day.month, day.day)
    assert {u: b for u, (b, _) in res.videos.items()} == {u: b for u, (b, _) in expected.items()}
    assert all(r == 0 for _, r in res.videos.values())
    assert res.incomplete == res.rows == res.count and res.skipped == 0


def test_thousands_of_digits_skip_the_row_not_the_page():
    big = b"9" * 5000
    body = (
        b'{"status":"success","count":3,"usage":[{"video_url":"a","bytes_total":"5",'
        b'"requests_total":"1"},{"video_url":"b","bytes_total":' + big + b',"requests_total":'
        b'"1"},{"video_url":"c","bytes_total":"7","requests_total":' + big + b"}]}"
    )
    page = parse_page(body)
    assert page.rows == [("a", 5, 1)] and page.skipped == 2


@pytest.mark.parametrize("mode", ["long_reason", "failure_long_message"])
def test_server_text_is_cut_and_cleaned(simulator, mode):
    simulator.set_fault("demo-origin", mode)
    day = today(simulator)
    with make_client(simulator, retries=0) as c, pytest.raises(ApiError) as ei:
        c.fetch_usage("demo-origin", None, day.year, day.month, day.day)
    text = str(ei.value)
    assert len(text) < 600
    assert all(ch.isprintable() for ch in text), repr(text)
    assert "\u202e" not in text


@pytest.mark.parametrize(
    ("url", "warned"),
    [("http://api.example.net/stable/", True), ("https://api.scaleengine.net/stable/", False),
     ("http://127.0.0.1:8099/stable/", False), ("http://localhost/stable/", False),
     ("http://[::1]:80/stable/", False), ("http://10.0.0.5/stable/", True)],
)  # fmt: skip
def test_cleartext_api_url_warns(url, warned, caplog):
    from exporter.scaleengine import warn_if_cleartext

    with caplog.at_level("WARNING", logger="exporter.scaleengine"):
        assert warn_if_cleartext(url) is warned
    assert bool(caplog.records) is warned


def test_retry_log_lines_name_the_app(simulator, caplog):
    simulator.set_fault("live-events", "http_503", times=1)
    day = today(simulator)
    with caplog.at_level(logging.INFO, logger="exporter.scaleengine"):
        with make_client(simulator, retries=2, timeout=0.3) as c:
            c.fetch_usage("live-events", None, day.year, day.month, day.day)
    retries = [r for r in caplog.records if "retrying" in r.getMessage()]
    assert retries and all(getattr(r, "app", None) == "live-events" for r in retries)


@pytest.mark.parametrize("key", ["k3y" + "0123456789abcdef" * 8, "k3y/" + "0123456789abcdef" * 8])
def test_an_echoed_key_cut_inside_is_scrubbed_before_the_cut(key):
    """The server's message quotes the request and is cut at 200 characters inside the key:
    scrubbed first, no part of the key is left (cut first, its first characters were). A key
    holding "/" is echoed as PHP escapes it ("\\/"), and scrubbed in that form too."""
    with Simulator() as sim:
        sim.echo_requests = True  # the wrong key: 0001, quoting the request
        client = ScaleEngineClient(sim.url, sim.cdn_id, key, sim.api_secret, retries=0)
        with client, pytest.raises(ApiError) as ei:
            client.fetch_usage("demo-origin", None, 2025, 1, 1)
    message = ei.value.message
    assert ei.value.outcome == "api_0001"
    assert '"api_key":"***' in message and "got signature ***;" in message
    assert message.endswith("...')")  # the cut did happen
    escaped = key.replace("/", "\\/")
    for form in (key, escaped):
        pieces = {form[i : i + 6] for i in range(len(form) - 5)}
        assert not [p for p in pieces if p in message], message


# -- what one fetch may hold (issue 15) --------------------------------------------------------


LONG_URLS = [
    "sestore/a/" + "x" * 5000 + ".mp4",
    "sestore/a/" + "x" * 5000 + ".mkv",  # the same first 1024 bytes: still two labels
    "sestore/a/" + "é" * 600,  # 1210 bytes of UTF-8 in 610 characters
    "sestore/a/" + "€" * 400 + "\ud800" + "x" * 10,  # a lone surrogate in a long one
    "sestore/a/" + "€" * 300 + "\udc00",  # 914 bytes: not cut (the label step fixes it)
    "s" * 1024,  # exactly the limit: not cut
    "s" * 1025,
    "short.mp4",
]


@pytest.mark.parametrize("url", LONG_URLS, ids=range(len(LONG_URLS)))
@pytest.mark.parametrize("limit", [1024, 64])
def test_cut_url_is_the_label_cut(url, limit):
    """cut_url is the one cut of a long URL: the client cuts each row with it as it reads and
    poller.label_value labels with it; a cut URL is not cut again, so both give one series."""
    from exporter.poller import label_value
    from exporter.scaleengine import cut_url

    cut = cut_url(url, limit)
    raw = url.encode("utf-8", "surrogatepass")
    clean = "".join("\ufffd" if 0xD800 <= ord(c) <= 0xDFFF else c for c in url)
    if len(raw) <= limit:
        assert cut is url
    else:  # the start of the URL on a character boundary, "~", 16 hex digits of its SHA-256
        suffix = "~" + hashlib.sha256(raw).hexdigest()[:16]
        assert cut.endswith(suffix)
        assert clean.startswith(cut[: -len(suffix)])
        assert len(cut.encode()) == limit if url.isascii() else limit - 3 <= len(cut.encode())
        assert len(cut.encode()) <= limit
    assert cut_url(cut, limit) is cut
    label = clean if cut is url else cut  # the label step only replaces lone surrogates
    assert label_value(url, limit) == label_value(cut, limit) == label


def test_long_urls_are_cut_as_rows_are_read_and_publish_the_same_series(sim_clock):
    """The rows of a fetch hold each video_url already cut to its label; folded into series,
    the result is the same as folding the URLs as sent."""
    from exporter.poller import fold_videos

    urls = [u for u in LONG_URLS if u.isprintable()]  # no lone surrogate: PHP cannot send it
    rows = [(url, 1000 + i, i) for i, url in enumerate(urls)]
    full = {url: (b, r) for url, b, r in rows}
    with Simulator(clock=sim_clock, static_rows={"long": rows}) as sim:
        for limit in (1024, 64):
            with make_client(sim, page_size=3, max_label_length=limit) as c:
                got = c.fetch_usage("long", None, 2025, 1, 20).videos
            assert max(len(u.encode("utf-8", "surrogatepass")) for u in got) <= limit
            assert len(got) == len(full)
            folded = fold_videos(got, 100, max_label_length=limit)
            assert folded == fold_videos(full, 100, max_label_length=limit)


@pytest.mark.parametrize(
    ("include", "exclude"),
    [(None, r"\.mp4$"), (r"\.mkv$|x$|^short", None), (r"^sestore/", r"€|\.mp4$"), (None, r"^s+$")],
)
def test_include_exclude_are_judged_on_the_url_as_sent_before_the_cut(sim_clock, include, exclude):
    """Filters given to the client judge each row's URL as sent, before it is cut: folded with
    that verdict, a fetch publishes the very series that folding the URLs as sent with the
    regexes gives, short URLs, a real video named __other__ and exact totals included."""
    from exporter.poller import fold_videos

    urls = [u for u in LONG_URLS if u.isprintable()] + ["__other__", "short.mkv"]
    rows = [(url, 1000 + i, i) for i, url in enumerate(urls)]
    full = {url: (b, r) for url, b, r in rows}
    inc = None if include is None else re.compile(include)
    exc = None if exclude is None else re.compile(exclude)
    with Simulator(clock=sim_clock, static_rows={"long": rows}) as sim:
        for limit in (1024, 64):
            kw = {"page_size": 3, "max_label_length": limit, "include": inc, "exclude": exc}
            with make_client(sim, **kw) as c:
                result = c.fetch_usage("long", None, 2025, 1, 20)
            for cap in (3, 100):  # the top-videos cap, and none
                want = fold_videos(full, cap, inc, exc, max_label_length=limit)
                assert len(want) > 1
                got = fold_videos(result.videos, cap, max_label_length=limit, folded=result.folded)
                assert got == want
            # the regexes applied again to the cut labels would not give it
            assert fold_videos(result.videos, 100, inc, exc, max_label_length=limit) != want


@pytest.mark.parametrize(
    ("limit", "pages"), [(1_068_000, None), (1_067_999, 4), (711_644, 3), (711_643, 2)]
)
def test_max_fetch_bytes_ends_the_fetch_as_too_large(sim_clock, limit, pages):
    """3000 distinct 100-character URLs in pages of 1000 (each page after the first starts on
    the previous one's last row: 1000, 1999, 2998 and 3000 videos after each of 4 pages); each
    video counts 100 + 256 bytes, the whole fetch 1,068,000, 711,644 after 2 pages. At a
    limit the fetch reaches it is read on; a byte under it, the page that crosses it fails the
    fetch, outcome too_large, not retried, no page more requested."""
    rows = [(f"sestore/v/{i:086d}.mp4", 1000 + i, 1) for i in range(3000)]
    assert {len(u) for u, _, _ in rows} == {100}
    seen: list[str] = []
    with Simulator(clock=sim_clock, static_rows={"big": rows}) as sim:
        with make_client(sim, page_size=1000, max_fetch_bytes=limit, on_request=seen.append) as c:
            if pages is None:
                assert len(c.fetch_usage("big", None, 2025, 1, 20).videos) == 3000
                return
            with pytest.raises(ApiError) as ei:
                c.fetch_usage("big", None, 2025, 1, 20)
    assert ei.value.outcome == "too_large" and not ei.value.retryable
    assert "max_fetch_bytes" in ei.value.message
    assert seen == ["success"] * pages


def test_an_http_reason_phrase_of_80_characters_is_kept_one_more_is_cut():
    """README: HTTP reason phrases are cut to 80 characters (API messages to 200)."""
    import threading

    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    reasons = iter(["R" * 77 + "END", "R" * 78 + "END"])  # 80 and 81 characters

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                reason = next(reasons)
                conn.sendall(f"HTTP/1.1 502 {reason}\r\nContent-Length: 0\r\n\r\n".encode())

    threading.Thread(target=serve, daemon=True).start()
    messages = []
    try:
        for _ in range(2):
            client = ScaleEngineClient(
                f"http://127.0.0.1:{port}/stable/", 1, "k" * 20, "s" * 40, timeout=5, retries=0
            )
            with client, pytest.raises(ApiError) as ei:
                client.fetch_usage("app", None, 2026, 1, 1)
            messages.append(str(ei.value))
    finally:
        listener.close()
    assert "R" * 77 + "END" in messages[0] and "..." not in messages[0], messages[0]
    assert "END" not in messages[1] and "R" * 78 + "EN..." in messages[1], messages[1]


# -- the package (issue 16) --------------------------------------------------------------------


def _client_package_imports() -> dict[str, tuple[set[str], set[str]]]:
    """Module -> (modules of exporter.scaleengine it imports, top-level packages it imports),
    what runs at import time only (``if TYPE_CHECKING:`` blocks left out)."""
    import ast
    from pathlib import Path

    import exporter.scaleengine

    out = {}
    for path in Path(exporter.scaleengine.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        body = [
            n
            for n in tree.body
            if not (isinstance(n, ast.If) and getattr(n.test, "id", "") == "TYPE_CHECKING")
        ]
        own: set[str] = set()
        packages: set[str] = set()
        for node in (n for top in body for n in ast.walk(top)):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                own.update([node.module] if node.module else [a.name for a in node.names])
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                packages.add(node.module.split(".")[0])
            elif isinstance(node, ast.Import):
                packages.update(a.name.split(".")[0] for a in node.names)
        out[path.stem] = (own, packages)
    return out


def test_client_package_has_no_import_circle_and_one_module_touches_http():
    imports = _client_package_imports()
    assert set(imports) >= {"protocol", "errors", "parsing", "transport", "client"}
    http = {m for m, (_, packages) in imports.items() if packages & {"requests", "urllib3"}}
    assert http == {"transport"}
    assert not imports["__init__"][0]  # its names load on first use (see the next test)
    done: set[str] = set()
    while len(done) < len(imports):  # peel off modules whose imports are all done
        ready = {m for m, (deps, _) in imports.items() if m not in done and deps <= done}
        assert ready, f"import circle among {sorted(set(imports) - done)}"
        done |= ready


def test_signing_alone_does_not_load_the_http_stack():
    """The package's names load on first use: what signs requests (the simulator's checks) and
    the serving process (cli imports the poller only in the poll worker) do not load requests,
    urllib3 or tenacity."""
    import subprocess
    import sys

    code = (
        "import sys, exporter.cli, exporter.config\n"
        "from exporter.scaleengine.protocol import sign\n"
        "from exporter.simulator import Simulator\n"
        "print(sorted(m for m in ('requests', 'urllib3', 'tenacity') if m in sys.modules))\n"
        "from exporter.scaleengine import ScaleEngineClient\n"
        "print('requests' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:2] == ["[]", "True"]


def test_a_404_names_the_setting_to_check():
    """A 404 is most likely a wrong api_url (e.g. without its trailing /stable/): the error
    says where the address is set; other statuses do not get the hint."""
    from exporter.scaleengine.parsing import http_failure

    def scrub(text: str) -> str:
        return text

    err = http_failure(404, "Not Found", None, b"<html>nope</html>", scrub)
    assert err.outcome == "http_status" and not err.retryable
    assert err.message == (
        "API answered HTTP 404 Not Found (check scaleengine.api_url: the API's address ends"
        " in /stable/ or /dev/)"
    )
    assert "api_url" not in http_failure(500, "Oops", None, b"", scrub).message
