"""Prometheus exporter-toolkit web configuration (TLS, basic auth, response headers).

Reads the same YAML format as exporters built on github.com/prometheus/exporter-toolkit
(``--web.config.file``), so existing files drop in:

* ``tls_server_config``: cert_file/key_file (or inline cert/key), client_auth_type,
  client_ca_file (or inline client_ca), client_allowed_sans, min_version, max_version.
  cipher_suites, curve_preferences and prefer_server_cipher_suites are accepted and not
  applied (Python's ssl module uses OpenSSL's defaults).
* ``http_server_config``: headers (the five the toolkit allows); http2 accepted, not applied.
* ``basic_auth_users``: username -> bcrypt hash.
* ``rate_limit``: interval and burst, a token bucket over all requests but health and
  readiness (as exporter-toolkit: one token per interval, at most ``burst``; 429 when empty).

Differences forced by Python's ssl module: every client_auth_type other than NoClientCert
needs a CA (client_ca_file or client_ca), because OpenSSL cannot accept a client certificate
without verifying it. ``client_allowed_sans`` is checked by :meth:`WebConfig.client_allowed`
after the handshake; the HTTP server must call it.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import ipaddress
import logging
import os
import re
import shutil
import ssl
import tempfile
import threading
from typing import Annotated, Any

import bcrypt
from pydantic import BaseModel, BeforeValidator, ConfigDict, ValidationError

from exporter.config import (
    ConfigError,
    format_validation_error,
    load_yaml_file,
    parse_duration,
    read_file,
)

__all__ = ["WebConfig", "load_web_config", "parse_web_config"]

log = logging.getLogger("exporter.webconfig")

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

# Headers exporter-toolkit lets a web config set, with the values it allows (None: any).
ALLOWED_HEADERS: dict[str, tuple[str, ...] | None] = {
    "Content-Security-Policy": None,
    "X-Frame-Options": ("deny", "sameorigin"),
    "X-Content-Type-Options": ("nosniff",),
    "X-XSS-Protection": None,
    "Strict-Transport-Security": None,
}

_BCRYPT_RE = re.compile(r"\$2[aby]\$(0[4-9]|[12]\d|3[01])\$[./A-Za-z0-9]{53}")


def _str(value: object) -> object:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


Str = Annotated[str, BeforeValidator(_str)]
_MODEL = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


class TLSServerConfig(BaseModel):
    model_config = _MODEL

    cert: Str | None = None
    key: Str | None = None
    client_ca: Str | None = None
    cert_file: Str | None = None
    key_file: Str | None = None
    client_auth_type: Str | None = None
    client_ca_file: Str | None = None
    client_allowed_sans: list[Str] | None = None
    min_version: Str | None = None
    max_version: Str | None = None
    cipher_suites: list[Str] | None = None
    prefer_server_cipher_suites: bool | None = None
    curve_preferences: list[Str] | None = None


class HTTPServerConfig(BaseModel):
    model_config = _MODEL

    http2: bool | None = None
    headers: dict[Str, Str | None] | None = None


class RateLimitConfig(BaseModel):
    model_config = _MODEL

    interval: Str | int | float | None = None
    burst: int | None = None


class _RawWebConfig(BaseModel):
    model_config = _MODEL

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig | None = None
    basic_auth_users: dict[Str, Str] | None = None
    rate_limit: RateLimitConfig | None = None


def _err(source: str, field: str, reason: str) -> ConfigError:
    return ConfigError(f"{source}: {field}: {reason}", field=field)


MAX_PEM_BYTES = 1024 * 1024  # a certificate chain or key file; larger is not one


def _read_pem(path: str, field: str, source: str, marker: str) -> str:
    try:
        raw = read_file(path, MAX_PEM_BYTES)
    except ValueError as err:
        raise _err(source, field, f"cannot read {path!r}: {err}") from None
    text = raw.decode("ascii", errors="replace")
    if f"-----BEGIN {marker}" not in text and not (
        marker == "PRIVATE KEY" and re.search(r"-----BEGIN [A-Z ]*PRIVATE KEY-----", text)
    ):
        raise _err(source, field, f"{path!r} holds no PEM {marker.lower()}")
    return text


class WebConfig:
    """A validated web configuration. Build it with :func:`load_web_config`."""

    def __init__(
        self,
        *,
        cert_pem: str | None = None,
        key_pem: str | None = None,
        ca_pem: str | None = None,
        client_auth_type: str = "NoClientCert",
        client_allowed_sans: list[str] | None = None,
        min_version: str = "TLS12",
        max_version: str = "TLS13",
        headers: dict[str, str] | None = None,
        basic_auth_users: dict[str, str] | None = None,
        rate_limit: tuple[float, int] | None = None,
        source: str = "<web config>",
    ) -> None:
        self.cert_pem = cert_pem
        self.key_pem = key_pem
        self.ca_pem = ca_pem
        self.client_auth_type = client_auth_type
        self.client_allowed_sans = list(client_allowed_sans or [])
        self.min_version = min_version
        self.max_version = max_version
        self.headers: dict[str, str] = dict(headers or {})
        self._users: dict[str, bytes] = {
            user: h.encode("ascii") for user, h in (basic_auth_users or {}).items()
        }
        # (interval seconds, burst): the HTTP server applies it; None: no limit
        self.rate_limit = rate_limit
        # Unknown users are checked against a dummy hash of the highest configured cost, and
        # wrong passwords of cheaper hashes are padded with it: a failure costs the same for
        # every user name, so timing does not tell which users exist.
        costs = [int(h[4:6]) for h in self._users.values()]
        self._dummy = bcrypt.hashpw(os.urandom(16), bcrypt.gensalt(max(costs))) if costs else b""
        self._dummy_cost = max(costs, default=0)
        self.source = source
        self._lock = threading.Lock()
        self._cache: dict[str, bytes] = {}
        self._inflight: dict[bytes, threading.Lock] = {}

    # ------------------------------------------------------------------ TLS

    @property
    def tls_enabled(self) -> bool:
        return self.cert_pem is not None

    @property
    def auth_required(self) -> bool:
        return bool(self._users)

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh server-side SSLContext, or None when TLS is not configured.

        Raises ConfigError when the certificate, key or CA cannot be loaded.
        """
        if self.cert_pem is None or self.key_pem is None:
            return None
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        try:
            ctx.minimum_version = TLS_VERSIONS[self.min_version]
            ctx.maximum_version = TLS_VERSIONS[self.max_version]
        except (ValueError, ssl.SSLError) as err:
            raise _err(self.source, "tls_server_config.min_version", str(err)) from None
        # load_cert_chain only reads files: write the PEMs to a private temporary directory.
        tmpdir = tempfile.mkdtemp(prefix="webconfig-")
        try:
            cert_path = os.path.join(tmpdir, "cert.pem")
            key_path = os.path.join(tmpdir, "key.pem")
            for path, text in ((cert_path, self.cert_pem), (key_path, self.key_pem)):
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "w") as fh:
                    fh.write(text)
            try:
                ctx.load_cert_chain(cert_path, key_path)
            except (ssl.SSLError, OSError) as err:
                raise _err(
                    self.source,
                    "tls_server_config.key_file",
                    f"cannot load certificate and key (do they match?): {err}",
                ) from None
        finally:
            shutil.rmtree(tmpdir, ignore_errors=True)
        ctx.verify_mode = CLIENT_AUTH_TYPES[self.client_auth_type]
        if self.ca_pem is not None:
            try:
                ctx.load_verify_locations(cadata=self.ca_pem)
            except (ssl.SSLError, ValueError) as err:
                raise _err(
                    self.source, "tls_server_config.client_ca_file", f"cannot load CA: {err}"
                ) from None
        return ctx

    def client_allowed(self, peercert: dict[str, Any] | None) -> bool:
        """True when client_allowed_sans is empty or the peer certificate has a listed SAN.

        ``peercert`` is ``SSLSocket.getpeercert()`` (the parsed dict form).
        """
        if not self.client_allowed_sans:
            return True
        if not peercert:
            return False
        allowed_ips = set()
        for san in self.client_allowed_sans:
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
            elif value in self.client_allowed_sans:
                return True
        return False

    # ------------------------------------------------------------------ basic auth

    def check_basic_auth(self, authorization_header: str | None) -> bool:
        """Check an ``Authorization`` header against basic_auth_users.

        True when no users are configured. Successful checks are cached (keyed by a sha256
        of user, password and hash) so repeated scrapes do not pay bcrypt's cost, and
        concurrent first checks of the same credentials run bcrypt once.
        """
        if not self._users:
            return True
        creds = _parse_basic(authorization_header)
        if creds is None:
            return False
        user, password = creds
        stored = self._users.get(user)
        known = stored is not None
        if stored is None:
            stored = self._dummy  # the same bcrypt time for unknown users; never matches
        digest = _digest(user, password, stored)
        if known and self._cached(user, digest):
            return True
        with self._lock:
            flight = self._inflight.setdefault(digest, threading.Lock())
        try:
            with flight:
                if known and self._cached(user, digest):
                    return True
                try:
                    ok = bcrypt.checkpw(password.encode("utf-8"), stored)
                except ValueError:
                    ok = False
                if not ok and int(stored[4:6]) < self._dummy_cost:
                    bcrypt.checkpw(password.encode("utf-8"), self._dummy)  # pad to the most
                if ok and known:
                    with self._lock:
                        self._cache[user] = digest
                return ok and known
        finally:
            with self._lock:
                self._inflight.pop(digest, None)

    def check_cached(self, authorization_header: str | None) -> bool:
        """True without bcrypt when no users are configured or these credentials passed before.

        The server calls this in its event loop and runs :meth:`check_basic_auth` (bcrypt,
        tens of milliseconds) in a thread only when it returns False.
        """
        if not self._users:
            return True
        creds = _parse_basic(authorization_header)
        if creds is None:
            return False
        user, password = creds
        stored = self._users.get(user)
        return stored is not None and self._cached(user, _digest(user, password, stored))

    def _cached(self, user: str, digest: bytes) -> bool:
        with self._lock:
            cached = self._cache.get(user)
        return cached is not None and hmac.compare_digest(cached, digest)


def _digest(user: str, password: str, stored: bytes) -> bytes:
    """The cache key of a login: a sha256 of user, password and the stored hash."""
    key = b"\0".join((user.encode("utf-8"), password.encode("utf-8"), stored))
    return hashlib.sha256(key).digest()


def _parse_basic(header: str | None) -> tuple[str, str] | None:
    if not header:
        return None
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "basic" or not token.strip():
        return None
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(":")
    if not sep:
        return None
    return user, password


def parse_web_config(
    data: object,
    source: str = "<web config>",
    base_dir: str | os.PathLike[str] | None = None,
) -> WebConfig:
    """Validate parsed web config data. Raises only ConfigError."""
    if data is None:
        return WebConfig(source=source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        raw = _RawWebConfig.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None

    def resolve(path: str) -> str:
        path = os.path.expanduser(path)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(os.fspath(base_dir), path)
        return path

    kwargs: dict[str, Any] = {"source": source}
    tls = raw.tls_server_config
    if tls is not None and any(
        v is not None
        for v in (tls.cert, tls.cert_file, tls.key, tls.key_file, tls.client_ca, tls.client_ca_file)
    ):
        kwargs.update(_tls_kwargs(tls, source, resolve))
    elif tls is not None and tls.client_auth_type not in (None, "NoClientCert"):
        raise _err(source, "tls_server_config.cert_file", "missing (client_auth_type needs TLS)")

    http = raw.http_server_config
    if http is not None:
        if http.http2 is not None:
            log.debug("%s: http_server_config.http2 is accepted but not applied", source)
        headers: dict[str, str] = {}
        canonical = {name.lower(): name for name in ALLOWED_HEADERS}
        for name, value in (http.headers or {}).items():
            field = f"http_server_config.headers.{name}"
            proper = canonical.get(name.lower())
            if proper is None:
                raise _err(
                    source,
                    field,
                    f"header cannot be configured (allowed: {', '.join(ALLOWED_HEADERS)})",
                )
            if not value:
                continue  # blank means unset
            if any(c in value for c in "\r\n\0"):
                raise _err(source, field, "value must be one line")
            choices = ALLOWED_HEADERS[proper]
            if choices is not None and value.lower() not in choices:
                raise _err(source, field, f"must be one of {', '.join(choices)}")
            headers[proper] = value
        kwargs["headers"] = headers

    users = raw.basic_auth_users or {}
    for user, hashed in users.items():
        field = f"basic_auth_users.{user}"
        if ":" in user:
            raise _err(source, field, "user names cannot contain ':'")
        if not _BCRYPT_RE.fullmatch(hashed):
            raise _err(
                source, field, "not a bcrypt hash (make one with: htpasswd -nBC 10 '' | tr -d ':')"
            )
    kwargs["basic_auth_users"] = dict(users)

    if raw.rate_limit is not None:
        kwargs["rate_limit"] = _rate_limit(raw.rate_limit, source)

    config = WebConfig(**kwargs)
    config.ssl_context()  # load certificates now so errors surface at startup
    return config


def _rate_limit(rate: RateLimitConfig, source: str) -> tuple[float, int] | None:
    """exporter-toolkit's rate_limit: no interval (or 0) means no limit, as there."""
    try:
        interval = 0.0 if rate.interval is None else parse_duration(rate.interval)
    except ValueError as err:
        raise _err(source, "rate_limit.interval", str(err)) from None
    if interval == 0:
        log.warning("%s: rate_limit has no interval, so it does not limit anything", source)
        return None
    if rate.burst is None or rate.burst < 1:
        raise _err(source, "rate_limit.burst", "must be at least 1 (requests let through at once)")
    return interval, rate.burst


def _tls_kwargs(tls: TLSServerConfig, source: str, resolve: Any) -> dict[str, Any]:
    prefix = "tls_server_config"
    for name in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites"):
        if getattr(tls, name) is not None:
            log.debug("%s: %s.%s is accepted but not applied", source, prefix, name)

    def pem(inline: str | None, file: str | None, name: str, marker: str) -> str | None:
        if inline is not None and file is not None:
            raise _err(source, f"{prefix}.{name}_file", f"give either {name} or {name}_file")
        if file is not None:
            return _read_pem(resolve(file), f"{prefix}.{name}_file", source, marker)
        if inline is not None and "-----BEGIN" not in inline:
            raise _err(source, f"{prefix}.{name}", "not PEM text")
        return inline

    cert = pem(tls.cert, tls.cert_file, "cert", "CERTIFICATE")
    key = pem(tls.key, tls.key_file, "key", "PRIVATE KEY")
    ca = pem(tls.client_ca, tls.client_ca_file, "client_ca", "CERTIFICATE")
    if cert is None:
        raise _err(source, f"{prefix}.cert_file", "missing")
    if key is None:
        raise _err(source, f"{prefix}.key_file", "missing")

    auth = tls.client_auth_type or "NoClientCert"
    if auth not in CLIENT_AUTH_TYPES:
        raise _err(
            source,
            f"{prefix}.client_auth_type",
            f"unknown value {auth!r} (one of {', '.join(CLIENT_AUTH_TYPES)})",
        )
    if auth != "NoClientCert" and ca is None:
        raise _err(
            source,
            f"{prefix}.client_ca_file",
            f"required for client_auth_type {auth} (Python's ssl module verifies client "
            "certificates against a CA)",
        )
    sans = tls.client_allowed_sans or []
    if sans and auth not in ("RequireAnyClientCert", "RequireAndVerifyClientCert"):
        raise _err(
            source,
            f"{prefix}.client_allowed_sans",
            "needs client_auth_type RequireAndVerifyClientCert (or RequireAnyClientCert)",
        )

    versions = {}
    for name, default in (("min_version", "TLS12"), ("max_version", "TLS13")):
        value = getattr(tls, name) or default
        if value not in TLS_VERSIONS:
            raise _err(
                source,
                f"{prefix}.{name}",
                f"unknown TLS version {value!r} (one of {', '.join(TLS_VERSIONS)})",
            )
        versions[name] = value
    if TLS_VERSIONS[versions["min_version"]] > TLS_VERSIONS[versions["max_version"]]:
        raise _err(source, f"{prefix}.max_version", "is lower than min_version")

    return {
        "cert_pem": cert,
        "key_pem": key,
        "ca_pem": ca,
        "client_auth_type": auth,
        "client_allowed_sans": sans,
        **versions,
    }


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Load an exporter-toolkit web config file. Raises only ConfigError.

    Relative paths inside are resolved against the web config file's directory.
    """
    name = os.fspath(path)
    data = load_yaml_file(name, what="web config file")
    return parse_web_config(data, source=name, base_dir=os.path.dirname(os.path.abspath(name)))
