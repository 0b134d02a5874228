"""Shared test utilities (imported as ``helpers``; tests/ is on pytest's pythonpath)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

ROOT = Path(__file__).resolve().parent.parent

# simulator fault mode -> (the client's outcome label, retryable); the row-level modes
# (exporter.simulator.ROW_FAULTS) skip rows instead of failing, the label modes
# (exporter.simulator.LABEL_FAULTS) send good rows with hostile video_urls
FAULT_OUTCOMES = {
    "reset": ("connection", True),
    "timeout": ("timeout", True),
    "http_500": ("http_status", True),
    "http_503": ("http_status", True),
    "invalid_json": ("invalid_json", False),
    "not_object": ("invalid_json", False),
    "usage_not_list": ("bad_response", False),
    "ignore_offset": ("pagination", False),
    "count_changes": ("pagination", False),
    "empty_page_early": ("pagination", False),
    **{f"failure_{c}": (f"api_{c}", c == "0004")  # 1000 (busy): backed off, not retried
       for c in ("0000", "0001", "0002", "0003", "0004", "0005", "0006", "1000")},
    "drip": ("timeout", True),
    "drip_headers": ("timeout", True),
    "gzip_bomb": ("too_large", False),
    "huge_body": ("too_large", False),
    "endless_body": ("too_large", False),
    "http_429": ("http_status", False),  # Retry-After: backed off, not retried
    "long_reason": ("http_status", True),
    "http_500_json": ("api_0004", True),
    "failure_unknown_code": ("api_other", False),
    "failure_long_message": ("api_0004", True),
    "shift_first": ("pagination", False),  # the pages move on every read: never consistent
    "shift_later": ("pagination", False),
}  # fmt: skip
# simulator fault modes the client reads as a good answer (empty days, rows without requests)
FAULT_SUCCEEDS = frozenset(
    {"empty_no_count", "empty_count_string", "empty_usage_null", "failure_no_usage",
     "partial_rows"}
)  # fmt: skip


def sim_config(sim, **sections: dict) -> dict:
    """Config data for an exporter polling ``sim``; ``sections`` update the defaults."""
    data: dict = {
        "scaleengine": {
            "api_url": sim.url,
            "cdn_id": sim.cdn_id,
            "api_key": sim.api_key,
            "api_secret": sim.api_secret,
            "timeout": "1s",
        },
        "apps": list(sim.apps),
    }
    for name, values in sections.items():
        if isinstance(values, dict):
            data.setdefault(name, {}).update(values)
        else:
            data[name] = values
    return data


# free_port's ports: a block per pytest-xdist worker (PYTEST_XDIST_WORKER "gw0", "gw1", ...;
# unset without xdist), all below the kernel's ephemeral range (32768-60999 by default). A
# port the kernel hands out for bind(("", 0)) or an outgoing connection (the simulator, every
# client, a neighbour worker's) is never one of them, and two workers never pick the same one,
# so the gap between our check and the started process's own bind is safe beside neighbours.
_PORT_BASE, _PORT_BLOCK, _PORT_BLOCKS = 20000, 600, 20
_port_next: list[int] = []


def _port_block() -> range:
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")
    index = int(worker[2:]) % (_PORT_BLOCKS - 1) if worker[2:].isdigit() else _PORT_BLOCKS - 1
    start = _PORT_BASE + index * _PORT_BLOCK
    return range(start, start + _PORT_BLOCK)


def free_port() -> int:
    """A loopback port nobody listens on now, for a process the test starts to bind.

    Taken in turn from this worker's own block (see _PORT_BASE), starting at a random place
    (another pytest run on the same machine starts elsewhere) and skipping any port that
    cannot be bound now (in use, or in TIME_WAIT from an earlier test)."""
    block = _port_block()
    if not _port_next:
        _port_next.append(block.start + random.randrange(len(block)))
    for _ in range(len(block)):
        port = _port_next[0]
        _port_next[0] = block.start + (port + 1 - block.start) % len(block)
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return port
    pytest.fail(f"no free loopback port in {block.start}-{block.stop - 1}")


def need_binary(name: str, package: str = "prometheus") -> str:
    """Path of a binary the test needs; FAILS (never skips) with a clear message if missing."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(
            f"{name} not found on PATH: install Debian's '{package}' package "
            f"(scripts/test.sh does this when run as root)",
            pytrace=False,
        )
    return path


def promtool_check_metrics(text: bytes) -> str:
    """Run `promtool check metrics` on an exposition; returns its combined output."""
    promtool = need_binary("promtool")
    proc = subprocess.run(
        [promtool, "check", "metrics"], input=text, capture_output=True, timeout=60
    )
    out = (proc.stdout + proc.stderr).decode()
    assert proc.returncode == 0, f"promtool check metrics failed:\n{out}"
    return out


def samples(text: str | bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a text exposition, keyed by (name, sorted labels)."""
    if isinstance(text, bytes):
        text = text.decode()
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            key = (s.name, tuple(sorted(s.labels.items())))
            assert key not in out, f"duplicate sample {key}"
            out[key] = s.value
    return out


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition"):
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: object = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(0.05)
    pytest.fail(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def http_get(url: str, headers: dict[str, str] | None = None, timeout: float = 10.0):
    """(status, headers, body) of a GET; HTTP errors are returned, not raised."""
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def make_pki(directory: Path) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1/localhost and a client certificate, as PEM files
    in ``directory``; plus a second, unrelated CA's client certificate."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.datetime.now(datetime.UTC)

    def key():
        return ec.generate_private_key(ec.SECP256R1())

    def name(cn: str) -> x509.Name:
        return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])

    def write_key(k, path: Path) -> None:
        path.write_bytes(
            k.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )

    def ca(cn: str):
        k = key()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(name(cn))
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(k, hashes.SHA256())
        )
        return k, cert

    def leaf(cn: str, ca_key, ca_cert, server: bool):
        k = key()
        b = (
            x509.CertificateBuilder()
            .subject_name(name(cn))
            .issuer_name(ca_cert.subject)
            .public_key(k.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        )
        if server:
            b = b.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
        else:
            b = b.add_extension(
                x509.SubjectAlternativeName([x509.DNSName(cn)]), critical=False
            ).add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        return k, b.sign(ca_key, hashes.SHA256())

    ca_key, ca_cert = ca("test-ca")
    other_key, other_cert = ca("other-ca")
    paths = {}
    for label, (k, cert) in {
        "server": leaf("localhost", ca_key, ca_cert, True),
        "client": leaf("scraper", ca_key, ca_cert, False),
        "stranger": leaf("stranger", other_key, other_cert, False),
    }.items():
        paths[f"{label}_cert"] = directory / f"{label}.crt"
        paths[f"{label}_key"] = directory / f"{label}.key"
        paths[f"{label}_cert"].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        write_key(k, paths[f"{label}_key"])
    paths["ca"] = directory / "ca.crt"
    paths["ca"].write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return paths


# Real PHP checks every request body a simulator recorded (Simulator.record_bodies): decode
# the json field, drop the signature, json_encode, HMAC-SHA256 with the secret, base64; the
# signature must match and the whole request re-encoded must be the raw body, byte for byte.
# The simulator checks requests with the exporter's own encoder and signer; this does not.
_PHP_VERIFY = r"""
$secret = $argv[1]; $n = 0; $bad = 0;
while (($line = fgets(STDIN)) !== false) {
    $body = rtrim($line, "\n");
    if ($body === '') continue;
    $n++;
    $req = json_decode($body, true);
    if (!is_array($req) || !is_string($req['signature'] ?? null)) {
        $bad++; echo "request $n: not a JSON object with a signature\n"; continue;
    }
    $sig = $req['signature'];
    unset($req['signature']);
    $expected = base64_encode(hash_hmac('sha256', json_encode($req), $secret, true));
    if (!hash_equals($expected, $sig)) { $bad++; echo "request $n: signature differs\n"; }
    $req['signature'] = $sig;
    $again = json_encode($req);
    if ($again !== $body) {
        $bad++;
        $i = strspn($again ^ $body, "\0");
        $hide = [(string) ($req['api_key'] ?? ''), $sig];  // keep key and signature out
        echo "request $n: body differs from PHP's json_encode at byte $i: ",
            str_replace($hide, '***', substr($body, max(0, $i - 20), 40)), " vs ",
            str_replace($hide, '***', substr($again, max(0, $i - 20), 40)), "\n";
    }
}
echo "checked $n\n";
exit($bad ? 1 : 0);
"""


def php_verify_requests(bodies: list[str], secret: str) -> int:
    """Check request bodies with real PHP (one process); fails the test on any mismatch.

    Returns how many were checked."""
    php = need_binary("php", "php-cli")
    proc = subprocess.run(
        [php, "-r", _PHP_VERIFY, "--", secret],
        input="".join(b + "\n" for b in bodies).encode("utf-8"),
        capture_output=True,
        timeout=60,
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace")
    if proc.returncode != 0:
        pytest.fail(f"real PHP does not accept the exporter's requests:\n{out}", pytrace=False)
    return int(out.rsplit("checked ", 1)[1].split()[0])


def php_verify_simulator(sim) -> int:
    """Every request body ``sim`` recorded, checked by real PHP with the simulator's secret."""
    bodies = [e["body"] for e in list(sim.request_log) if "body" in e]
    assert bodies, "the simulator recorded no request body (set sim.record_bodies = True)"
    return php_verify_requests(bodies, sim.api_secret)


def start_prometheus(
    config_path: Path, data: Path, cwd: Path, retention: str
) -> tuple[str, subprocess.Popen, Path]:
    """Debian's prometheus on a free loopback port: (its URL, the process, its log file).
    The caller waits for /-/ready and stops it with stop_process."""
    binary = need_binary("prometheus")
    address = f"127.0.0.1:{free_port()}"
    log = cwd / "prometheus.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [
                binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={address}",
                f"--storage.tsdb.retention.time={retention}",
            ],
            cwd=cwd,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return f"http://{address}", proc, log


def stop_process(proc: subprocess.Popen) -> None:
    """Terminate, then kill after 10 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
