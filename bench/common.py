"""Shared helpers of the benchmark: the data set, a lean HTTP client, /proc readers, stats."""

from __future__ import annotations

import math
import os
import socket
import statistics
import time
import zlib
from dataclasses import dataclass

APPS = 10
PAGE_SIZE = 1000
CDN_ID = 4242
API_KEY = "DEMO0KEY0NOT0A0REAL0KEY000000000"
API_SECRET = "demo-secret-not-a-real-secret-0000000000000000000000000000000000"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def app_names(apps: int = APPS) -> list[str]:
    return [f"app{i}" for i in range(apps)]


def make_rows(total: int, apps: int = APPS) -> dict[str, list[tuple[str, int, int]]]:
    """``total`` video series spread evenly over ``apps`` apps; deterministic, bytes descending
    (the API's order), realistic video_urls such as ``sestore/app3/video-012345.mp4``."""
    out: dict[str, list[tuple[str, int, int]]] = {}
    per_app, extra = divmod(total, apps)
    for i, app in enumerate(app_names(apps)):
        n = per_app + (1 if i < extra else 0)
        rows = []
        for j in range(n):
            h = (j * 2654435761 + i * 40503) & 0xFFFFFFFF
            nbytes = 10_000 + h * 7 % 9_000_000_000
            rows.append((f"sestore/{app}/video-{j:06d}.mp4", nbytes, 1 + h % 5000))
        rows.sort(key=lambda r: (-r[1], r[0]))
        out[app] = rows
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- /proc -----------------------------------------------------------------------------------


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants (the exporter's poll worker, for one)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its descendants (all their threads), in seconds."""
    total = 0.0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
    return total


def system_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot, summed over cores."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    total = sum(fields[:8])  # without guest time, which is counted in user already
    return (total - idle) / CLK_TCK, total / CLK_TCK


def own_cpu() -> float:
    """CPU seconds of this process and of its children that have been waited for."""
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


def rss_mb(pid: int) -> float:
    """VmRSS of a process and its descendants, summed, in MB."""
    total = 0
    for p in process_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def precompile(root: str | os.PathLike[str]) -> None:
    """Write the exporter package's bytecode (``__pycache__``, git-ignored) as pip does when
    it installs the package: with PYTHONDONTWRITEBYTECODE set (as in this machine's shell and
    the Docker image) every start would otherwise compile each module from source, which
    costs time and about a megabyte per process that an installed exporter does not pay."""
    import compileall

    compileall.compile_dir(os.path.join(root, "exporter"), quiet=1)


def vm_rss_mb(pid: int) -> float:
    """VmRSS of one process in MB (0.0 when it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def rss_split_mb(pid: int) -> tuple[float, float]:
    """(the serving process's VmRSS, its descendants' summed: the poll worker) in MB."""
    rest = [p for p in process_tree(pid) if p != pid]
    return vm_rss_mb(pid), sum(vm_rss_mb(p) for p in rest)


# -- HTTP client -----------------------------------------------------------------------------


class HttpError(Exception):
    pass


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    body: bytes


class Client:
    """A minimal HTTP/1.1 keep-alive client over one socket, reading into a reused buffer.

    Handles Content-Length and read-until-close bodies (prometheus_client's wsgiref server
    answers with HTTP/1.0-style close); reconnects when the server closed the connection.
    """

    def __init__(self, port: int, host: str = "127.0.0.1", timeout: float = 30.0) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.sock: socket.socket | None = None
        self.buf = bytearray(1 << 16)
        self.view = memoryview(self.buf)

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _connect(self) -> socket.socket:
        s = socket.create_connection((self.host, self.port), timeout=self.timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = s
        return s

    def _ensure(self, size: int, keep: int) -> None:
        """Grow the buffer to at least ``size`` bytes, keeping its first ``keep`` bytes."""
        if len(self.buf) < size:
            self.view.release()
            new = bytearray(max(size, 2 * len(self.buf)))
            new[:keep] = self.buf[:keep]
            self.buf = new
            self.view = memoryview(self.buf)

    def get(self, path: str, gzip: bool = False, accept: str | None = None) -> Response:
        for attempt in (0, 1):
            s = self.sock or self._connect()
            req = f"GET {path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            if gzip:
                req += "Accept-Encoding: gzip\r\n"
            if accept:
                req += f"Accept: {accept}\r\n"
            try:
                s.sendall((req + "\r\n").encode())
                return self._read(s)
            except (ConnectionError, HttpError):
                self.close()
                if attempt:
                    raise
        raise AssertionError("unreachable")

    def _read(self, s: socket.socket) -> Response:
        got = 0
        while True:
            end = self.buf.find(b"\r\n\r\n", 0, got)
            if end >= 0:
                break
            if got == len(self.buf):
                self._ensure(2 * got, got)
            n = s.recv_into(self.view[got:])
            if n == 0:
                raise HttpError("connection closed before headers")
            got += n
        head = bytes(self.buf[:end]).decode("latin-1").split("\r\n")
        status = int(head[0].split()[1])
        headers = {}
        for line in head[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        start = end + 4
        length = headers.get("content-length")
        close = headers.get("connection", "").lower() == "close" or head[0].startswith("HTTP/1.0")
        if length is not None:
            total = start + int(length)
            self._ensure(total, got)
            while got < total:
                n = s.recv_into(self.view[got:total])
                if n == 0:
                    raise HttpError(f"body cut short at {got - start} of {length} bytes")
                got += n
        else:
            if headers.get("transfer-encoding"):
                raise HttpError("chunked bodies are not supported by the bench client")
            while True:
                if got == len(self.buf):
                    self._ensure(2 * got, got)
                n = s.recv_into(self.view[got:])
                if n == 0:
                    break
                got += n
            total = got
            close = True
        body = bytes(self.view[start:total])
        if close:
            self.close()
        return Response(status, headers, body)


def check(
    resp: Response, gzip: bool, expect_lines: int | None = None, decode: bool = True
) -> bytes:
    """Raise unless the answer is 200, complete (the client enforces Content-Length) and,
    when asked, decodes and holds the expected series."""
    if resp.status != 200:
        raise HttpError(f"HTTP {resp.status}")
    body = resp.body
    if gzip and not decode:
        if resp.headers.get("content-encoding") != "gzip" or body[:2] != b"\x1f\x8b":
            raise HttpError("asked for gzip, got something else")
        return body
    if gzip:
        if resp.headers.get("content-encoding") != "gzip":
            raise HttpError("asked for gzip, got an identity body")
        body = zlib.decompress(body, 16 + zlib.MAX_WBITS)
    if not body.endswith(b"\n"):
        raise HttpError("body does not end with a newline")
    if expect_lines is not None:
        found = body.count(b"\nscaleengine_vse_day_bytes{")
        if found != expect_lines:
            raise HttpError(f"{found} scaleengine_vse_day_bytes series, expected {expect_lines}")
    return body


def wait_http(port: int, path: str, deadline: float, ok: int = 200) -> float:
    """Poll GET path until it answers ``ok``; returns the time.monotonic() of that answer."""
    while True:
        try:
            c = Client(port, timeout=5)
            try:
                r = c.get(path)
            finally:
                c.close()
            if r.status == ok:
                return time.monotonic()
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"127.0.0.1:{port}{path} did not answer {ok} in time")
        time.sleep(0.005)


# -- statistics ------------------------------------------------------------------------------


def percentile(values: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100)."""
    if not values:
        return float("nan")
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")
