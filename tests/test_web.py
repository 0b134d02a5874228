"""The HTTP side over real sockets: endpoints, negotiation, TLS, basic auth, load."""

from __future__ import annotations

import gzip
import http.client
import socket
import ssl
import statistics
import threading
import time
import urllib.error
import urllib.parse
import urllib.request

import bcrypt
import pytest
from helpers import http_get, make_pki, samples, wait_for

from exporter.appkey import AppKey
from exporter.metrics import Exposition
from exporter.store import AppStatus, AppUsage, Store
from exporter.web.app import WebApp, parse_listen_address, serve
from exporter.web.webconfig import load_web_config


def K(app: str) -> AppKey:
    return AppKey("acc", app)


def make_usage(app: str, n: int, day_bytes_offset: int = 0) -> AppUsage:
    videos = tuple((f"v/{i}.mp4", 10 * (n - i) + day_bytes_offset, i) for i in range(n))
    return AppUsage(K(app), "2026-11-26", 1.0e9, videos, sum(v[1] for v in videos), 0, n)


@pytest.fixture
def stack():
    store = Store([K("a"), K("b")])
    store.publish(K("a"), make_usage("a", 50), AppStatus(K("a"), polled=True, up=True))
    expo = Exposition(store, "UTC", {K("a"): (10**9, None)})
    ready = {"value": False}
    servers = []

    def start(web_config=None, path="/metrics"):
        app = WebApp(expo, store, lambda: ready["value"], web_config, path)
        ctx = web_config.ssl_context() if web_config else None
        server, _ = serve("127.0.0.1:0", app, ctx)
        servers.append(server)
        return server

    yield store, expo, ready, start
    for s in servers:
        s.shutdown()
        s.server_close()


def test_endpoints(stack):
    store, expo, ready, start = stack
    url = start(path="/probe").url
    status, headers, body = http_get(url + "/probe")
    assert status == 200 and headers["Content-Type"].startswith("text/plain; version=0.0.4")
    s = samples(body)
    assert (
        s[
            (
                "scaleengine_vse_day_bytes",
                (("account", "acc"), ("app", "a"), ("video_url", "v/0.mp4")),
            )
        ]
        == 500
    )
    assert http_get(url + "/metrics")[0] == 404
    assert http_get(url + "/-/healthy")[0] == 200
    assert http_get(url + "/-/ready")[0] == 503
    ready["value"] = True
    assert http_get(url + "/-/ready")[0] == 200
    status, _, page = http_get(url + "/")
    assert status == 200 and b'href="/probe"' in page and b"<td>a</td>" in page


def test_gzip_and_openmetrics_negotiated(stack):
    _, _, _, start = stack
    url = start().url + "/metrics"
    _, _, plain = http_get(url)
    status, headers, body = http_get(url, {"Accept-Encoding": "gzip"})
    assert headers["Content-Encoding"] == "gzip" and len(body) < len(plain)
    # the live part (process metrics) moves between scrapes: compare the usage samples
    usage = {k: v for k, v in samples(gzip.decompress(body)).items() if "vse" in k[0]}
    assert usage == {k: v for k, v in samples(plain).items() if "vse" in k[0]}
    _, headers, body = http_get(url, {"Accept": "application/openmetrics-text; version=1.0.0"})
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.endswith(b"# EOF\n")


def test_scrape_never_waits_for_the_store(stack):
    """A scrape answers while a 'poll' holds the store's lock for longer than the scrape."""
    store, _, _, start = stack
    url = start().url
    with store._lock:  # a poll in the middle of a swap
        t0 = time.monotonic()
        status, _, body = http_get(url + "/metrics", timeout=5)
    # the usage part does not need the lock; the live part is rendered from the last view
    assert status == 200 and b"scaleengine_vse_day_bytes" in body
    assert time.monotonic() - t0 < 5


def write_web_config(tmp_path, text: str):
    path = tmp_path / "web.yml"
    path.write_text(text)
    return load_web_config(path)


def test_basic_auth(stack, tmp_path):
    _, _, _, start = stack
    hashed = bcrypt.hashpw(b"s3cret-pass", bcrypt.gensalt(rounds=4)).decode()
    wc = write_web_config(tmp_path, f"basic_auth_users:\n  prom: '{hashed}'\n")
    url = start(wc).url
    import base64

    def auth(user, pw):
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    status, headers, _ = http_get(url + "/metrics")
    assert status == 401 and headers["WWW-Authenticate"].startswith("Basic")
    assert http_get(url + "/metrics", auth("prom", "wrong"))[0] == 401
    assert http_get(url + "/metrics", auth("other", "s3cret-pass"))[0] == 401
    assert http_get(url + "/", auth("prom", "wrong"))[0] == 401
    status, _, body = http_get(url + "/metrics", auth("prom", "s3cret-pass"))
    assert status == 200 and b"scaleengine_vse_day_bytes" in body
    # health stays open for container health checks
    assert http_get(url + "/-/healthy")[0] == 200


def tls_get(url: str, ctx: ssl.SSLContext):
    host, port = parse_listen_address(url.split("//", 1)[1])
    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=10)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_tls_with_required_client_certificate(stack, tmp_path):
    _, _, _, start = stack
    pki = make_pki(tmp_path)
    wc = write_web_config(
        tmp_path,
        "tls_server_config:\n"
        f"  cert_file: {pki['server_cert']}\n"
        f"  key_file: {pki['server_key']}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        f"  client_ca_file: {pki['ca']}\n"
        "  min_version: TLS12\n",
    )
    server = start(wc)
    assert server.url.startswith("https://")

    def client_ctx(cert=None, key=None):
        ctx = ssl.create_default_context(cafile=str(pki["ca"]))
        if cert:
            ctx.load_cert_chain(str(cert), str(key))
        return ctx

    status, body = tls_get(server.url, client_ctx(pki["client_cert"], pki["client_key"]))
    assert status == 200 and b"scaleengine_vse_day_bytes" in body
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls_get(server.url, client_ctx())  # no client certificate
    with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
        tls_get(server.url, client_ctx(pki["stranger_cert"], pki["stranger_key"]))
    # a plain-HTTP client gets no metrics out of the TLS port: the connection is closed, or
    # what comes back is no HTTP answer, or an error status; a refused connection or a
    # timeout would be a failure
    host, port = parse_listen_address(server.url.split("//", 1)[1])
    conn = http.client.HTTPConnection(host, port, timeout=5)
    try:
        conn.request("GET", "/metrics")
        resp = conn.getresponse()
        plain = (resp.status, resp.read())
    except (http.client.HTTPException, ConnectionResetError, BrokenPipeError) as err:
        plain = err
    finally:
        conn.close()
    if isinstance(plain, tuple):
        assert plain[0] != 200 and b"scaleengine" not in plain[1], plain


def test_tls_server_only(stack, tmp_path):
    _, _, _, start = stack
    pki = make_pki(tmp_path)
    wc = write_web_config(
        tmp_path,
        f"tls_server_config:\n  cert_file: {pki['server_cert']}\n  key_file: {pki['server_key']}\n",
    )
    server = start(wc)
    status, _ = tls_get(server.url, ssl.create_default_context(cafile=str(pki["ca"])))
    assert status == 200
    with pytest.raises(ssl.SSLError):  # a client that does not trust the CA refuses it
        tls_get(server.url, ssl.create_default_context())


def test_idle_and_slow_connections_do_not_block_scrapes(stack):
    _, _, _, start = stack
    server = start()
    host, port = parse_listen_address(server.url.split("//", 1)[1])
    idle = [socket.create_connection((host, port)) for _ in range(100)]
    slow = socket.create_connection((host, port))
    slow.sendall(b"GET /metrics HTTP/1.1\r\nHo")  # and never finishes the request
    try:
        t0 = time.monotonic()
        status, _, body = http_get(server.url + "/metrics", timeout=5)
        assert status == 200 and body
        assert time.monotonic() - t0 < 5
    finally:
        for s in idle + [slow]:
            s.close()


SCRAPERS = 50
SCRAPES = 500  # at least this many scrapes in all,
SCRAPES_EACH = 3  # every scraper at least this many (all of them really took part),
SWAPS = 20  # and at least this many snapshots swapped in meanwhile


def test_concurrent_scrapers_while_polls_swap_snapshots(stack):
    """50 scrapers on loopback, 500 scrapes or more (at least 3 by each scraper) while 20
    snapshots or more are swapped in: no errors, and every body is one complete snapshot
    (per-video bytes always add up to the app total)."""
    store, expo, _, start = stack
    expo.start()
    url = start().url + "/metrics"
    stop = threading.Event()
    errors: list[str] = []
    scrapes = [0]
    each = [0] * SCRAPERS
    swaps = [0]
    lock = threading.Lock()

    def poller():
        i = 0
        while not stop.is_set():
            i += 1
            store.publish(K("a"), make_usage("a", 50 + i % 7, i), AppStatus(K("a"), True, True))
            swaps[0] = i
            time.sleep(0.01)

    def scraper(k: int):
        host, port = parse_listen_address(url.split("//", 1)[1].split("/", 1)[0])
        conn = http.client.HTTPConnection(host, port, timeout=10)
        while not stop.is_set():
            try:
                conn.request("GET", "/metrics", headers={"Accept-Encoding": "gzip"})
                resp = conn.getresponse()
                body = gzip.decompress(resp.read())
                if resp.status != 200:
                    raise AssertionError(f"status {resp.status}")
                s = samples(body)
                per_video = sum(v for k, v in s.items() if k[0] == "scaleengine_vse_day_bytes")
                total = s[("scaleengine_vse_app_day_bytes", (("account", "acc"), ("app", "a")))]
                if per_video != total:
                    raise AssertionError(f"torn snapshot: {per_video} != {total}")
                with lock:
                    scrapes[0] += 1
                    each[k] += 1
            except Exception as err:  # noqa: BLE001 - collected and asserted below
                with lock:
                    errors.append(repr(err))
                conn.close()
                conn = http.client.HTTPConnection(host, port, timeout=10)
        conn.close()

    threads = [threading.Thread(target=scraper, args=(k,)) for k in range(SCRAPERS)]
    threads.append(threading.Thread(target=poller))
    t0 = time.monotonic()
    for t in threads:
        t.start()

    def enough() -> bool:
        with lock:
            return scrapes[0] >= SCRAPES and min(each) >= SCRAPES_EACH and swaps[0] >= SWAPS

    deadline = t0 + 120  # "does not hang", far beyond what it takes
    while not enough() and not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    stop.set()
    for t in threads:
        t.join(30)
    expo.stop()
    took = time.monotonic() - t0
    print(f"{scrapes[0]} scrapes by {SCRAPERS} clients, {swaps[0]} swaps in {took:.1f} s")
    assert errors == []
    assert scrapes[0] >= SCRAPES and min(each) >= SCRAPES_EACH and swaps[0] >= SWAPS


def _post(url: str) -> tuple[int, bytes]:
    """A POST without a body or a content type, as ``curl -X POST`` sends it (urllib would
    send a form's content type, which a reload refuses as cross-site)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
    try:
        conn.request("POST", parts.path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_get_reload_is_405_with_allow_post_as_prometheus_answers(stack):
    store, expo, ready, start = stack
    enabled = WebApp(expo, store, lambda: True, reload=lambda: (True, "config reloaded"))
    server, _ = serve("127.0.0.1:0", enabled)
    try:
        for url in (start().url, server.url):  # without and with --web.enable-lifecycle
            parts = urllib.parse.urlsplit(url)
            for method in ("GET", "HEAD", "PUT", "DELETE", "OPTIONS"):
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
                try:
                    conn.request(method, "/-/reload")
                    resp = conn.getresponse()
                    body = resp.read()
                    assert (resp.status, resp.getheader("Allow")) == (405, "POST"), url
                    assert body == (b"" if method == "HEAD" else b"Method Not Allowed\n")
                finally:
                    conn.close()
        # and POST elsewhere names what is allowed there
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=5)
        conn.request("POST", "/metrics")
        resp = conn.getresponse()
        resp.read()
        assert (resp.status, resp.getheader("Allow")) == (405, "GET, HEAD")
        conn.close()
    finally:
        server.shutdown()
        server.server_close()


def test_reload_endpoint_only_when_enabled(stack):
    store, expo, ready, start = stack
    url = start().url
    assert _post(url + "/-/reload") == (403, b"Lifecycle API is not enabled.\n")
    assert _post(url + "/metrics")[0] == 405
    answers = iter([(True, "config reloaded"), (False, "apps[0].name: bad")])
    app = WebApp(expo, store, lambda: True, reload=lambda: next(answers))
    server, _ = serve("127.0.0.1:0", app)
    try:
        assert _post(server.url + "/-/reload") == (200, b"config reloaded\n")
        assert _post(server.url + "/-/reload") == (500, b"apps[0].name: bad\n")
    finally:
        server.shutdown()
        server.server_close()


def test_server_header_has_no_trailing_space(stack):
    _, _, _, start = stack
    host, port = parse_listen_address(start().url.split("//", 1)[1])
    with socket.create_connection((host, port), timeout=5) as sock:
        sock.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        raw = b""
        while chunk := sock.recv(4096):
            raw += chunk
    from exporter import __version__

    assert f"\r\nServer: scaleengine-exporter/{__version__}\r\n".encode() in raw


def test_rate_limit_answers_429_but_not_health(stack, tmp_path):
    """exporter-toolkit's rate_limit: a bucket of ``burst`` requests refilled one per interval."""
    _, _, _, start = stack
    url = start(write_web_config(tmp_path, "rate_limit: {interval: 1h, burst: 2}\n")).url
    assert [http_get(url + "/metrics")[0] for _ in range(3)] == [200, 200, 429]
    assert http_get(url + "/")[0] == 429
    # health and readiness stay answerable for the orchestrator
    assert http_get(url + "/-/healthy")[0] == 200
    assert http_get(url + "/-/ready")[0] == 503


def test_head_deadline_is_total_not_per_read(stack, monkeypatch):
    """A head dripped a byte at a time is cut at HEAD_TIMEOUT from its first byte."""
    monkeypatch.setattr("exporter.web.connection.HEAD_TIMEOUT", 1.0)
    _, _, _, start = stack
    host, port = parse_listen_address(start().url.split("//", 1)[1])
    s = socket.create_connection((host, port), timeout=10)
    started = time.monotonic()
    try:
        s.sendall(b"GET /metrics HTTP/1.1\r\n")
        with pytest.raises(OSError):
            for _ in range(100):  # 20 s of drip if nobody cuts it
                time.sleep(0.2)
                s.sendall(b"X: y\r\n")
            raise AssertionError("the server never cut the dripping head")
    finally:
        s.close()
    assert time.monotonic() - started < 10


def test_server_runs_on_uvloop(stack):
    """The event loop is uvloop's (a dependency on Linux): it halves the fixed cost of an
    answer, which the within-3x-of-nginx target at 1k series depends on (bench/RESULTS.md)."""
    import uvloop

    _, _, _, start = stack
    server = start()
    assert isinstance(server.loop, uvloop.Loop)
    assert http_get(server.url + "/-/healthy")[0] == 200


def _flood(url: str, seconds: float, threads: int = 4) -> list[int]:
    """``threads`` clients asking for ``url`` back to back for ``seconds``: how many each got."""
    counts = [0] * threads
    stop = time.monotonic() + seconds

    def run(i: int) -> None:
        while time.monotonic() < stop:
            status, _, _ = http_get(url, timeout=30)
            assert status == 200
            counts[i] += 1

    workers = [threading.Thread(target=run, args=(i,)) for i in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(seconds + 60)
    return counts


def _many_apps(n: int) -> tuple[Store, Exposition]:
    names = [f"app-{i:04d}" for i in range(n)]
    store = Store([K(n) for n in names])
    for name in names:
        store.publish(K(name), make_usage(name, 1), AppStatus(K(name), polled=True, up=True))
    return store, Exposition(store, "UTC", {}, process_metrics=False)


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_landing_page_is_rendered_at_most_once_a_second():
    """A flood of "/" with 5,000 apps renders the page at most once a second (each render
    takes about 90 ms), and a change still shows within a few seconds."""
    store, expo = _many_apps(5000)
    server, _ = serve("127.0.0.1:0", WebApp(expo, store, lambda: True))

    def scrapes() -> float:
        """The median time of 15 scrapes, on one keep-alive connection."""
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=30)
        took = []
        for _ in range(15):
            t = time.monotonic()
            conn.request("GET", "/metrics")
            assert conn.getresponse().read()
            took.append(time.monotonic() - t)
            time.sleep(0.1)
        conn.close()
        return statistics.median(took)

    try:
        quiet = scrapes()
        started = time.monotonic()
        busy: list[float] = []
        scraper = threading.Thread(target=lambda: (time.sleep(0.5), busy.append(scrapes())))
        scraper.start()
        counts = _flood(server.url + "/", 3.0)
        scraper.join(30)
        elapsed = time.monotonic() - started
        renders = server.landing_renders
        print(
            f"landing flood: {sum(counts)} pages in {elapsed:.1f} s, {renders} renders; "
            f"scrape median {quiet * 1000:.1f} ms quiet, {busy[0] * 1000:.1f} ms in the flood"
        )
        assert sum(counts) >= 20
        assert 1 <= renders <= elapsed / 1.0 + 1
        assert busy[0] < 10 * quiet + 0.1  # generous: the flood's clients share our CPU
        store.publish(K("app-0000"), None, AppStatus(K("app-0000"), polled=True, up=False,
                                                  last_error="api_0004: changed"))  # fmt: skip
        wait_for(lambda: b"changed" in http_get(server.url + "/")[2], 10, "the new status")
        # after a quiet while (over 5 s), the first request waits for a fresh page
        store.publish(K("app-0000"), None, AppStatus(K("app-0000"), polled=True, up=False,
                                                  last_error="api_0004: again"))  # fmt: skip
        time.sleep(5.5)
        assert b"again" in http_get(server.url + "/")[2]
    finally:
        server.shutdown()
        server.server_close()


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_landing_page_renders_out_of_the_loop(stack, monkeypatch):
    """A landing render that takes 3 s holds up neither scrapes nor, once a page exists, the
    next landing requests (they get the last page while the new one renders)."""
    import exporter.web.app

    store, expo, ready, start = stack
    real = exporter.web.app.render_landing

    def slow(app: WebApp, now: float | None = None) -> str:
        time.sleep(3)
        return real(app, now)

    monkeypatch.setattr(exporter.web.app, "render_landing", slow)
    url = start().url
    first: list[int] = []
    thread = threading.Thread(target=lambda: first.append(http_get(url + "/", timeout=30)[0]))
    thread.start()
    time.sleep(0.5)  # the first render is under way
    started = time.monotonic()
    assert http_get(url + "/metrics", timeout=10)[0] == 200
    assert time.monotonic() - started < 2  # not behind the render's 3 s
    thread.join(30)
    assert first == [200]
    time.sleep(1.1)  # the page is older than a second: the next request starts a new render
    started = time.monotonic()
    assert http_get(url + "/", timeout=10)[0] == 200  # the last page, at once
    assert http_get(url + "/metrics", timeout=10)[0] == 200
    assert time.monotonic() - started < 2
