"""The daemon's /metrics server under hostile clients, on loopback.

Each test starts ``python -m exporter`` (serving process + poll worker) against the simulator,
attacks it from this process with a bounded number of connections for a bounded time, and
scrapes it as a normal client meanwhile. Deadlines are generous (the machine is shared); the
assertions are about answers, not about speed.
"""

from __future__ import annotations

import asyncio
import base64
import http.client
import resource
import socket
import ssl
import statistics
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import bcrypt
import pytest
import yaml
from helpers import ROOT, free_port, make_pki, need_binary, sim_config, wait_for

from exporter.simulator import Simulator

# Floods of hundreds of connections, each with a scraper's deadline: never two at once
# (tests/parallel.py).
FLOODS = pytest.mark.serial("floods")

ATTACK_CONNECTIONS = 1500


@dataclass
class Daemon:
    host: str
    port: int
    proc: subprocess.Popen
    log: Path
    tls: ssl.SSLContext | None = None

    def connect(self, timeout: float) -> http.client.HTTPConnection:
        if self.tls is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=timeout, context=self.tls
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout)

    def get(self, path: str = "/metrics", timeout: float = 2.0, headers=None) -> tuple[int, bytes]:
        conn = self.connect(timeout)
        try:
            conn.request("GET", path, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def pids(self) -> list[int]:
        """The serving process and its poll worker."""
        children = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text()
        return [self.proc.pid, *map(int, children.split())]

    def tail(self) -> str:
        return self.log.read_text(errors="replace")[-3000:]


def _status_kb(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise AssertionError(f"{field} missing for {pid}")


@pytest.fixture
def sim() -> Iterator[Simulator]:
    s = Simulator()
    s.start()
    try:
        yield s
    finally:
        s.stop()


@pytest.fixture
def raised_nofile() -> Iterator[None]:
    """This process opens 1,500+ sockets: its own soft limit goes up to the hard one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < ATTACK_CONNECTIONS + 500:
        pytest.fail(f"the hard open-files limit ({hard}) is too low for this test", pytrace=False)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def start_daemon(
    tmp_path: Path,
    sim: Simulator,
    web_config: str | None = None,
    soft_nofile: int | None = None,
    ca: Path | None = None,
    limits: dict | None = None,
    hard_nofile: int | None = None,
    args: tuple[str, ...] = (),
    interval: str = "2s",
) -> Daemon:
    config = tmp_path / "config.yaml"
    data = sim_config(sim, poll={"interval": interval}, limits=limits or {})
    config.write_text(yaml.safe_dump(data))
    config.chmod(0o600)
    port = free_port()
    argv = [sys.executable, "-m", "exporter", "--config", str(config)]
    argv += ["--web.listen-address", f"127.0.0.1:{port}", "--log.level", "warning", *args]
    tls = None
    if web_config is not None:
        (tmp_path / "web.yml").write_text(web_config)
        argv += ["--web.config.file", str(tmp_path / "web.yml")]
    log = tmp_path / "exporter.log"

    def limit() -> None:  # the daemon starts with a low soft limit, as under many inits
        if soft_nofile is not None:
            hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, hard))
        if hard_nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard_nofile, hard_nofile))

    with log.open("wb") as out:
        proc = subprocess.Popen(
            argv, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, preexec_fn=limit
        )
    if ca is not None:
        tls = ssl.create_default_context(cafile=str(ca))
    daemon = Daemon("127.0.0.1", port, proc, log, tls)
    deadline = time.monotonic() + 30
    while True:
        try:
            status, body = daemon.get(timeout=5, headers=_auth_header(web_config))
            if status == 200 and b"scaleengine_up{" in body and b"} 1" in body:
                return daemon
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            stop_daemon(daemon)
            pytest.fail(f"the exporter did not start serving:\n{daemon.tail()}")
        time.sleep(0.2)


def _auth_header(web_config: str | None) -> dict[str, str]:
    if web_config and "basic_auth_users" in web_config:
        return {"Authorization": "Basic " + base64.b64encode(b"prom:right").decode()}
    return {}


def stop_daemon(daemon: Daemon) -> None:
    if daemon.proc.poll() is None:
        daemon.proc.terminate()
        try:
            daemon.proc.wait(15)
        except subprocess.TimeoutExpired:
            daemon.proc.kill()
            daemon.proc.wait(5)


class Attack:
    """``count`` connections run by an asyncio loop in a thread for at most ``seconds``; each
    runs ``behaviour(reader, writer)`` and reconnects when the server closes it."""

    def __init__(self, daemon: Daemon, count: int, seconds: float, behaviour) -> None:
        self.daemon = daemon
        self.count = count
        self.seconds = seconds
        self.behaviour = behaviour
        self.connects = 0
        self.open = 0
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main()), daemon=True)

    async def _one(self, deadline: float) -> None:
        while time.monotonic() < deadline and not self._stop.is_set():
            try:
                reader, writer = await asyncio.open_connection(self.daemon.host, self.daemon.port)
            except OSError:
                await asyncio.sleep(0.5)
                continue
            self.connects += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
            try:
                await asyncio.wait_for(
                    self.behaviour(reader, writer), max(0.1, deadline - time.monotonic())
                )
            except (TimeoutError, OSError, asyncio.IncompleteReadError):
                pass
            finally:
                self.open -= 1
                writer.transport.abort()

    async def _main(self) -> None:
        deadline = time.monotonic() + self.seconds
        tasks = []
        for i in range(self.count):
            tasks.append(asyncio.create_task(self._one(deadline)))
            if i % 100 == 99:
                await asyncio.sleep(0.05)  # ramp up over a second or so
        await asyncio.gather(*tasks, return_exceptions=True)

    def __enter__(self) -> Attack:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.seconds + 30)


async def slow_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """A request head trickled one header line every 2 s, never finished."""
    writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
    i = 0
    while True:
        await writer.drain()
        if reader.at_eof():
            return
        try:
            if await asyncio.wait_for(reader.read(1024), 2.0) == b"":
                return  # the server closed it (at its head deadline, with or without a 408)
        except TimeoutError:
            pass
        i += 1
        writer.write(f"X-Drip-{i}: {'d' * 20}\r\n".encode())


async def stalled_tls_handshake(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
    """The first 3 bytes of a ClientHello, then nothing."""
    writer.write(b"\x16\x03\x01")
    await writer.drain()
    await reader.read(1024)  # returns when the server gives up on the handshake


def scrape_during(daemon: Daemon, attack: Attack, count: int = 20) -> list[float | None]:
    """``count`` scrapes one second apart, each on a new connection: the seconds each took,
    or None when it failed or took longer than 2 s."""
    deadline = time.monotonic() + 20  # let the attack reach full strength first
    while attack.peak < attack.count * 0.9 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(2)
    results: list[float | None] = []
    for _ in range(count):
        started = time.monotonic()
        try:
            status, body = daemon.get(timeout=2.0)
            took = time.monotonic() - started
            results.append(took if status == 200 and b"scaleengine_up" in body else None)
        except (OSError, http.client.HTTPException):
            results.append(None)
        time.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return results


def report(name: str, results: list[float | None], attack: Attack) -> None:
    ok = [r for r in results if r is not None and r <= 2.0]
    med = statistics.median(ok) if ok else float("nan")
    print(
        f"{name}: {len(ok)}/{len(results)} scrapes within 2 s (median {med * 1000:.0f} ms); "
        f"attack: {attack.connects} connections made, {attack.peak} open at peak"
    )
    assert len(ok) >= 18, f"{name}: only {len(ok)} of {len(results)} scrapes answered in 2 s"


@FLOODS
def test_slow_request_heads_do_not_lock_out_scrapers(tmp_path, sim, raised_nofile):
    daemon = start_daemon(tmp_path, sim)
    try:
        with Attack(daemon, ATTACK_CONNECTIONS, 45, slow_head) as attack:
            results = scrape_during(daemon, attack)
        report("slow heads", results, attack)
        # the head deadline cut the dripping connections, which came back: more connects
        assert attack.connects > ATTACK_CONNECTIONS
    finally:
        stop_daemon(daemon)


@FLOODS
def test_stalled_tls_handshakes_do_not_lock_out_scrapers(tmp_path, sim, raised_nofile):
    pki = make_pki(tmp_path)
    web = (
        f"tls_server_config:\n  cert_file: {pki['server_cert']}\n  key_file: {pki['server_key']}\n"
    )
    daemon = start_daemon(tmp_path, sim, web, ca=pki["ca"])
    try:
        with Attack(daemon, ATTACK_CONNECTIONS, 45, stalled_tls_handshake) as attack:
            results = scrape_during(daemon, attack)
        report("stalled TLS handshakes", results, attack)
    finally:
        stop_daemon(daemon)


@FLOODS
def test_huge_request_heads_are_cut_and_memory_stays_bounded(tmp_path, sim, raised_nofile):
    """200 connections each sending 6 MB of header lines: 431, and under 200 MB RSS."""
    daemon = start_daemon(tmp_path, sim)
    answers: list[bytes] = []
    line = b"X-Big: " + b"b" * (64 * 1024 - 9) + b"\r\n"

    async def huge_head(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(b"GET /metrics HTTP/1.1\r\nHost: x\r\n")
        try:
            for _ in range(6 * 1024 * 1024 // len(line)):
                writer.write(line)
                await writer.drain()
        except OSError:
            pass
        try:
            answers.append(await reader.read(200))
        except OSError:
            pass
        await asyncio.sleep(3600)  # one round each: _one's deadline ends it

    try:
        pids = daemon.pids()
        assert len(pids) == 2, pids
        with Attack(daemon, 200, 20, huge_head) as attack:
            time.sleep(2)
            scraped = [daemon.get(timeout=10)[0] for _ in range(5)]
        peak_mb = sum(_status_kb(pid, "VmHWM") for pid in pids) / 1024
        now_mb = sum(_status_kb(pid, "VmRSS") for pid in pids) / 1024
        print(
            f"huge heads: {attack.connects} connections; "
            f"serving + worker RSS peak {peak_mb:.0f} MB, now {now_mb:.0f} MB; scrapes {scraped}"
        )
        assert scraped == [200] * 5
        assert peak_mb < 200, f"serving process + worker peaked at {peak_mb:.0f} MB"
        # one head over 16 KiB, sent whole: the client reads its 431
        got = _exchange(
            daemon, b"GET /metrics HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 17000 + b"\r\n\r\n"
        )
        assert got.startswith(b"HTTP/1.1 431 "), got[:200]
    finally:
        stop_daemon(daemon)


def _exchange(daemon: Daemon, raw: bytes, wait: float = 2.0) -> bytes:
    """Send ``raw`` and read whatever comes back for ``wait`` seconds (or until close)."""
    with socket.create_connection((daemon.host, daemon.port), timeout=wait) as s:
        s.sendall(raw)
        got = b""
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (TimeoutError, ConnectionResetError):
                break
            if not chunk:
                break
            got += chunk
        return got


def test_a_request_body_is_never_parsed_as_a_request(tmp_path, sim):
    daemon = start_daemon(tmp_path, sim)
    smuggled = b"GET /-/ready HTTP/1.1\r\nHost: x\r\n\r\n"
    try:
        cases = {
            "POST with Content-Length": b"POST /metrics HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled,
            "GET with Content-Length": b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n"
            + f"Content-Length: {len(smuggled)}\r\n\r\n".encode()
            + smuggled,
            "POST chunked": b"POST /metrics HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n"
            + f"\r\n{len(smuggled):x}\r\n".encode()
            + smuggled
            + b"\r\n0\r\n\r\n",
        }
        for name, raw in cases.items():
            got = _exchange(daemon, raw)
            answers = got.count(b"HTTP/1.1 ")
            assert answers == 1, f"{name}: {answers} answers on one connection:\n{got[:400]!r}"
            assert b"Ready" not in got, name
        # a body over the cap: 413 and the connection closes
        big = b"POST /-/reload HTTP/1.1\r\nHost: x\r\nContent-Length: 10000000\r\n\r\n"
        got = _exchange(daemon, big + b"x" * 200_000)
        assert got.startswith(b"HTTP/1.1 413 "), got[:200]
        # and two pipelined GETs still get two answers, in order
        got = _exchange(daemon, b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" * 2)
        assert got.count(b"HTTP/1.1 200 ") == 2
    finally:
        stop_daemon(daemon)


def test_open_files_limit_raised_and_idle_connections_do_not_starve(tmp_path, sim):
    """The daemon starts with a soft limit of 256; it raises it to the hard limit, so 600 idle
    keep-alive connections leave room for a scraper."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    daemon = start_daemon(tmp_path, sim, soft_nofile=256)
    idle: list[socket.socket] = []
    try:
        limits = Path(f"/proc/{daemon.proc.pid}/limits").read_text()
        row = next(r for r in limits.splitlines() if r.startswith("Max open files"))
        soft_now = row.split()[3]
        assert soft_now == str(hard) or (soft_now == "unlimited" and hard == -1), row
        for _ in range(600):
            s = socket.create_connection((daemon.host, daemon.port), timeout=10)
            s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(s)
        for s in idle:
            assert s.recv(4096).startswith(b"HTTP/1.1 200 ")  # answered; now idle, kept alive
        assert [daemon.get(timeout=10)[0] for _ in range(3)] == [200] * 3
    finally:
        for s in idle:
            s.close()
        stop_daemon(daemon)


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_basic_auth_time_does_not_tell_users_apart(tmp_path, sim):
    """An unknown user and a wrong password cost the same bcrypt time, even for a user whose
    hash has a lower cost than the others'."""
    strong = bcrypt.hashpw(b"right", bcrypt.gensalt(9)).decode()
    weak = bcrypt.hashpw(b"right", bcrypt.gensalt(4)).decode()
    web = f"basic_auth_users:\n  prom: '{strong}'\n  weak: '{weak}'\n"
    daemon = start_daemon(tmp_path, sim, web)

    def timed(user: str, password: str) -> float:
        header = {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode())
                  .decode()}  # fmt: skip
        started = time.perf_counter()
        status, _ = daemon.get("/metrics", timeout=10, headers=header)
        assert status == 401
        return time.perf_counter() - started

    try:
        rounds = {"unknown": [], "weak-wrong": [], "strong-wrong": []}
        for i in range(9):  # interleaved, so load on the machine hits all three alike
            rounds["unknown"].append(timed(f"nobody{i}", "x"))
            rounds["weak-wrong"].append(timed("weak", f"wrong{i}"))
            rounds["strong-wrong"].append(timed("prom", f"wrong{i}"))
        med = {k: statistics.median(v) for k, v in rounds.items()}
        print("median 401 ms: " + ", ".join(f"{k} {v * 1000:.1f}" for k, v in med.items()))
        for name in ("weak-wrong", "strong-wrong"):
            ratio = max(med[name], med["unknown"]) / min(med[name], med["unknown"])
            assert ratio < 3, f"{name} vs unknown user: {ratio:.1f}x ({med})"
        assert daemon.get(headers=_auth_header(web), timeout=10)[0] == 200
    finally:
        stop_daemon(daemon)


def test_worker_memory_and_cpu_are_visible(tmp_path, sim):
    daemon = start_daemon(tmp_path, sim)
    try:
        worker = daemon.pids()[1]

        def worker_lines() -> dict[str, str] | None:
            _, body = daemon.get(timeout=10)
            lines = dict(
                line.rsplit(" ", 1)
                for line in body.decode().splitlines()
                if line.startswith("scaleengine_worker_")
            )
            # the live part is rendered at most once a second: the first may predate the
            # worker's first clock tick of CPU on a loaded machine
            # (or come before the daemon knows the worker's pid: no line yet)
            return (
                lines if float(lines.get("scaleengine_worker_cpu_seconds_total", 0)) > 0 else None
            )

        lines = wait_for(worker_lines, 10, "the worker's CPU time above 0")
        rss = float(lines["scaleengine_worker_resident_memory_bytes"])
        assert abs(rss / 1024 - _status_kb(worker, "VmRSS")) < 20 * 1024  # within 20 MB
    finally:
        stop_daemon(daemon)


@FLOODS
def test_pipelining_clients_do_not_hold_the_loop(tmp_path, sim):
    """6 connections pipelining thousands of cheap requests (reading the answers): each gets
    only a few answers in a row before other connections' turn, so scrapes stay quick."""
    daemon = start_daemon(tmp_path, sim)
    batch = b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n" * 2000

    async def pipeline(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            writer.write(batch)
            await writer.drain()
            await reader.read(1 << 20)

    try:
        with Attack(daemon, 6, 16, pipeline) as attack:
            results = scrape_during(daemon, attack, count=10)
        ok = [r for r in results if r is not None]
        print(f"pipelining: {len(ok)}/10 scrapes within 2 s; {attack.connects} connections")
        assert len(ok) >= 9, f"only {len(ok)} of 10 scrapes answered within 2 s"
    finally:
        stop_daemon(daemon)


def test_silent_connections_are_cut_at_the_head_deadline(tmp_path, sim):
    """A connection that never sends a byte owes its first head like any other: it is closed
    at the head deadline (5 s), not kept for the keep-alive idle time (60 s)."""
    daemon = start_daemon(tmp_path, sim)
    try:
        s = socket.create_connection((daemon.host, daemon.port), timeout=30)
        started = time.monotonic()
        try:
            assert s.recv(4096) == b""  # closed by the server (not by our 30 s timeout)
        except ConnectionResetError:
            pass
        finally:
            s.close()
        assert time.monotonic() - started < 20
    finally:
        stop_daemon(daemon)


def test_expect_100_continue_and_double_framing(tmp_path, sim):
    daemon = start_daemon(tmp_path, sim)
    try:
        with socket.create_connection((daemon.host, daemon.port), timeout=10) as s:
            s.sendall(
                b"POST /metrics HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
                b"Content-Length: 5\r\n\r\n"
            )
            assert s.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")
            s.sendall(b"hello")
            assert b"HTTP/1.1 405 " in s.recv(4096)
        # Content-Length and Transfer-Encoding together: refused, never answered twice
        raw = (
            b"POST /x HTTP/1.1\r\nHost: x\r\nContent-Length: 40\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n"
        )
        got = _exchange(daemon, raw)
        assert got.startswith(b"HTTP/1.1 400 ") and got.count(b"HTTP/1.1 ") == 1, got[:300]
    finally:
        stop_daemon(daemon)


def test_a_big_body_to_a_slow_reader_arrives_whole(tmp_path):
    """A stored body of megabytes (sent from the worker's file) to a client that reads slowly
    through a small receive buffer: what sendfile cannot send at once follows, to the byte."""
    rows = [(f"https://cdn.example/video-{i:05d}.mp4", 10**6 + i, i % 7) for i in range(80000)]
    with Simulator(apps={"big": 1}, static_rows={"big": rows}) as big:
        big.start()
        daemon = start_daemon(tmp_path, big, limits={"max_videos_per_app": 80000})
        try:
            deadline = time.monotonic() + 60
            while b"video-79999" not in daemon.get(timeout=10)[1]:  # the first poll's series
                assert time.monotonic() < deadline, "the big app's series never came"
                time.sleep(0.2)
            s = socket.socket()
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16384)
            s.settimeout(20)
            s.connect((daemon.host, daemon.port))
            s.sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            raw = bytearray()
            for i in range(100_000):
                chunk = s.recv(65536)
                if not chunk:
                    break
                raw += chunk
                if i < 50:
                    time.sleep(0.01)  # slow at first: the socket's buffers fill up
            s.close()
            head, _, body = bytes(raw).partition(b"\r\n\r\n")
            length = int(next(
                line.split(b":")[1] for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            ))  # fmt: skip
            assert length > 2_000_000 and len(body) == length
            assert body.count(b'scaleengine_vse_day_bytes{account="4242",app="big"') == 80000
        finally:
            stop_daemon(daemon)


def _rss_mb(pid: int) -> float:
    return _status_kb(pid, "VmRSS") / 1024


@pytest.fixture
def big_sim() -> Iterator[Simulator]:
    """One app of 70,000 videos: an exposition of about 12 MB."""
    rows = [(f"https://cdn.example/video-{i:05d}.mp4", 10**6 + i, i % 7) for i in range(70000)]
    with Simulator(apps={"big": 1}, static_rows={"big": rows}) as s:
        s.start()
        yield s


def _tls_web(tmp_path: Path) -> tuple[str, dict[str, Path]]:
    pki = make_pki(tmp_path)
    web = (
        f"tls_server_config:\n  cert_file: {pki['server_cert']}\n  key_file: {pki['server_key']}\n"
    )
    return web, pki


def _wait_for_big(daemon: Daemon) -> int:
    """Wait for the big app's series; the exposition's size."""
    deadline = time.monotonic() + 60
    while True:
        body = daemon.get(timeout=20)[1]
        if b"video-69999" in body:
            return len(body)
        assert time.monotonic() < deadline, "the big app's series never came"
        time.sleep(0.2)


def _non_reader(daemon: Daemon, path: str = "/metrics") -> ssl.SSLSocket:
    """A TLS client that finishes the handshake, asks for ``path`` and never reads."""
    assert daemon.tls is not None
    raw = socket.socket()
    raw.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the kernel takes little of it
    raw.settimeout(10)
    raw.connect((daemon.host, daemon.port))
    s = daemon.tls.wrap_socket(raw, server_hostname="localhost")
    s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    return s


@FLOODS
def test_tls_clients_that_never_read_hold_little_memory(tmp_path, big_sim, raised_nofile):
    """100 TLS clients ask for a 12 MB exposition and never read: the serving process sends
    it in pieces as the client reads, so it holds a few pieces per client, not the answer;
    scrapes go on; after they close, the memory goes back to the OS."""
    web, pki = _tls_web(tmp_path)
    daemon = start_daemon(
        tmp_path, big_sim, web, ca=pki["ca"], limits={"max_videos_per_app": 70000}
    )
    clients: list[ssl.SSLSocket] = []
    try:
        size = _wait_for_big(daemon)
        assert size > 11_000_000, size
        before = _rss_mb(daemon.proc.pid)
        for _ in range(100):
            clients.append(_non_reader(daemon))
        peak = 0.0
        scraped = []
        for _ in range(6):
            time.sleep(0.5)
            peak = max(peak, _rss_mb(daemon.proc.pid))
            status, body = daemon.get(timeout=20)
            scraped.append((status, len(body) > 11_000_000))
        peak = max(peak, _rss_mb(daemon.proc.pid))
        for s in clients:
            s.close()
        clients.clear()
        time.sleep(3)  # the server sees them go; the sweep gives the memory back
        after = _rss_mb(daemon.proc.pid)
        print(
            f"TLS non-readers: exposition {size / 1e6:.1f} MB; serving process RSS "
            f"{before:.0f} MB before, {peak:.0f} MB peak with 100 of them, {after:.0f} MB after"
        )
        assert scraped == [(200, True)] * 6
        assert peak < 300, f"the serving process reached {peak:.0f} MB"
        # what they used is handed back (malloc_trim): without it RSS stays at its peak
        assert peak - after >= 5, f"{after:.0f} MB after they closed, {peak:.0f} MB at peak"
        assert after < before + 40, f"{after:.0f} MB after they closed ({before:.0f} before)"
    finally:
        for s in clients:
            s.close()
        stop_daemon(daemon)


def _idle_keepalive(daemon: Daemon) -> socket.socket:
    """A connection that asks for /-/healthy, reads the answer and stays open, idle."""
    s = socket.create_connection((daemon.host, daemon.port), timeout=10)
    s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    return s


def _closed_by_server(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except BlockingIOError:
        return False
    except ConnectionResetError:
        return True
    finally:
        s.setblocking(True)


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_idle_connections_give_way_to_a_scraper_at_the_cap(tmp_path, sim):
    """With a hard open-files limit of 400, the cap is 272 connections (400 - 128). 272 idle
    keep-alive connections fill it and all stay open; then a scraper still gets its answer,
    because the connection idle longest is closed for it, and the next newcomer closes the
    next oldest."""
    daemon = start_daemon(tmp_path, sim, hard_nofile=400)
    idle: list[socket.socket] = []
    try:
        for _ in range(272):
            idle.append(_idle_keepalive(daemon))
        time.sleep(0.5)
        assert [_closed_by_server(s) for s in idle] == [False] * 272  # at the cap, all in
        status, _ = daemon.get(timeout=10, headers={"Connection": "close"})
        assert status == 200
        time.sleep(0.5)  # the server closes the scraper's connection and the oldest idle one
        assert [_closed_by_server(s) for s in idle] == [True] + [False] * 271
        idle.append(_idle_keepalive(daemon))  # takes the scraper's place
        idle.append(_idle_keepalive(daemon))  # one over: the next oldest gives way
        time.sleep(0.5)
        assert [_closed_by_server(s) for s in idle] == [True, True] + [False] * 272
    finally:
        for s in idle:
            s.close()
        stop_daemon(daemon)


def _wrong(user: str = "prom") -> bytes:
    token = base64.b64encode(f"{user}:wrong".encode()).decode()
    return f"GET /metrics HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {token}\r\n\r\n".encode()


def _statuses_of_simultaneous_checks(
    daemon: Daemon, sources: list[str], anonymous: bool = False
) -> list[int]:
    """One wrong-password request from each source address, all sent within a few
    milliseconds (a bcrypt check of cost 12 takes a third of a second), then, if
    ``anonymous``, one without credentials from 127.0.0.3: their statuses."""
    conns = [
        socket.create_connection((daemon.host, daemon.port), 30, source_address=(src, 0))
        for src in sources + (["127.0.0.3"] if anonymous else [])
    ]
    try:
        for c in conns[: len(sources)]:
            c.sendall(_wrong())
        if anonymous:
            conns[-1].sendall(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        return sorted(int(c.recv(4096).split(b" ", 2)[1]) for c in conns)
    finally:
        for c in conns:
            c.close()


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_pending_password_checks_are_bounded(tmp_path, sim):
    """At most 8 bcrypt checks wait or run at once, 4 from one address: the next gets 429
    (with Retry-After) at once instead of queueing."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(12)).decode()
    daemon = start_daemon(tmp_path, sim, f"basic_auth_users:\n  prom: '{hashed}'\n")
    try:
        one, two, three = "127.0.0.1", "127.0.0.2", "127.0.0.3"
        assert _statuses_of_simultaneous_checks(daemon, [one] * 4) == [401] * 4
        assert _statuses_of_simultaneous_checks(daemon, [one] * 5) == [401] * 4 + [429]
        assert _statuses_of_simultaneous_checks(daemon, [one] * 4 + [two] * 4) == [401] * 8
        got = _statuses_of_simultaneous_checks(daemon, [one] * 4 + [two] * 4 + [three])
        assert got == [401] * 8 + [429]
        # a request without credentials has nothing to check: 401 at once, even now
        got = _statuses_of_simultaneous_checks(daemon, [one] * 4 + [two] * 4, anonymous=True)
        assert got == [401] * 9
        # every place was given back, also by clients that hung up (reset) during their check
        hung = [socket.create_connection((daemon.host, daemon.port), 30) for _ in range(8)]
        for c in hung:
            c.sendall(_wrong())
        time.sleep(0.2)
        for c in hung:
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
        time.sleep(6)  # 8 checks of a third of a second, 2 at a time, on a busy machine
        assert _statuses_of_simultaneous_checks(daemon, [one] * 4) == [401] * 4
    finally:
        stop_daemon(daemon)


@FLOODS
def test_a_flood_of_wrong_passwords_does_not_hold_up_a_scraper(tmp_path, sim, raised_nofile):
    """300 connections sending wrong passwords as fast as they are answered: without a bound
    the checks queue up for many seconds; with it, a scraper at another address is
    answered 200 within 10 s."""
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(10)).decode()
    # "prom" is how start_daemon checks the daemon is up (and so cached); the scraper logs in
    # as "scraper" for the first time, as after a restart: its password needs bcrypt
    web = f"basic_auth_users:\n  prom: '{hashed}'\n  scraper: '{hashed}'\n"
    daemon = start_daemon(tmp_path, sim, web)
    login = {"Authorization": "Basic " + base64.b64encode(b"scraper:right").decode()}
    statuses: dict[int, int] = {}

    async def wrong_passwords(reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        while True:
            writer.write(_wrong())
            await writer.drain()
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            statuses[status] = statuses.get(status, 0) + 1
            length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
            await reader.readexactly(length)
            if status == 429:
                assert b"\r\nRetry-After: 1\r\n" in head
                await asyncio.sleep(0.05)

    try:
        with Attack(daemon, 300, 20, wrong_passwords) as attack:
            deadline = time.monotonic() + 20
            while attack.peak < 290 and time.monotonic() < deadline:
                time.sleep(0.2)
            time.sleep(2)
            started = time.monotonic()
            conn = http.client.HTTPConnection(
                daemon.host, daemon.port, timeout=10, source_address=("127.0.0.2", 0)
            )
            try:
                conn.request("GET", "/metrics", headers=login)
                resp = conn.getresponse()
                status, body = resp.status, resp.read()
            finally:
                conn.close()
            took = time.monotonic() - started
        print(f"password flood: scraper answered {status} in {took:.2f} s; flood got {statuses}")
        assert status == 200 and b"scaleengine_up" in body
        assert statuses.get(429, 0) > 0 and statuses.get(401, 0) > 0
    finally:
        stop_daemon(daemon)


def _reloaded_at(daemon: Daemon) -> str:
    """The last successful reload's time, as scraped 1.5 s from now (the live metrics are
    rendered at most once a second)."""
    time.sleep(1.5)
    _, body = daemon.get(timeout=10)
    name = b"\nscaleengine_exporter_config_last_reload_success_timestamp_seconds "
    return body.split(name, 1)[1].split(b"\n", 1)[0].decode()


def _post_reload(daemon: Daemon, headers: dict[str, str], body: bytes = b"") -> tuple[int, bytes]:
    conn = daemon.connect(10)
    try:
        conn.request("POST", "/-/reload", body=body or None, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_reload_refuses_what_a_browser_sends_cross_site(tmp_path, sim):
    """POST /-/reload with --web.enable-lifecycle: forms' content types, Sec-Fetch-Site other
    than same-origin/none and an Origin of another host are refused with 403 and nothing is
    reloaded; curl -X POST and same-origin requests reload."""
    daemon = start_daemon(tmp_path, sim, args=("--web.enable-lifecycle",))
    host = f"{daemon.host}:{daemon.port}"
    refused = {
        "form": ({"Content-Type": "application/x-www-form-urlencoded"}, b"a=b"),
        "multipart": ({"Content-Type": "multipart/form-data; boundary=x"}, b"--x--\r\n"),
        "text/plain": ({"Content-Type": "text/plain;charset=UTF-8"}, b"a=b"),
        "cross-site": ({"Sec-Fetch-Site": "cross-site"}, b""),
        "same-site": ({"Sec-Fetch-Site": "same-site"}, b""),
        "other origin": ({"Origin": "http://evil.example"}, b""),
        "null origin": ({"Origin": "null"}, b""),
        "cross-site, origin faked": (
            {"Sec-Fetch-Site": "cross-site", "Origin": f"http://{host}"},
            b"",
        ),
    }
    try:
        before = _reloaded_at(daemon)
        for name, (headers, body) in refused.items():
            status, text = _post_reload(daemon, headers, body)
            assert status == 403, (name, status, text)
            assert text.startswith(b"Forbidden: ") and (b"cross-" in text or b"form" in text)
        assert _reloaded_at(daemon) == before  # none of them reloaded
        curl = subprocess.run(
            ["curl", "-sS", "-X", "POST", "-w", " %{http_code}", f"http://{host}/-/reload"],
            capture_output=True,
            timeout=30,
        )
        assert curl.stdout.endswith(b" 200"), curl
        after_curl = _reloaded_at(daemon)
        assert after_curl != before
        accepted = [
            {"Sec-Fetch-Site": "same-origin", "Origin": f"http://{host}"},
            {"Sec-Fetch-Site": "none"},
            {"Origin": f"http://{host}"},
            {"Content-Type": "application/json"},
        ]
        for headers in accepted:
            assert (
                _post_reload(daemon, headers, b"{}" if "Content-Type" in headers else b"")[0] == 200
            ), headers
        assert _reloaded_at(daemon) != after_curl
    finally:
        stop_daemon(daemon)


def test_a_cross_site_form_in_a_real_browser_cannot_reload(tmp_path, sim):
    """Headless chromium opens a page of another site (http://localhost:...) whose form posts
    itself to the exporter's /-/reload (at 127.0.0.1): the browser shows the 403 and nothing
    is reloaded."""
    import http.server

    chromium = need_binary("chromium", "chromium")
    daemon = start_daemon(tmp_path, sim, args=("--web.enable-lifecycle",))
    page = (
        f'<html><body><form id="f" method="POST" action="http://{daemon.host}:{daemon.port}'
        '/-/reload"><input name="a" value="b"></form>'
        '<script>document.getElementById("f").submit()</script></body></html>'
    ).encode()

    class Page(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Content-Length", str(len(page)))
            self.end_headers()
            self.wfile.write(page)

        def log_message(self, *args: object) -> None:
            pass

    other_site = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=other_site.serve_forever, daemon=True).start()
    try:
        before = _reloaded_at(daemon)
        result = subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
             "--dump-dom", f"http://localhost:{other_site.server_address[1]}/"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        assert "Forbidden: cross-site request" in result.stdout, result.stdout[-2000:]
        assert _reloaded_at(daemon) == before
    finally:
        other_site.shutdown()
        other_site.server_close()
        stop_daemon(daemon)


@FLOODS
def test_answers_under_way_are_bounded_and_stalled_ones_give_way(tmp_path, big_sim, raised_nofile):
    """At most 256 answers are sent in pieces at once. 255 TLS clients that never read the
    12 MB exposition leave a place for a scraper; with 256, the scraper's answer takes the
    place of the one not read for longest (closed), instead of waiting for the 30 s send
    timeout."""
    web, pki = _tls_web(tmp_path)
    daemon = start_daemon(
        tmp_path, big_sim, web, ca=pki["ca"], limits={"max_videos_per_app": 70000}
    )
    clients: list[ssl.SSLSocket] = []
    closed = "closed the one not read for longest"
    try:
        _wait_for_big(daemon)
        for _ in range(255):
            clients.append(_non_reader(daemon))
        time.sleep(3)  # all 255 are answering, and stalled
        status, body = daemon.get(timeout=20)
        assert status == 200 and len(body) > 11_000_000
        assert closed not in daemon.log.read_text(errors="replace")
        clients.append(_non_reader(daemon))  # the 256th
        time.sleep(3)
        started = time.monotonic()
        status, body = daemon.get(timeout=10)  # not behind the others' 30 s send timeout
        took = time.monotonic() - started
        print(f"256 stalled answers: a scraper answered in {took:.1f} s")
        assert status == 200 and len(body) > 11_000_000
        assert daemon.log.read_text(errors="replace").count(closed) == 1, daemon.tail()
    finally:
        for s in clients:
            s.close()
        stop_daemon(daemon)


@pytest.mark.alone  # timing: no neighbour (tests/conftest.py)
def test_a_flood_of_landing_pages_does_not_slow_scrapes(tmp_path):
    """5,000 apps (a landing page of 2 MB, about 90 ms to render): 8 connections asking for
    "/" back to back leave the scrapes' median within a generous multiple of the quiet one
    (it was 0.86 s when every "/" was rendered in the event loop)."""
    apps = {f"app-{i:04d}": 1 for i in range(5000)}
    with Simulator(apps=apps) as many:
        many.start()
        daemon = start_daemon(tmp_path, many, interval="10m")

        def scrapes() -> float:
            conn = daemon.connect(30)
            took = []
            try:
                for _ in range(20):
                    started = time.monotonic()
                    conn.request("GET", "/metrics")
                    assert conn.getresponse().read()
                    took.append(time.monotonic() - started)
                    time.sleep(0.1)
            finally:
                conn.close()
            return statistics.median(took)

        pages = [0]

        async def landing(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            while True:
                writer.write(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
                await writer.drain()
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                await reader.readexactly(length)
                pages[0] += 1

        try:
            assert b"app-4999" in daemon.get("/", timeout=30)[1]
            quiet = scrapes()
            with Attack(daemon, 8, 12, landing):
                time.sleep(1)
                busy = scrapes()
            print(
                f"landing flood: {pages[0]} pages; scrape median {quiet * 1000:.1f} ms quiet, "
                f"{busy * 1000:.1f} ms in the flood"
            )
            assert pages[0] >= 20
            assert busy < 10 * quiet + 0.1, f"median {busy:.3f} s in the flood, {quiet:.3f} quiet"
        finally:
            stop_daemon(daemon)


def _idle_tls(daemon: Daemon) -> ssl.SSLSocket:
    assert daemon.tls is not None
    raw = socket.create_connection((daemon.host, daemon.port), timeout=10)
    s = daemon.tls.wrap_socket(raw, server_hostname="localhost")
    s.sendall(b"GET /-/healthy HTTP/1.1\r\nHost: x\r\n\r\n")
    assert s.recv(4096).startswith(b"HTTP/1.1 200 ")
    return s


def test_tls_idle_connections_give_way_without_holding_descriptors(tmp_path, sim):
    """Through TLS too: 272 idle connections fill the cap (hard limit 400), then 200 more
    arrive one by one, each closing the oldest idle one. A closed TLS connection must not
    keep its descriptor while it waits for a goodbye the idle client never sends, or the
    128 spare descriptors run out and new connections fail."""
    web, pki = _tls_web(tmp_path)
    daemon = start_daemon(tmp_path, sim, web, ca=pki["ca"], hard_nofile=400)
    idle: list[ssl.SSLSocket] = []
    try:
        for _ in range(272 + 200):
            idle.append(_idle_tls(daemon))
        assert daemon.get(timeout=10)[0] == 200
        fds = len(list(Path(f"/proc/{daemon.proc.pid}/fd").iterdir()))
        print(f"TLS idle connections: {fds} descriptors open in the serving process")
        assert fds < 400
    finally:
        for s in idle:
            s.close()
        stop_daemon(daemon)


# -- plain HTTP to the TLS port -----------------------------------------------------------------
def _plain(daemon: Daemon, sent: bytes) -> tuple[bytes, float]:
    """Send ``sent`` without TLS; everything the server answers until it closes, and the
    seconds it took to close (20 s at most: a server that never closes fails the caller). A
    close with bytes left unread may come as a reset."""
    started = time.monotonic()
    got = b""
    with socket.create_connection((daemon.host, daemon.port), timeout=20) as s:
        if sent:
            s.sendall(sent)
        try:
            while chunk := s.recv(4096):
                got += chunk
        except ConnectionResetError:
            pass
        except TimeoutError:
            return got, float("inf")  # never closed
    return got, time.monotonic() - started


def test_plain_http_to_the_tls_port_gets_go_s_400_and_tls_still_works(tmp_path, sim):
    """As Go's exporters answer it (exporter-toolkit, net/http), then closed; scrapes over
    TLS, with basic auth, go on as before."""
    pki = make_pki(tmp_path)
    hashed = bcrypt.hashpw(b"right", bcrypt.gensalt(rounds=4)).decode()
    web = (
        f"tls_server_config:\n  cert_file: {pki['server_cert']}\n  key_file: {pki['server_key']}\n"
        f"basic_auth_users:\n  prom: '{hashed}'\n"
    )
    daemon = start_daemon(tmp_path, sim, web, ca=pki["ca"])
    auth = _auth_header(web)
    try:
        for request in (
            b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n",
            b"HEAD / HTTP/1.0\r\n\r\n",
            b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\nabc",
        ):
            got, took = _plain(daemon, request)
            assert got == (
                b"HTTP/1.0 400 Bad Request\r\n\r\nClient sent an HTTP request to an HTTPS server.\n"
            ), request
            assert took < 20
        status, body = daemon.get(timeout=10, headers=auth)
        assert status == 200 and b"scaleengine_up" in body
        assert daemon.get(timeout=10)[0] == 401
    finally:
        stop_daemon(daemon)


def test_tls_port_closes_silent_dripping_and_foreign_plain_connections(tmp_path, sim):
    """Without an answer: one that sends nothing, at the 5 s head deadline (not before: a
    slow TLS client has that long); one that drips "GE" and stops, and one that stops a TLS
    handshake after 3 bytes, by that deadline; one that speaks neither TLS nor HTTP, at once."""
    web, pki = _tls_web(tmp_path)
    daemon = start_daemon(tmp_path, sim, web, ca=pki["ca"])
    try:
        results = {}
        threads = [
            threading.Thread(target=lambda k=k, v=v: results.__setitem__(k, _plain(daemon, v)))
            for k, v in {
                "silent": b"",
                "drip": b"GE",
                "handshake": b"\x16\x03\x01",
                "ssh": b"SSH-2.0-OpenSSH_9.6\r\n",
            }.items()
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert results["silent"][0] == b"" and 4.0 < results["silent"][1] < 20
        assert results["drip"][0] == b"" and results["drip"][1] < 20
        assert results["handshake"][0] == b"" and results["handshake"][1] < 20
        assert results["ssh"][0] == b"" and results["ssh"][1] < 4.0
        assert daemon.get(timeout=10)[0] == 200
    finally:
        stop_daemon(daemon)
