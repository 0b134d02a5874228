"""A hostile API (issues 15 and 19): stand-in servers and proxies on loopback, written with raw
sockets so that every framing and every phase of an answer can be dripped, and the client must
still end each request at ``scaleengine.timeout`` with outcome ``timeout``.

The client talks to them over real TCP (and TLS); nothing of the network stack is mocked.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml
from helpers import make_pki, samples

from exporter.scaleengine import ApiError, ScaleEngineClient

ROOT = Path(__file__).resolve().parents[2]
KEY = "K" * 40
SECRET = "S" * 64
GOOD = json.dumps(
    {
        "status": "success",
        "usage": [{"video_url": "v/1.mp4", "bytes_total": "10", "requests_total": "1"}],
        "count": 1,
    }
).encode()

# -- a raw-socket stand-in -------------------------------------------------------------------

Answer = Callable[[socket.socket, threading.Event], bool]  # True: keep the connection open


def _read_request(conn: socket.socket) -> tuple[bytes, bytes] | None:
    """One request: (head, Content-Length body); None when the client closed."""
    data = b""
    while b"\r\n\r\n" not in data:
        piece = conn.recv(65536)
        if not piece:
            return None
        data += piece
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value.strip())
    while len(body) < length:
        piece = conn.recv(65536)
        if not piece:
            return None
        body += piece
    return head, body


class StandIn:
    """Answers the n-th request it reads (over all connections) with ``answers[n]`` (the last
    one for any later request); records each request head with its connection number."""

    def __init__(
        self,
        answers: list[Answer],
        tls: ssl.SSLContext | None = None,
        on_connect: Answer | None = None,
    ) -> None:
        self.answers = answers
        self.tls = tls
        self.on_connect = on_connect  # runs before anything is read (a TLS handshake drip)
        self.requests: list[tuple[int, bytes]] = []  # (connection number, request head)
        self.bodies: list[bytes] = []
        self.stop = threading.Event()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}/api"
        self._conns = 0
        self._lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with self._lock:
                self._conns += 1
                number = self._conns
            threading.Thread(target=self._serve, args=(conn, number), daemon=True).start()

    def _serve(self, conn: socket.socket, number: int) -> None:
        with conn:
            try:
                if self.on_connect is not None:
                    self.on_connect(conn, self.stop)
                    return
                if self.tls is not None:
                    conn = self.tls.wrap_socket(conn, server_side=True)
                while not self.stop.is_set():
                    request = _read_request(conn)
                    if request is None:
                        return
                    with self._lock:
                        index = len(self.requests)
                        self.requests.append((number, request[0]))
                        self.bodies.append(request[1])
                    answer = self.answers[min(index, len(self.answers) - 1)]
                    if not answer(conn, self.stop):
                        return
            except OSError:
                return

    def close(self) -> None:
        self.stop.set()
        self.listener.close()

    def __enter__(self) -> StandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def drip(conn: socket.socket, stop: threading.Event, data: bytes, every: float = 0.1) -> None:
    """Send ``data`` one byte every ``every`` seconds (each read the client makes is quick)."""
    for i in range(len(data)):
        if stop.wait(every):
            return
        conn.sendall(data[i : i + 1])
    stop.wait()  # then hold the connection open, silent


def endless(pattern: bytes) -> bytes:
    return pattern * 100_000  # far more than any test lasts at one byte every 0.1 s


def prompt(conn: socket.socket, stop: threading.Event) -> bool:
    """A good answer at once, kept alive."""
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(GOOD), GOOD)
    )
    return True


def dripping(head: bytes, body: bytes = b"", sent: bytes = b"") -> Answer:
    """``sent`` at once, then ``head`` + ``body`` dripped."""

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        if sent:
            conn.sendall(sent)
        drip(conn, stop, head + body)
        return False

    return answer


# every framing and every phase of an answer: what is sent at once, what is dripped
STATUS = b"HTTP/1.1 200 OK\r\n"
PHASES: dict[str, tuple[bytes, bytes]] = {
    # nothing at all: each read waits, the per-read timeout alone would cut it
    "silent": (b"", b""),
    # the status line one byte at a time, then header lines forever
    "status_line": (b"", STATUS + endless(b"X-Pad: 0\r\n")),
    # the status line at once, then header lines forever
    "headers": (STATUS, endless(b"X-Pad: 0\r\n")),
    # 1xx answers forever (each one skipped): a flood of them ends at the deadline too
    "1xx_flood": (
        b"",
        endless(b"HTTP/1.1 102 Processing\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n"),
    ),
    "body_content_length": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 1000000\r\n\r\n",
        endless(b" "),
    ),
    "body_chunked": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        endless(b"1\r\n \r\n"),
    ),
    "body_close_delimited": (b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n", endless(b" ")),
    "body_connection_close_with_length": (
        b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1000000\r\n\r\n",
        endless(b" "),
    ),
    "body_http10": (b"HTTP/1.0 200 OK\r\nContent-Type: application/json\r\n\r\n", endless(b" ")),
    "body_http10_keep_alive": (
        b"HTTP/1.0 200 OK\r\nConnection: keep-alive\r\nContent-Length: 1000000\r\n\r\n",
        endless(b" "),
    ),
}


def client(url: str, **kw) -> ScaleEngineClient:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("retries", 0)
    return ScaleEngineClient(url, 1, KEY, SECRET, **kw)


def fetch(c: ScaleEngineClient):
    return c.fetch_usage("app", None, 2025, 1, 2)


def timed_out(c: ScaleEngineClient) -> float:
    """Seconds a fetch took to fail; it must fail with outcome timeout."""
    started = time.monotonic()
    with pytest.raises(ApiError) as ei:
        fetch(c)
    seconds = time.monotonic() - started
    assert ei.value.outcome == "timeout", ei.value.message
    assert ei.value.retryable
    return seconds


@pytest.mark.parametrize("phase", sorted(PHASES))
@pytest.mark.parametrize("reused", [False, True], ids=["new_connection", "kept_alive"])
def test_every_framing_and_phase_ends_at_the_timeout(phase, reused):
    """timeout 1 s: whatever is dripped, however the answer is framed, on a new connection or
    on one kept alive from a first answer, the request ends as ``timeout`` well within 15 s
    (one byte every 0.1 s: each read is quick, unbounded they would take hours)."""
    sent, dripped = PHASES[phase]
    answers = [prompt, dripping(dripped, sent=sent)] if reused else [dripping(dripped, sent=sent)]
    with StandIn(answers) as api, client(api.url) as c:
        if reused:
            assert fetch(c).videos == {"v/1.mp4": (10, 1)}
        seconds = timed_out(c)
        assert seconds < 15, f"{phase}: {seconds:.1f}s"
        conns = [n for n, _ in api.requests]
    # the dripped answer came on the connection the first request used: keep-alive is tested
    assert conns == ([1, 1] if reused else [1])


def test_1xx_answers_before_the_200_are_skipped():
    """100, 102 and 103 (with headers) before the 200: the answer is read as usual."""
    informational = (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        b"HTTP/1.1 102 Processing\r\n\r\n"
        b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
    )

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        conn.sendall(informational)
        return prompt(conn, stop)

    with StandIn([answer]) as api, client(api.url) as c:
        assert fetch(c).videos == {"v/1.mp4": (10, 1)}
        assert fetch(c).videos == {"v/1.mp4": (10, 1)}  # and the connection stays usable
        assert [n for n, _ in api.requests] == [1, 1]


def test_101_switching_protocols_is_a_failed_request_not_skipped():
    """We never ask for an upgrade: a 101 is the final answer, outcome http_status."""

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        conn.sendall(b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: h2c\r\n\r\n")
        return prompt(conn, stop)

    with StandIn([answer]) as api, client(api.url) as c:
        with pytest.raises(ApiError) as ei:
            fetch(c)
    assert ei.value.outcome == "http_status" and "101" in ei.value.message


# -- TLS, proxies, DNS, connect --------------------------------------------------------------

# a TLS record header announcing a 16 KiB handshake record, then its body one byte at a time
TLS_DRIP = b"\x16\x03\x03\x40\x00" + endless(b"\x00")


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> dict[str, Path]:
    return make_pki(tmp_path_factory.mktemp("pki"))


def tls_context(pki: dict[str, Path]) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(pki["server_cert"], pki["server_key"])
    return ctx


def test_a_dripping_tls_handshake_ends_at_the_timeout():
    """The server's handshake answer one byte every 0.1 s (each read is quick)."""
    with StandIn([prompt], on_connect=dripping(TLS_DRIP)) as api:
        with client(api.url.replace("http://", "https://")) as c:
            assert timed_out(c) < 15


@pytest.mark.parametrize("phase", ["headers", "body_close_delimited", "body_chunked"])
def test_tls_kept_alive_second_answer_dripped_ends_at_the_timeout(pki, monkeypatch, phase):
    """Over TLS, a second request on the kept-alive connection whose answer drips."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    sent, dripped = PHASES[phase]
    with StandIn([prompt, dripping(dripped, sent=sent)], tls=tls_context(pki)) as api:
        with client(api.url) as c:
            assert fetch(c).videos == {"v/1.mp4": (10, 1)}
            assert timed_out(c) < 15
        assert [n for n, _ in api.requests] == [1, 1]


def proxy_answer(kind: str) -> Answer:
    """What a stand-in proxy does once it has read a CONNECT request."""
    established = b"HTTP/1.1 200 Connection established\r\n\r\n"
    if kind == "silent":
        return dripping(b"")
    if kind == "connect_answer_dripped":
        return dripping(b"HTTP/1.1 200 Connection established\r\n" + endless(b"X-Pad: 0\r\n"))
    assert kind == "tunnel_then_tls_dripped"
    return dripping(TLS_DRIP, sent=established)


def no_proxy_env(monkeypatch, proxy: str) -> None:
    for name in ("NO_PROXY", "no_proxy", "ALL_PROXY", "all_proxy", "HTTP_PROXY", "http_proxy"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HTTPS_PROXY", proxy)
    monkeypatch.setenv("https_proxy", proxy)


@pytest.mark.parametrize("kind", ["silent", "connect_answer_dripped", "tunnel_then_tls_dripped"])
def test_a_proxy_that_stalls_the_tunnel_ends_at_the_timeout(monkeypatch, kind):
    """HTTPS_PROXY set, the API on https: the CONNECT phase and the TLS handshake through the
    tunnel are under the deadline. The API's host is never resolved here (the proxy would):
    the stand-in proxy seeing the CONNECT proves the request went through it."""
    with StandIn([proxy_answer(kind)]) as proxy:
        no_proxy_env(monkeypatch, f"http://127.0.0.1:{proxy.port}")
        with client("https://api.scaleengine.net/api") as c:
            assert timed_out(c) < 15
        heads = [head for _, head in proxy.requests]
    assert len(heads) == 1 and heads[0].startswith(b"CONNECT api.scaleengine.net:443 ")


def tunnel_to(port: int) -> Answer:
    """A proxy that answers CONNECT and relays both ways to 127.0.0.1:``port``."""

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        upstream = socket.create_connection(("127.0.0.1", port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")

        def pump(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

        threading.Thread(target=pump, args=(upstream, conn), daemon=True).start()
        pump(conn, upstream)
        upstream.close()
        return False

    return answer


def test_through_a_proxy_a_kept_alive_second_answer_dripped_ends_at_the_timeout(pki, monkeypatch):
    """HTTPS_PROXY set: the first request through the tunnel is answered, the second on the
    same kept-alive tunnel drips its body; it ends as timeout."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(pki["ca"]))
    sent, dripped = PHASES["body_chunked"]
    with StandIn([prompt, dripping(dripped, sent=sent)], tls=tls_context(pki)) as api:
        with StandIn([tunnel_to(api.port)]) as proxy:
            no_proxy_env(monkeypatch, f"http://127.0.0.1:{proxy.port}")
            with client(f"https://localhost:{api.port}/api") as c:
                assert fetch(c).videos == {"v/1.mp4": (10, 1)}
                assert timed_out(c) < 15
            heads = [head for _, head in proxy.requests]
        assert [n for n, _ in api.requests] == [1, 1]  # one tunnel, two requests
    assert len(heads) == 1 and heads[0].startswith(f"CONNECT localhost:{api.port} ".encode())


def test_a_name_that_never_resolves_ends_at_the_timeout(monkeypatch):
    """A resolver that never answers (a stand-in for getaddrinfo: the system's cannot be made
    to hang from a test) does not hold the request past the deadline."""
    real = socket.getaddrinfo
    release = threading.Event()

    def hanging(host, *args, **kwargs):
        if host == "api.hangs.test":
            release.wait(60)
        return real("127.0.0.1" if host == "api.hangs.test" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    try:
        with client("http://api.hangs.test:9/api") as c:
            assert timed_out(c) < 15
    finally:
        release.set()


def test_a_connect_that_never_completes_ends_at_the_timeout():
    """A listener whose backlog is full: the kernel drops our SYNs, connect() waits."""
    listener = socket.create_server(("127.0.0.1", 0), backlog=0)
    port = listener.getsockname()[1]
    fillers = []
    try:
        for _ in range(4):  # fill the accept queue (never accepted)
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", port))
            fillers.append(s)
        time.sleep(0.2)
        with client(f"http://127.0.0.1:{port}/api") as c:
            assert timed_out(c) < 15
    finally:
        for s in fillers:
            s.close()
        listener.close()


# -- --once as a user runs it ----------------------------------------------------------------


def run_once(
    tmp_path: Path, api_url: str, env: dict[str, str] | None = None, **scaleengine
) -> tuple[int, str, str, float]:
    """``python -m exporter --once`` polling one app at ``api_url`` (timeout 1 s, default
    retries): (exit code, stdout, stderr, seconds). Fails if it has not ended in 60 s."""
    config = {
        "scaleengine": {
            "api_url": api_url,
            "cdn_id": 1,
            "api_key": KEY,
            "api_secret": SECRET,
            "timeout": "1s",
            **scaleengine,
        },
        "apps": ["app"],
        "poll": {"late_data_window": "off", "month_interval": "off"},
    }
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    for name in ("NO_PROXY", "no_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        base.pop(name, None)
    started = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--once", "--config", str(path)],
        capture_output=True, timeout=60, env={**base, **(env or {})}, cwd=ROOT,
    )  # fmt: skip
    seconds = time.monotonic() - started
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode(), seconds


def value(text: str, name: str, **labels: str) -> float | None:
    if "app" in labels:  # the single form's account: the cdn_id (no scaleengine.account)
        labels = {"account": "1", **labels}
    return samples(text).get((name, tuple(sorted(labels.items()))))


def assert_timed_out(code: int, out: str, err: str) -> None:
    assert code == 1, err[-2000:]
    assert value(out, "scaleengine_up", app="app") == 0
    assert value(out, "scaleengine_poll_errors_total", app="app", outcome="timeout") == 1
    # four tries (poll.retries 3), each cut at the deadline
    assert value(out, "scaleengine_api_requests_total", app="app", outcome="timeout") == 4
    assert "Traceback" not in err


def test_once_ends_on_an_answer_dripped_until_the_server_closes(tmp_path):
    """A close-delimited body dripped: it used to keep ``--once`` forever."""
    sent, dripped = PHASES["body_close_delimited"]
    with StandIn([dripping(dripped, sent=sent)]) as api:
        code, out, err, seconds = run_once(tmp_path, api.url)
    assert_timed_out(code, out, err)
    assert seconds < 45  # four tries of 1 s, back-off and interpreter start; unbounded: never


def test_once_ends_on_a_proxy_that_drips_its_connect_answer(tmp_path):
    """HTTPS_PROXY set, a proxy that accepts CONNECT and drips: it used to keep ``--once``
    forever (the CONNECT phase was outside the deadline)."""
    with StandIn([proxy_answer("connect_answer_dripped")]) as proxy:
        env = {"HTTPS_PROXY": f"http://127.0.0.1:{proxy.port}"}
        code, out, err, seconds = run_once(tmp_path, "https://api.scaleengine.net/api", env)
        heads = [head for _, head in proxy.requests]
    assert_timed_out(code, out, err)
    assert seconds < 45
    # four tries of app.list (it fails the same way; the poll goes on), four of the poll
    assert len(heads) == 8 and all(h.startswith(b"CONNECT api.scaleengine.net:443 ") for h in heads)


# -- a failure message that echoes the request (issue 15) ------------------------------------

LONG_KEY = "k3y/" + "0123456789abcdef" * 8  # the 200-character cut falls inside it


def key_pieces(text: str) -> list[str]:
    """Any 6 characters of LONG_KEY (as sent or as PHP escapes it) found in ``text``."""
    found = []
    for form in (LONG_KEY, LONG_KEY.replace("/", "\\/")):
        found += [form[i : i + 6] for i in range(len(form) - 5) if form[i : i + 6] in text]
    return found


def test_an_echoed_key_reaches_neither_log_nor_landing_page(tmp_path):
    """The simulator quotes the request in its failure message (the wrong, long key: 0001);
    the message is cut at 200 characters inside the key. Neither ``--once``'s log and output
    nor the daemon's landing page (open without a password) show any part of it."""
    from helpers import free_port, http_get, stop_process, wait_for

    from exporter.simulator import Simulator

    with Simulator(apps={"app": 3}) as sim:
        sim.echo_requests = True
        code, out, err, _ = run_once(tmp_path, sim.url, cdn_id=sim.cdn_id, api_key=LONG_KEY)
        assert code == 1, err[-2000:]
        errors = value(out, "scaleengine_poll_errors_total", account="4242", app="app",
                       outcome="api_0001")  # fmt: skip
        assert errors == 1
        assert '\\"api_key\\":\\"***' in err or '"api_key":"***' in err  # the echo was logged
        assert key_pieces(out + err) == []
        port = free_port()
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--config", str(tmp_path / "config.yaml"),
             "--web.listen-address", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT,
            env={k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")},
        )  # fmt: skip
        try:

            def landing() -> str | None:
                try:
                    status, _, body = http_get(f"http://127.0.0.1:{port}/", timeout=5)
                except OSError:
                    return None
                page = body.decode()
                return page if status == 200 and "CDN Authorization Failed" in page else None

            page = wait_for(landing, 30, "the landing page showing the failure")
        finally:
            stop_process(proc)
            logs = proc.stdout.read().decode() if proc.stdout else ""
    assert "api_key&quot;:&quot;***" in page or '"api_key":"***' in page
    assert key_pieces(page) == []
    assert key_pieces(logs) == []


# -- rows written as decimals; a poll whose every row is unusable (issue 15) -----------------


def page_answer(rows: list[str], count: int | None = None) -> Answer:
    """A usage.vse page of the given JSON rows (raw text), answered at once, kept alive."""
    body = (
        f'{{"status":"success","count":{len(rows) if count is None else count},'
        f'"usage":[{",".join(rows)}]}}'
    ).encode()

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        return True

    return answer


def row(url: str, nbytes: str, nrequests: str = '"1"') -> str:
    return f'{{"video_url":"{url}","bytes_total":{nbytes},"requests_total":{nrequests}}}'


def test_once_reads_integral_decimals_as_bytes(tmp_path):
    """ "2000.0", "2000.00", 2000.0 and "2e3": 8000 bytes, up 1, nothing skipped."""
    rows = [row("v/a", '"2000.0"'), row("v/b", '"2000.00"'), row("v/c", "2000.0"),
            row("v/d", '"2e3"')]  # fmt: skip
    with StandIn([page_answer(rows)]) as api:
        code, out, err, _ = run_once(tmp_path, api.url)
    assert code == 0, err[-2000:]
    assert value(out, "scaleengine_up", app="app") == 1
    assert value(out, "scaleengine_vse_app_day_bytes", app="app") == 8000
    assert value(out, "scaleengine_vse_day_bytes", app="app", video_url="v/a") == 2000
    assert not value(out, "scaleengine_vse_skipped_rows_total", app="app")


def test_once_a_poll_whose_every_row_is_unusable_is_a_failed_poll(tmp_path):
    """Rows came, none usable ("2000.5", 2**53 + 1, "abc"): not a healthy zero but a failed
    poll, outcome bad_response, up 0. One usable row among them keeps the poll good."""
    bad = [row("v/a", '"2000.5"'), row("v/b", '"9007199254740993"'), row("v/c", '"abc"')]
    with StandIn([page_answer(bad)]) as api:
        code, out, err, _ = run_once(tmp_path, api.url)
    assert code == 1, err[-2000:]
    assert value(out, "scaleengine_up", app="app") == 0
    assert value(out, "scaleengine_poll_errors_total", app="app", outcome="bad_response") == 1
    assert value(out, "scaleengine_vse_app_day_bytes", app="app") is None
    assert "all 3 rows of the answer are unusable" in err
    with StandIn([page_answer([*bad, row("v/d", '"9007199254740992"')])]) as api:
        code, out, err, _ = run_once(tmp_path, api.url)
    assert code == 0, err[-2000:]
    assert value(out, "scaleengine_up", app="app") == 1
    assert value(out, "scaleengine_vse_app_day_bytes", app="app") == 9007199254740992
    assert value(out, "scaleengine_vse_skipped_rows_total", app="app") == 3


# -- a poll's memory (issue 15 item 4) --------------------------------------------------------


def hostile_pages(api: StandIn) -> Answer:
    """Each request: 1000 rows, each a distinct 60 KB video_url, count 10**9 (a next page is
    always owed), pages that follow the overlap rule (each starts on the last row before its
    offset) so that nothing but the memory bound can end the fetch before max_pages."""

    def answer(conn: socket.socket, stop: threading.Event) -> bool:
        form = urllib.parse.parse_qs(api.bodies[-1].decode())
        request = json.loads(form["json"][0])
        if request["command"] == "app.list":
            body = b'{"status":"success","data":["app"]}'
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            return True
        offset = request["offset"]
        rows = ",".join(
            f'{{"video_url":"sestore/h/{"x" * 61_400}{n:012d}.mp4",'
            '"bytes_total":"1000","requests_total":"1"}'
            for n in range(offset, offset + 1000)
        )
        body = f'{{"status":"success","count":1000000000,"usage":[{rows}]}}'.encode()
        conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body))
        conn.sendall(body)
        return True

    return answer


def test_once_a_hostile_api_cannot_grow_the_poll_past_max_fetch_bytes(tmp_path):
    """Pages of 1000 distinct 60 KB URLs (61 MB each, under max_response_bytes) and count
    10**9: with max_fetch_bytes 2MiB, URLs cut to their 1024-byte labels as rows are read (1000
    videos cost 1,280,000 bytes), the fetch ends as too_large on the second page, not after
    max_pages (1000 pages, 61 GB), and the polling process stays under 400 MB RSS. Unbounded,
    every page would add 61 MB held (1.3 MB with the cut alone)."""
    api = StandIn([])
    api.answers = [hostile_pages(api)]
    with api:
        code, out, err, _, rss_mb = run_once_rss(tmp_path, api.url, max_fetch_bytes="2MiB")
        requests = sum(b"usage.vse" in body for body in api.bodies)
        listings = sum(b"app.list" in body for body in api.bodies)
    assert code == 1, err[-2000:]
    assert value(out, "scaleengine_up", app="app") == 0
    assert value(out, "scaleengine_poll_errors_total", app="app", outcome="too_large") == 1
    assert value(out, "scaleengine_api_requests_total", app="app", outcome="success") == 2
    assert requests == 2 and listings == 1
    assert "max_fetch_bytes" in err and "Traceback" not in err
    assert rss_mb < 400, f"peak RSS {rss_mb:.0f} MB"
    print(f"peak RSS of --once refusing a hostile fetch: {rss_mb:.0f} MB")


def run_once_rss(tmp_path: Path, api_url: str, **scaleengine) -> tuple[int, str, str, float, float]:
    """run_once, plus the peak RSS (MB) of that process (not of any other child)."""
    config = {
        "scaleengine": {"api_url": api_url, "cdn_id": 1, "api_key": KEY, "api_secret": SECRET,
                        "timeout": "30s", **scaleengine},
        "apps": ["app"],
        "poll": {"late_data_window": "off", "month_interval": "off"},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")}
    out, err = tmp_path / "stdout", tmp_path / "stderr"
    started = time.monotonic()
    with out.open("wb") as fo, err.open("wb") as fe:
        proc = subprocess.Popen(
            [sys.executable, "-m", "exporter", "--once", "--config", str(path)],
            stdout=fo, stderr=fe, env=env, cwd=ROOT,
        )  # fmt: skip
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - started > 120:
                proc.kill()
                proc.wait()
                pytest.fail(f"--once did not end within 120 s:\n{err.read_text()[-2000:]}")
            time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    seconds = time.monotonic() - started
    return proc.returncode, out.read_text(), err.read_text(), seconds, usage.ru_maxrss / 1024


@pytest.mark.parametrize(("size", "ok"), [("1MiB", True), ("1048575", False), ("1023KiB", False)])
def test_max_fetch_bytes_below_1_mib_is_refused(tmp_path, size, ok):
    config = {
        "scaleengine": {"api_url": "https://api.scaleengine.net/stable/", "cdn_id": 1,
                        "api_key": KEY, "api_secret": SECRET, "max_fetch_bytes": size},
        "apps": ["app"],
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    proc = subprocess.run(
        [sys.executable, "-m", "exporter", "--check-config", "--config", str(path)],
        capture_output=True, text=True, timeout=60, cwd=ROOT,
        env={k: v for k, v in os.environ.items() if not k.startswith("SCALEENGINE_")},
    )  # fmt: skip
    assert proc.returncode == (0 if ok else 2), proc.stderr
    if not ok:
        assert "max_fetch_bytes" in proc.stderr and "Traceback" not in proc.stderr
