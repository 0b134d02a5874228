"""Tests for exporter.web.webconfig, schema and tls: the web config, real TLS handshakes."""

from __future__ import annotations

import datetime
import ipaddress
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from exporter.config import ConfigError
from exporter.web.webconfig import WebConfig, load_web_config, parse_web_config

# --------------------------------------------------------------------------- PKI helpers


@dataclass
class Pki:
    dir: Path
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    other_client_cert: Path
    other_client_key: Path
    rogue_cert: Path
    rogue_key: Path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject, key, issuer, issuer_key, *, ca=False, sans=None, client=False):
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    if not ca:
        usage = x509.oid.ExtendedKeyUsageOID
        builder = builder.add_extension(
            x509.ExtendedKeyUsage([usage.CLIENT_AUTH if client else usage.SERVER_AUTH]),
            critical=False,
        )
    return builder.sign(issuer_key, hashes.SHA256())


def _write(path: Path, cert=None, key=None) -> Path:
    if cert is not None:
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    else:
        path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return path


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca = _cert(_name("test ca"), ca_key, _name("test ca"), ca_key, ca=True)
    rogue_ca_key = ec.generate_private_key(ec.SECP256R1())

    def leaf(cn, sans, client, issuer=ca, issuer_key=ca_key):
        key = ec.generate_private_key(ec.SECP256R1())
        return _cert(_name(cn), key, issuer.subject, issuer_key, sans=sans, client=client), key

    server, server_key = leaf(
        "localhost",
        [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))],
        client=False,
    )
    client, client_key = leaf(
        "scraper",
        [x509.DNSName("prometheus.example"), x509.IPAddress(ipaddress.ip_address("10.0.0.1"))],
        client=True,
    )
    other, other_key = leaf("other", [x509.DNSName("other.example")], client=True)
    rogue_ca = _cert(_name("rogue"), rogue_ca_key, _name("rogue"), rogue_ca_key, ca=True)
    rogue, rogue_key = leaf(
        "rogue", [x509.DNSName("prometheus.example")], True, rogue_ca, rogue_ca_key
    )
    return Pki(
        dir=d,
        ca=_write(d / "ca.pem", ca),
        server_cert=_write(d / "server.pem", server),
        server_key=_write(d / "server-key.pem", key=server_key),
        client_cert=_write(d / "client.pem", client),
        client_key=_write(d / "client-key.pem", key=client_key),
        other_client_cert=_write(d / "other.pem", other),
        other_client_key=_write(d / "other-key.pem", key=other_key),
        rogue_cert=_write(d / "rogue.pem", rogue),
        rogue_key=_write(d / "rogue-key.pem", key=rogue_key),
    )


def write_web_config(directory: Path, text: str, name: str = "web.yml") -> Path:
    path = directory / name
    path.write_text(text)
    return path


# --------------------------------------------------------------------------- handshake helper


def handshake(server_ctx, web, pki: Pki, client_cert=None, client_key=None, max_version=None):
    """Run one TLS connection on loopback. Returns (server_outcome, client_outcome)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    port = listener.getsockname()[1]
    result: dict[str, object] = {}

    def serve():
        try:
            conn, _ = listener.accept()
        except OSError as err:
            result["server"] = err
            return
        conn.settimeout(10)
        try:
            with server_ctx.wrap_socket(conn, server_side=True) as tls:
                allowed = web.client_allowed(tls.getpeercert())
                tls.sendall(b"ok" if allowed else b"no")
                result["server"] = "ok" if allowed else "san-refused"
        except (ssl.SSLError, OSError) as err:
            result["server"] = err
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    client_ctx = ssl.create_default_context(cafile=str(pki.ca))
    if max_version is not None:
        client_ctx.maximum_version = max_version
    if client_cert is not None:
        client_ctx.load_cert_chain(str(client_cert), str(client_key))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                data = tls.recv(2)
                client: object = data.decode() if data else "closed"
    except (ssl.SSLError, OSError) as err:
        client = err
    thread.join(10)
    listener.close()
    return result.get("server"), client


# --------------------------------------------------------------------------- TLS


def test_no_web_config_means_plain_http(tmp_path: Path):
    web = load_web_config(write_web_config(tmp_path, ""))
    assert web.ssl_context() is None
    assert not web.tls_enabled
    assert not web.auth_required
    assert web.check_basic_auth(None) is True
    assert web.headers == {}


def test_tls_handshake(pki: Pki):
    path = write_web_config(
        pki.dir,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n",
    )
    web = load_web_config(path)
    assert web.tls_enabled
    ctx = web.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    assert ctx.verify_mode == ssl.CERT_NONE
    server, client = handshake(ctx, web, pki)
    assert (server, client) == ("ok", "ok")


def test_min_version_tls13_refuses_tls12_client(pki: Pki):
    path = write_web_config(
        pki.dir,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  min_version: TLS13\n",
    )
    web = load_web_config(path)
    ctx = web.ssl_context()
    assert ctx is not None and ctx.minimum_version == ssl.TLSVersion.TLSv1_3
    server, client = handshake(ctx, web, pki, max_version=ssl.TLSVersion.TLSv1_2)
    assert isinstance(server, ssl.SSLError)
    assert isinstance(client, (ssl.SSLError, OSError))


@pytest.fixture
def mtls(pki: Pki):
    path = write_web_config(
        pki.dir,
        "tls_server_config:\n"
        f"  cert_file: {pki.server_cert}\n"
        f"  key_file: {pki.server_key}\n"
        "  client_auth_type: RequireAndVerifyClientCert\n"
        "  client_ca_file: ca.pem\n",
        name="mtls.yml",
    )
    web = load_web_config(path)
    ctx = web.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_REQUIRED
    return web, ctx


def test_mtls_refuses_client_without_cert(pki: Pki, mtls):
    web, ctx = mtls
    server, client = handshake(ctx, web, pki)
    assert isinstance(server, ssl.SSLError)
    assert not (isinstance(client, str) and client == "ok")


def test_mtls_accepts_client_cert_from_ca(pki: Pki, mtls):
    web, ctx = mtls
    server, client = handshake(ctx, web, pki, pki.client_cert, pki.client_key)
    assert (server, client) == ("ok", "ok")


def test_mtls_refuses_cert_from_other_ca(pki: Pki, mtls):
    web, ctx = mtls
    server, client = handshake(ctx, web, pki, pki.rogue_cert, pki.rogue_key)
    assert isinstance(server, ssl.SSLError)
    assert client != "ok"


def test_client_allowed_sans(pki: Pki):
    path = write_web_config(
        pki.dir,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  client_auth_type: RequireAndVerifyClientCert\n  client_ca_file: ca.pem\n"
        "  client_allowed_sans: [prometheus.example]\n",
        name="sans.yml",
    )
    web = load_web_config(path)
    ctx = web.ssl_context()
    assert handshake(ctx, web, pki, pki.client_cert, pki.client_key) == ("ok", "ok")
    assert handshake(ctx, web, pki, pki.other_client_cert, pki.other_client_key) == (
        "san-refused",
        "no",
    )


def test_client_allowed_unit():
    web = WebConfig(client_allowed_sans=["a.example", "10.0.0.1", "::1"])
    assert web.client_allowed({"subjectAltName": (("DNS", "a.example"),)})
    assert web.client_allowed({"subjectAltName": (("IP Address", "10.0.0.1"),)})
    assert web.client_allowed({"subjectAltName": (("IP Address", "0:0:0:0:0:0:0:1\n"),)})
    assert not web.client_allowed({"subjectAltName": (("DNS", "b.example"),)})
    assert not web.client_allowed({})
    assert not web.client_allowed(None)
    assert WebConfig().client_allowed(None)


@pytest.mark.parametrize(
    "auth, mode",
    [
        ("NoClientCert", ssl.CERT_NONE),
        ("RequestClientCert", ssl.CERT_OPTIONAL),
        ("VerifyClientCertIfGiven", ssl.CERT_OPTIONAL),
        ("RequireAnyClientCert", ssl.CERT_REQUIRED),
        ("RequireAndVerifyClientCert", ssl.CERT_REQUIRED),
    ],
)
def test_client_auth_types(pki: Pki, auth, mode):
    path = write_web_config(
        pki.dir,
        f"tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        f"  client_auth_type: {auth}\n  client_ca_file: ca.pem\n",
        name=f"{auth}.yml",
    )
    ctx = load_web_config(path).ssl_context()
    assert ctx is not None and ctx.verify_mode == mode


def test_inline_pem(pki: Pki):
    data = {
        "tls_server_config": {
            "cert": pki.server_cert.read_text(),
            "key": pki.server_key.read_text(),
            "client_ca": pki.ca.read_text(),
            "client_auth_type": "RequireAndVerifyClientCert",
            "max_version": "TLS13",
        }
    }
    web = parse_web_config(data)
    ctx = web.ssl_context()
    assert handshake(ctx, web, pki, pki.client_cert, pki.client_key) == ("ok", "ok")


def test_ignored_settings_are_accepted(pki: Pki, caplog):
    path = write_web_config(
        pki.dir,
        "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
        "  cipher_suites: [TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256]\n"
        "  curve_preferences: [CurveP256]\n  prefer_server_cipher_suites: true\n"
        "http_server_config:\n  http2: false\n",
        name="ignored.yml",
    )
    with caplog.at_level(logging.DEBUG, logger="exporter.webconfig"):
        web = load_web_config(path)
    assert web.ssl_context() is not None
    text = " ".join(r.getMessage() for r in caplog.records)
    for name in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites", "http2"):
        assert name in text


def test_headers(tmp_path: Path):
    web = load_web_config(
        write_web_config(
            tmp_path,
            "http_server_config:\n  headers:\n    X-Frame-Options: deny\n"
            "    x-content-type-options: nosniff\n    Strict-Transport-Security: max-age=300\n"
            "    Content-Security-Policy: ''\n",
        )
    )
    assert web.headers == {
        "X-Frame-Options": "deny",
        "X-Content-Type-Options": "nosniff",
        "Strict-Transport-Security": "max-age=300",
    }


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("tls_server_config:\n  key_file: server-key.pem\n", "tls_server_config.cert_file"),
        ("tls_server_config:\n  cert_file: server.pem\n", "tls_server_config.key_file"),
        (
            "tls_server_config:\n  cert_file: missing.pem\n  key_file: server-key.pem\n",
            "tls_server_config.cert_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: missing.pem\n",
            "tls_server_config.key_file: cannot read",
        ),
        (
            "tls_server_config:\n  cert_file: server-key.pem\n  key_file: server-key.pem\n",
            "tls_server_config.cert_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: client-key.pem\n",
            "tls_server_config.key_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
            "  client_auth_type: RequireAndVerifyClientCert\n",
            "tls_server_config.client_ca_file",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
            "  client_auth_type: Sometimes\n",
            "tls_server_config.client_auth_type",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
            "  min_version: TLS99\n",
            "tls_server_config.min_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
            "  min_version: TLS13\n  max_version: TLS12\n",
            "tls_server_config.max_version",
        ),
        (
            "tls_server_config:\n  cert_file: server.pem\n  key_file: server-key.pem\n"
            "  client_allowed_sans: [a]\n",
            "tls_server_config.client_allowed_sans",
        ),
        (
            "tls_server_config:\n  certfile: server.pem\n",
            "unknown field 'tls_server_config.certfile'",
        ),
        ("basic_auth_users:\n  alice: plaintext\n", "basic_auth_users.alice"),
        ("basic_auth_users:\n  alice: 5\n", "basic_auth_users.alice"),
        ("basic_auth_users: [alice]\n", "basic_auth_users"),
        ("http_server_config:\n  headers:\n    Server: x\n", "http_server_config.headers.Server"),
        (
            "http_server_config:\n  headers:\n    X-Frame-Options: allow\n",
            "http_server_config.headers.X-Frame-Options",
        ),
        ("tls_server_config: [1]\n", "tls_server_config"),
        ("- a\n", "top level must be a mapping"),
        ("a: [\n", "line 2, column 1"),
    ],
)
def test_web_config_errors(pki: Pki, text, fragment):
    path = write_web_config(pki.dir, text, name="bad.yml")
    with pytest.raises(ConfigError) as info:
        load_web_config(path)
    assert fragment in str(info.value)
    assert str(info.value).startswith(str(path))


def test_missing_web_config_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_web_config(tmp_path / "nope.yml")


def test_rate_limit_parsed_or_refused(tmp_path: Path, caplog):
    """rate_limit is applied (the server's test checks the 429s) or refused, never ignored."""
    wc = load_web_config(write_web_config(tmp_path, "rate_limit: {interval: 1s, burst: 5}\n"))
    assert wc.rate_limit == (1.0, 5)
    wc = load_web_config(write_web_config(tmp_path, "rate_limit: {interval: 250ms, burst: 1}\n"))
    assert wc.rate_limit == (0.25, 1)
    for text, field in (
        ("rate_limit: {interval: 1s}\n", "rate_limit.burst"),
        ("rate_limit: {interval: 1s, burst: 0}\n", "rate_limit.burst"),
        ("rate_limit: {interval: soon, burst: 3}\n", "rate_limit.interval"),
    ):
        with pytest.raises(ConfigError, match=field):
            load_web_config(write_web_config(tmp_path, text))
    # no interval is no limit in exporter-toolkit too: said out loud
    with caplog.at_level(logging.WARNING, logger="exporter.webconfig"):
        wc = load_web_config(write_web_config(tmp_path, "rate_limit: {burst: 5}\n"))
    assert wc.rate_limit is None
    assert any("does not limit" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- properties

_scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
_KEYS = [
    "tls_server_config", "http_server_config", "basic_auth_users", "rate_limit", "cert_file",
    "key_file", "cert", "key", "client_ca", "client_ca_file", "client_auth_type",
    "client_allowed_sans", "min_version", "max_version", "headers", "http2", "X-Frame-Options",
]  # fmt: skip
_nested = st.recursive(
    _scalars,
    lambda kids: st.lists(kids, max_size=3)
    | st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=8), kids, max_size=4),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=_nested | st.dictionaries(st.sampled_from(_KEYS), _nested, max_size=4))
def test_parse_web_config_only_raises_config_error(tmp_path_factory, data):
    try:
        parse_web_config(data, base_dir=tmp_path_factory.getbasetemp())
    except ConfigError as err:
        assert str(err)
