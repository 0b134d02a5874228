"""The simulator: as strict as the real API, deterministic data, faults, observability."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from datetime import UTC, date, datetime

import pytest
import requests
from helpers import need_binary

from exporter.phpjson import php_json_encode
from exporter.scaleengine import build_request, encode_body, sign
from exporter.simulator import (
    DEMO_API_KEY,
    DEMO_API_SECRET,
    DEMO_APPS,
    DEMO_CDN_ID,
    SimClock,
    Simulator,
    day_fraction,
)


def good_request(sim: Simulator, **over) -> dict:
    day = sim.today()
    req = build_request(
        sim.api_key, sim.cdn_id, "demo-origin", None, day.year, day.month, day.day, 1000, 0,
        sim.clock.now(),
    )  # fmt: skip
    req.update(over)
    return req


def post(sim: Simulator, json_text: str, multipart: bool = False) -> dict:
    if multipart:
        resp = requests.post(sim.url, files={"json": (None, json_text)}, timeout=5)
    else:
        resp = requests.post(sim.url, data={"json": json_text}, timeout=5)
    assert resp.status_code == 200
    return resp.json()


def signed_text(req: dict, secret: str = DEMO_API_SECRET) -> str:
    return encode_body(req, secret)


def test_accepts_urlencoded_and_multipart(simulator):
    for multipart in (False, True):
        ans = post(simulator, signed_text(good_request(simulator)), multipart=multipart)
        assert ans["status"] == "success", ans
        assert ans["count"] == len(ans["usage"]) > 0


def test_accepts_curl_multipart_like_php_example(simulator):
    need_binary("curl", "curl")  # scripts/test.sh installs it
    text = signed_text(good_request(simulator))
    out = subprocess.run(
        ["curl", "-s", "-F", f"json={text}", simulator.url],
        capture_output=True, check=True, timeout=10,
    )  # fmt: skip
    assert json.loads(out.stdout)["status"] == "success"


def code_of(sim: Simulator, text: str) -> str | None:
    ans = post(sim, text)
    return ans.get("code") if ans["status"] == "failure" else None


def test_refuses_cdn_id(simulator):
    req = good_request(simulator)
    bad = {("cdn_id" if k == "cdn" else k): v for k, v in req.items()}
    ans = post(simulator, signed_text(bad))
    assert ans["code"] == "0006" and "cdn_id" in ans["message"]


def test_refuses_reordered_keys(simulator):
    req = good_request(simulator)
    items = list(req.items())
    items[1], items[2] = items[2], items[1]
    ans = post(simulator, signed_text(dict(items)))
    assert ans["code"] == "0006" and "order" in ans["message"]


def test_refuses_unescaped_slash(simulator):
    req = good_request(simulator, app="vod-library", url=["sestore/vod-library/clip-000.mp4"])
    req = {k: req[k] for k in ("command", "api_key", "timestamp", "cdn", "app", "url", "year",
                               "month", "day", "limit", "offset")}  # fmt: skip
    sig = sign(req, DEMO_API_SECRET)
    text = json.dumps({**req, "signature": sig}, separators=(",", ":"))  # "/" not escaped
    assert code_of(simulator, text) == "0003"
    assert code_of(simulator, php_json_encode({**req, "signature": sig})) is None
    # spaces (json.dumps default) are refused too
    assert code_of(simulator, json.dumps({**req, "signature": sig})) == "0003"


def test_refuses_signature_over_other_encoding(simulator):
    req = good_request(simulator, app="vod-library", url=["sestore/vod-library/café-ü.mp4"])
    req = {k: req[k] for k in ("command", "api_key", "timestamp", "cdn", "app", "url", "year",
                               "month", "day", "limit", "offset")}  # fmt: skip
    import base64
    import hashlib
    import hmac

    wrong_msg = json.dumps(req, separators=(",", ":"), ensure_ascii=False).encode()
    sig = base64.b64encode(hmac.new(DEMO_API_SECRET.encode(), wrong_msg, hashlib.sha256).digest())
    assert code_of(simulator, php_json_encode({**req, "signature": sig.decode()})) == "0003"


def test_refuses_wrong_secret_key_cdn_timestamp(simulator, sim_clock):
    assert code_of(simulator, signed_text(good_request(simulator), "nope")) == "0003"
    assert code_of(simulator, signed_text(good_request(simulator, api_key="X" * 32))) == "0001"
    assert code_of(simulator, signed_text(good_request(simulator, cdn=1))) == "0001"
    old = good_request(simulator, timestamp=int(sim_clock.now()) - 301)
    assert code_of(simulator, signed_text(old)) == "0002"
    future = good_request(simulator, timestamp=int(sim_clock.now()) + 301)
    assert code_of(simulator, signed_text(future)) == "0002"
    ok = good_request(simulator, timestamp=int(sim_clock.now()) - 299)
    assert code_of(simulator, signed_text(ok)) is None


@pytest.mark.parametrize(
    ("change", "code"),
    [
        ({"command": "video.usage"}, "0000"),
        ({"timestamp": "123"}, "0006"),
        ({"cdn": "4242"}, "0006"),
        ({"year": 2025.5}, "0006"),
        ({"month": True}, "0006"),
        ({"day": "1"}, "0006"),
        ({"limit": "10"}, "0006"),
        ({"offset": None}, "0006"),
        ({"app": 5}, "0006"),
        ({"app": []}, "0006"),
        ({"month": 13}, "0006"),
        ({"limit": 0}, "0006"),
        ({"offset": -1}, "0006"),
        ({"extra": 1}, "0006"),
    ],
    ids=repr,
)
def test_refuses_wrong_types_and_unknown_keys(simulator, change, code):
    req = good_request(simulator)
    req.update(change)
    assert code_of(simulator, signed_text(req)) == code


@pytest.mark.parametrize(
    "missing", ["command", "api_key", "timestamp", "cdn", "app", "year", "month"]
)
def test_missing_required_field(simulator, missing):
    req = good_request(simulator)
    del req[missing]
    assert code_of(simulator, signed_text(req)) == "0006"


def test_missing_or_misplaced_signature(simulator):
    req = good_request(simulator)
    assert code_of(simulator, php_json_encode(req)) == "0003"
    sig = sign(req, DEMO_API_SECRET)
    assert code_of(simulator, php_json_encode({"signature": sig, **req})) == "0006"


@pytest.mark.parametrize(
    "body",
    [None, "", "json=", "json=%7B", "other=1", "json=1&json=2", "json=%5B%5D", "json=%22x%22"],
)
def test_malformed_bodies(simulator, body):
    if body is None:
        resp = requests.post(simulator.url, data=b"{}", timeout=5,
                             headers={"Content-Type": "application/json"})  # fmt: skip
    else:
        form = {"Content-Type": "application/x-www-form-urlencoded"}
        resp = requests.post(simulator.url, data=body, timeout=5, headers=form)
    assert resp.status_code == 200
    assert resp.json()["status"] == "failure" and resp.json()["code"] == "0006"


def test_dev_endpoint_and_404(simulator):
    text = signed_text(good_request(simulator))
    dev = simulator.url.replace("/stable/", "/dev/")
    assert requests.post(dev, data={"json": text}, timeout=5).json()["status"] == "success"
    other = simulator.url.replace("/stable/", "/nope/")
    assert requests.post(other, data={"json": text}, timeout=5).status_code == 404


def test_response_is_php_encoded(simulator):
    text = signed_text(good_request(simulator))
    raw = requests.post(simulator.url, data={"json": text}, timeout=5).text
    obj = json.loads(raw)
    # real PHP decodes the answer and encodes it again to the same bytes
    php = need_binary("php", "php-cli")
    again = subprocess.run(
        [php, "-r", "echo json_encode(json_decode(stream_get_contents(STDIN), true));"],
        input=raw.encode(),
        capture_output=True,
        timeout=30,
    )
    assert again.returncode == 0 and again.stdout.decode() == raw
    assert "\\/" in raw
    assert list(obj) == ["status", "usage", "count", "message", "handle_time"]
    assert obj["handle_time"].endswith(" seconds")
    row = obj["usage"][0]
    assert isinstance(row["bytes_total"], str) and row["bytes_total"].isdigit()


# -- data --------------------------------------------------------------------------------------


def test_demo_constants():
    assert DEMO_APPS and all(n > 0 for n in DEMO_APPS.values())
    assert "DEMO" in DEMO_API_KEY and "demo" in DEMO_API_SECRET
    assert isinstance(DEMO_CDN_ID, int)


def test_day_fraction_curve():
    xs = [i / 1000 for i in range(1001)]
    ys = [day_fraction(x) for x in xs]
    assert ys[0] == 0.0 and ys[-1] == 1.0
    assert all(a <= b for a, b in zip(ys, ys[1:], strict=False))
    rates = [b - a for a, b in zip(ys, ys[1:], strict=False)]
    peak = rates.index(max(rates)) / 1000 * 24
    assert 18 <= peak <= 22  # evening peak


def test_values_grow_during_the_day_and_end_at_delivered():
    clock = SimClock(datetime(2025, 3, 10, tzinfo=UTC).timestamp())
    sim = Simulator(clock=clock)
    day = date(2025, 3, 10)
    previous = {}
    start = clock.now()
    for step in range(0, 24 * 3600 + 1, 1800):
        clock.set(start + step)
        videos = sim.reported_videos("demo-origin", 2025, 3, 10)
        for name, (b, r) in videos.items():
            pb, pr = previous.get(name, (0, 0))
            assert b >= pb and r >= pr and isinstance(b, int)
        previous = videos
    assert sim.reported("demo-origin", day) == sim.delivered("demo-origin", day)
    clock.set(start)
    assert sim.reported("demo-origin", day) == (0, 0)
    clock.set(start + 12 * 3600)
    half = sim.reported("demo-origin", day)
    assert 0 < half[0] < sim.delivered("demo-origin", day)[0]


def test_add_traffic_grows_today_at_once_and_is_part_of_the_truth():
    # 08:00 UTC, the trough of the diurnal curve: the curve alone grows slowly here
    clock = SimClock(datetime(2025, 3, 10, 8, tzinfo=UTC).timestamp())
    sim = Simulator(clock=clock)
    day = date(2025, 3, 10)
    first = sim.videos("demo-origin")[0]
    reported, delivered = sim.reported("demo-origin", day), sim.delivered("demo-origin", day)
    per_video = sim.reported_videos("demo-origin", 2025, 3, 10)[first]
    sim.add_traffic("demo-origin", 1_234_567, 89)
    sim.add_traffic("demo-origin", 1, 1)
    sim.add_traffic("demo-origin", 500, 2, video="sestore/demo-origin/new-upload.mp4")
    assert sim.reported("demo-origin", day) == (reported[0] + 1_235_068, reported[1] + 92)
    assert sim.delivered("demo-origin", day) == (delivered[0] + 1_235_068, delivered[1] + 92)
    videos = sim.reported_videos("demo-origin", 2025, 3, 10)
    assert videos[first] == (per_video[0] + 1_234_568, per_video[1] + 90)
    assert videos["sestore/demo-origin/new-upload.mp4"] == (500, 2)
    # the month to date includes it; other days and apps do not
    month = sim.reported_videos("demo-origin", 2025, 3, None)
    assert month["sestore/demo-origin/new-upload.mp4"] == (500, 2)
    assert sim.reported("demo-origin", date(2025, 3, 9)) == sim.delivered(
        "demo-origin", date(2025, 3, 9)
    )
    assert "sestore/demo-origin/new-upload.mp4" not in sim.reported_videos(
        "demo-origin", 2025, 3, 9
    )
    assert sim.reported("live-events", day)[0] < sim.delivered("live-events", day)[0]


def test_deterministic_and_varies_by_day_and_seed():
    a, b, c = Simulator(seed=1), Simulator(seed=1), Simulator(seed=2)
    d1, d2 = date(2025, 1, 1), date(2025, 1, 2)
    assert a.delivered("vod-library", d1) == b.delivered("vod-library", d1)
    assert a.delivered("vod-library", d1) != c.delivered("vod-library", d1)
    assert a.delivered("vod-library", d1) != a.delivered("vod-library", d2)
    used = [{r[0] for r in a._day_totals("vod-library", date(2025, 1, d))} for d in range(1, 8)]
    assert len(set(map(frozenset, used))) > 1  # some videos unused on some days
    assert len(used[0]) < DEMO_APPS["vod-library"]


def test_late_data():
    midnight = datetime(2025, 3, 11, tzinfo=UTC).timestamp()
    clock = SimClock(midnight)
    sim = Simulator(clock=clock, late_seconds=600)
    yesterday = date(2025, 3, 10)
    full = sim.delivered("demo-origin", yesterday)
    assert sim.reported("demo-origin", yesterday) < full
    assert sim.reported("demo-origin", yesterday, at=midnight + 300) < full
    assert sim.reported("demo-origin", yesterday, at=midnight + 600) == full
    assert sim.reported("demo-origin", date(2025, 3, 11), at=midnight + 300) == (0, 0)


def test_future_and_month():
    clock = SimClock(datetime(2025, 3, 10, 15, tzinfo=UTC).timestamp())
    sim = Simulator(clock=clock)
    assert sim.reported_videos("demo-origin", 2025, 3, 11) == {}
    assert sim.reported_videos("demo-origin", 2025, 4, None) == {}
    month = sim.reported_videos("demo-origin", 2025, 3, None)
    days = [sim.reported_videos("demo-origin", 2025, 3, d) for d in range(1, 11)]
    total = {}
    for d in days:
        for k, (b, r) in d.items():
            tb, tr = total.get(k, (0, 0))
            total[k] = (tb + b, tr + r)
    assert month == total
    full_days = sum(sim.delivered("demo-origin", date(2025, 3, d))[0] for d in range(1, 10))
    assert (
        full_days
        < sum(b for b, _ in month.values())
        < full_days + sim.delivered("demo-origin", date(2025, 3, 10))[0]
    )


def test_timezone_day_boundaries():
    ny_midnight = datetime(2025, 7, 4, 4, tzinfo=UTC).timestamp()  # 00:00 EDT
    sim = Simulator(clock=SimClock(ny_midnight), tz="America/New_York")
    assert sim.today() == date(2025, 7, 4)
    assert sim.reported("demo-origin", date(2025, 7, 4)) == (0, 0)
    assert sim.reported("demo-origin", date(2025, 7, 3)) == sim.delivered(
        "demo-origin", date(2025, 7, 3)
    )


def test_names_include_non_ascii_and_live_streams():
    sim = Simulator()
    names = sim.videos("demo-origin")
    assert any("é" in n for n in names) and any(ord(c) > 0xFFFF for n in names for c in n)
    assert all(n.startswith("sestore/demo-origin/") for n in names)
    assert not any(n.startswith("sestore/") for n in sim.videos("live-events"))


def test_row_order_stable_and_duplicates():
    sim = Simulator(clock=SimClock(datetime(2025, 3, 10, 12, tzinfo=UTC).timestamp()))
    rows = sim._rows("vod-library", 2025, 3, 10)
    sim.clock.advance(3600)
    later = sim._rows("vod-library", 2025, 3, 10)
    assert [r[0] for r in rows] == [r[0] for r in later]  # same order while values grow
    names = [r[0] for r in rows]
    assert len(names) > len(set(names))


# -- faults, log, lifecycle --------------------------------------------------------------------


def test_set_fault_times_and_clear(simulator):
    text = lambda: signed_text(good_request(simulator))  # noqa: E731
    simulator.set_fault("demo-origin", "failure_1000", times=2)
    assert code_of(simulator, text()) == "1000"
    assert code_of(simulator, text()) == "1000"
    assert code_of(simulator, text()) is None
    simulator.set_fault(None, "failure_0005")
    assert code_of(simulator, text()) == "0005"
    simulator.set_fault(None, None)
    assert code_of(simulator, text()) is None
    with pytest.raises(ValueError):
        simulator.set_fault(None, "no-such-mode")
    log = simulator.request_log
    assert [e["code"] for e in log] == ["1000", "1000", None, "0005", None]
    assert simulator.requests_for("demo-origin") == 5
    assert {"app", "day", "offset", "limit", "outcome", "code", "timestamp"} <= set(log[0])


def test_http_faults_raw(simulator):
    text = signed_text(good_request(simulator))
    simulator.set_fault(None, "http_503", times=1)
    resp = requests.post(simulator.url, data={"json": text}, timeout=5)
    assert resp.status_code == 503 and "html" in resp.headers["Content-Type"]
    simulator.set_fault(None, "reset", times=1)
    with pytest.raises(requests.ConnectionError):
        requests.post(simulator.url, data={"json": signed_text(good_request(simulator))}, timeout=5)
    simulator.fault_delay = 0.5
    simulator.set_fault(None, "timeout", times=1)
    with pytest.raises(requests.Timeout):
        requests.post(simulator.url, data={"json": signed_text(good_request(simulator))},
                      timeout=0.2)  # fmt: skip


def test_clock():
    c = SimClock()
    assert abs(c.now() - time.time()) < 1
    c.set(100.0)
    assert c.now() == 100.0
    c.advance(5)
    assert c.now() == 105.0


def test_context_manager_and_restart():
    sim = Simulator()
    with sim:
        url = sim.url
        assert url.startswith("http://127.0.0.1:") and url.endswith("/stable/")
    with pytest.raises(RuntimeError):
        _ = sim.url
    sim.start()
    sim.stop()


def test_standalone_main():
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", "0"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        line = proc.stdout.readline()
        url = line.strip().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        sim = Simulator()  # same demo data and credentials
        req = build_request(DEMO_API_KEY, DEMO_CDN_ID, "demo-origin", None, 2025, 1, None, 5, 0,
                            time.time())  # fmt: skip
        ans = requests.post(url, data={"json": encode_body(req, DEMO_API_SECRET)}, timeout=5).json()
        assert ans["status"] == "success" and len(ans["usage"]) == 5
        rest = "".join(proc.stdout.readline() for _ in range(5))
        assert sim.api_secret in rest and sim.api_key in rest
    finally:
        proc.terminate()
        proc.wait(5)


def test_standalone_help_documents_every_flag():
    from exporter.simulator.cli import build_parser

    proc = subprocess.run(
        [sys.executable, "-m", "exporter.simulator", "--help"],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    options = [a for a in build_parser()._actions if a.option_strings]
    assert len(options) == 8  # --help and the 7 flags
    for action in options:
        for option in action.option_strings:
            assert option in proc.stdout
        assert action.help, action.option_strings


def test_standalone_busy_port_is_one_line_and_exit_code_2():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, "-m", "exporter.simulator", "--port", str(port)],
            capture_output=True, text=True, timeout=30,
        )  # fmt: skip
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr == (
        f"python -m exporter.simulator: error: cannot listen on 127.0.0.1:{port}: "
        "Address already in use (choose another with --host and --port, e.g. --port 8100)\n"
    )


@pytest.mark.parametrize(
    "args, error",
    [
        (["--port", "65536"], "argument --port: invalid port value: '65536'"),
        (["--port", "-1"], "argument --port: invalid port value: '-1'"),
        (["--tz", "Mars/Base"], "argument --tz: unknown time zone 'Mars/Base'"),
        (["--host", "no-such-host.invalid"], "cannot listen on no-such-host.invalid:8099: "),
    ],
)
def test_standalone_bad_flags_are_one_clear_error(args, error):
    proc = subprocess.run(
        [sys.executable, "-m", "exporter.simulator", *args],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.splitlines()[-1].startswith(f"python -m exporter.simulator: error: {error}")


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_standalone_stops_on_signal_even_with_sigint_ignored(signum):
    """Started as a shell's background job is (SIGINT ignored), it still stops on SIGINT."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "exporter.simulator", "--port", "0"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN),
    )  # fmt: skip
    try:
        url = proc.stdout.readline().strip().split()[-1]
        assert url.startswith("http://127.0.0.1:")
        proc.send_signal(signum)
        proc.wait(10)  # promptly: it waits on no timer
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    assert proc.returncode == 0
    assert "Traceback" not in proc.stderr.read()
    with pytest.raises(requests.ConnectionError):
        requests.post(url, data={"json": "{}"}, timeout=5)


def _package_imports() -> dict[str, set[str]]:
    """Module -> the modules of exporter.simulator it imports (relative imports)."""
    import ast
    from pathlib import Path

    import exporter.simulator

    out = {}
    for path in Path(exporter.simulator.__file__).parent.glob("*.py"):
        tree = ast.parse(path.read_text())
        out[path.stem] = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                names = [node.module] if node.module else [a.name for a in node.names]
                out[path.stem].update(names)
    return out


def test_demo_path_does_not_import_the_fault_machinery_and_no_circle():
    imports = _package_imports()
    for demo in ("data", "checks", "answers", "server"):
        assert not imports[demo] & {"faults", "hostile", "core", "cli"}, (demo, imports[demo])
    done: set[str] = set()
    while len(done) < len(imports):  # peel off modules whose imports are all done
        ready = {m for m, deps in imports.items() if m not in done and deps <= done}
        assert ready, f"import circle among {sorted(set(imports) - done)}"
        done |= ready


# -- issue 8: hostile and odd answers ---------------------------------------------------------


def raw_post(sim: Simulator, offset: int = 0, limit: int = 1000, app: str = "demo-origin",
             **kw) -> requests.Response:  # fmt: skip
    req = good_request(sim, offset=offset, limit=limit, app=app)
    return requests.post(sim.url, data={"json": signed_text(req)}, timeout=30, **kw)


def test_gzip_bomb_is_small_and_inflates_to_a_gibibyte(simulator):
    import zlib

    from exporter.simulator import BOMB_SIZE, gzip_bomb

    bomb = gzip_bomb()
    assert len(bomb) < 1_200_000
    d = zlib.decompressobj(31)
    total = 0
    data = bomb
    while data:
        total += len(d.decompress(data, 1 << 24))
        data = d.unconsumed_tail
    assert total > BOMB_SIZE and d.eof
    simulator.set_fault("demo-origin", "gzip_bomb")
    resp = raw_post(simulator, stream=True)
    assert resp.headers["Content-Encoding"] == "gzip"
    assert int(resp.headers["Content-Length"]) == len(bomb)
    resp.close()


def test_huge_and_endless_bodies(simulator):
    from exporter.simulator import HUGE_BODY_SIZE

    simulator.set_fault("demo-origin", "huge_body", times=1)
    resp = raw_post(simulator, stream=True)
    assert int(resp.headers["Content-Length"]) == HUGE_BODY_SIZE
    resp.close()
    simulator.set_fault("demo-origin", "endless_body", times=1)
    resp = raw_post(simulator, stream=True)
    assert resp.headers["Transfer-Encoding"] == "chunked"
    got = 0
    for chunk in resp.raw.stream(1 << 16):
        got += len(chunk)
        if got > 8 << 20:
            break  # more than any answer would be; it would go on forever
    resp.close()
    assert got > 8 << 20


def test_drip_sends_a_valid_answer_slowly(simulator):
    simulator.drip_interval = 0.001
    simulator.set_fault("live-events", "drip", times=1)
    started = time.monotonic()
    resp = raw_post(simulator, app="live-events", limit=2)
    assert resp.json()["status"] == "success"
    assert time.monotonic() - started > len(resp.content) * 0.001 * 0.5


def test_429_with_retry_after_and_500_with_json(simulator):
    simulator.retry_after = 77
    simulator.set_fault("demo-origin", "http_429", times=1)
    resp = raw_post(simulator)
    assert resp.status_code == 429 and resp.headers["Retry-After"] == "77"
    simulator.set_fault("demo-origin", "http_500_json", times=1)
    resp = raw_post(simulator)
    assert resp.status_code == 500 and resp.json()["code"] == "0004"


@pytest.mark.parametrize(
    ("mode", "expected"),
    [("empty_no_count", {"status": "success", "usage": []}),
     ("empty_count_string", {"status": "success", "usage": [], "count": "0"}),
     ("empty_usage_null", {"status": "success", "usage": None}),
     ("failure_no_usage", {"status": "failure"})],
)  # fmt: skip
def test_empty_day_shapes(simulator, mode, expected):
    simulator.set_fault("demo-origin", mode)
    answer = raw_post(simulator).json()
    assert {k: answer[k] for k in expected} == expected
    assert "count" in answer or mode != "empty_count_string"
    assert "code" not in answer


@pytest.mark.parametrize("mode", ["shift_first", "shift_later"])
def test_shift_moves_the_last_row_to_the_top_during_a_read(simulator, mode):
    rows = [(f"v{i}", 100 - i, 1) for i in range(9)]
    sim = Simulator(clock=simulator.clock, static_rows={"app": rows})
    with sim:
        sim.set_fault("app", mode, times=1)

        def page(offset):
            return [r["video_url"] for r in raw_post(sim, offset, 3, app="app").json()["usage"]]

        first = [page(0), page(3), page(6)]
        second = [page(0), page(3), page(6)]  # times=1: one read only
    moved = ["v8", *[f"v{i}" for i in range(8)]]
    if mode == "shift_first":
        assert first == [["v0", "v1", "v2"], moved[3:6], moved[6:9]]
    else:
        assert first == [["v0", "v1", "v2"], ["v3", "v4", "v5"], moved[6:9]]
    assert second == [["v0", "v1", "v2"], ["v3", "v4", "v5"], ["v6", "v7", "v8"]]


def test_partial_rows_and_long_digits(simulator):
    simulator.set_fault("demo-origin", "partial_rows", times=1)
    usage = raw_post(simulator, limit=4).json()["usage"]
    assert [("requests_total" in r, r.get("requests_total")) for r in usage] == [
        (False, None), (True, None), (False, None), (True, None)
    ]  # fmt: skip
    simulator.set_fault("demo-origin", "long_digits", times=1)
    body = raw_post(simulator, limit=4).content
    assert b"9" * 5000 in body
