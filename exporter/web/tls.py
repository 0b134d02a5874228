"""TLS for the web config: a server SSLContext from PEM texts, and the client_allowed_sans
check made after the handshake (Python's ssl module has no hook for it)."""

from __future__ import annotations

import ipaddress
import os
import shutil
import ssl
import tempfile
from dataclasses import dataclass
from typing import Any

TLS_VERSIONS: dict[str, ssl.TLSVersion] = {
    "TLS10": ssl.TLSVersion.TLSv1,
    "TLS11": ssl.TLSVersion.TLSv1_1,
    "TLS12": ssl.TLSVersion.TLSv1_2,
    "TLS13": ssl.TLSVersion.TLSv1_3,
}

CLIENT_AUTH_TYPES: dict[str, ssl.VerifyMode] = {
    "NoClientCert": ssl.CERT_NONE,
    "RequestClientCert": ssl.CERT_OPTIONAL,
    "VerifyClientCertIfGiven": ssl.CERT_OPTIONAL,
    "RequireAnyClientCert": ssl.CERT_REQUIRED,
    "RequireAndVerifyClientCert": ssl.CERT_REQUIRED,
}


class TLSError(ValueError):
    """A certificate, key or CA that cannot be loaded; ``field`` names the web config field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(reason)
        self.field = field


@dataclass(frozen=True)
class TLSSettings:
    """What a server context is built from (PEM texts, not paths)."""

    cert_pem: str
    key_pem: str
    ca_pem: str | None = None
    client_auth_type: str = "NoClientCert"
    min_version: str = "TLS12"
    max_version: str = "TLS13"


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """A fresh server-side SSLContext. Raises TLSError."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        ctx.minimum_version = TLS_VERSIONS[tls.min_version]
        ctx.maximum_version = TLS_VERSIONS[tls.max_version]
    except (ValueError, ssl.SSLError) as err:
        raise TLSError("tls_server_config.min_version", str(err)) from None
    _load_cert_chain(ctx, tls.cert_pem, tls.key_pem)
    ctx.verify_mode = CLIENT_AUTH_TYPES[tls.client_auth_type]
    if tls.ca_pem is not None:
        try:
            ctx.load_verify_locations(cadata=tls.ca_pem)
        except (ssl.SSLError, ValueError) as err:
            raise TLSError("tls_server_config.client_ca_file", f"cannot load CA: {err}") from None
    return ctx


def _load_cert_chain(ctx: ssl.SSLContext, cert_pem: str, key_pem: str) -> None:
    """load_cert_chain only reads files: write the PEMs to a private temporary directory."""
    tmpdir = tempfile.mkdtemp(prefix="webconfig-")
    try:
        cert_path = os.path.join(tmpdir, "cert.pem")
        key_path = os.path.join(tmpdir, "key.pem")
        for path, text in ((cert_path, cert_pem), (key_path, key_pem)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w") as fh:
                fh.write(text)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except (ssl.SSLError, OSError) as err:
            raise TLSError(
                "tls_server_config.key_file",
                f"cannot load certificate and key (do they match?): {err}",
            ) from None
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def client_allowed(allowed_sans: list[str], peercert: dict[str, Any] | None) -> bool:
    """True when ``allowed_sans`` is empty or the peer certificate has a listed SAN.

    ``peercert`` is ``SSLSocket.getpeercert()`` (the parsed dict form).
    """
    if not allowed_sans:
        return True
    if not peercert:
        return False
    allowed_ips = set()
    for san in allowed_sans:
        try:
            allowed_ips.add(ipaddress.ip_address(san.strip()))
        except ValueError:
            pass
    for kind, value in peercert.get("subjectAltName", ()):
        if not isinstance(value, str):
            continue
        if kind == "IP Address":
            try:
                if ipaddress.ip_address(value.strip()) in allowed_ips:
                    return True
            except ValueError:
                pass
        elif value in allowed_sans:
            return True
    return False
