"""Prometheus exporter-toolkit web configuration (TLS, basic auth, response headers): loading.

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

The schema is schema.py's; this module reads the file and the PEM files it names (with
:func:`~exporter.state.read_regular_file`'s bounds) and builds a :class:`WebConfig`.
"""

from __future__ import annotations

import logging
import os
import re
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from ..config import ConfigError
from .basicauth import BasicAuth
from .tls import TLSError, TLSSettings, client_allowed, server_context

if TYPE_CHECKING:
    from .schema import RateLimitConfig, TLSServerConfig

__all__ = ["WebConfig", "load_web_config", "parse_web_config"]

log = logging.getLogger("exporter.webconfig")

MAX_PEM_BYTES = 1024 * 1024  # a certificate chain or key file; larger is not one


@dataclass(frozen=True, eq=False)
class WebConfig:
    """A validated web configuration. Build it with :func:`load_web_config`."""

    cert_pem: str | None = None
    key_pem: str | None = None
    ca_pem: str | None = None
    client_auth_type: str = "NoClientCert"
    client_allowed_sans: list[str] = field(default_factory=list)
    min_version: str = "TLS12"
    max_version: str = "TLS13"
    headers: dict[str, str] = field(default_factory=dict)
    basic_auth_users: dict[str, str] = field(default_factory=dict)
    # (interval seconds, burst): the HTTP server applies it; None: no limit
    rate_limit: tuple[float, int] | None = None
    source: str = "<web config>"
    _auth: BasicAuth = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_auth", BasicAuth(self.basic_auth_users))

    def __reduce__(self) -> tuple[Any, ...]:
        """Pickled as its settings (the daemon hands it to the serving process); the
        password checker is built anew there."""
        return (WebConfig, tuple(getattr(self, f.name) for f in fields(self) if f.init))

    def fingerprint(self) -> tuple[tuple[str, str], ...]:
        """What it serves with (TLS material, users, headers), for comparison."""
        return tuple((f.name, repr(getattr(self, f.name))) for f in fields(self) if f.init)

    @property
    def tls_enabled(self) -> bool:
        return self.cert_pem is not None

    @property
    def auth_required(self) -> bool:
        return self._auth.required

    def ssl_context(self) -> ssl.SSLContext | None:
        """A fresh server-side SSLContext, or None when TLS is not configured.

        Raises ConfigError when the certificate, key or CA cannot be loaded.
        """
        if self.cert_pem is None or self.key_pem is None:
            return None
        settings = TLSSettings(
            self.cert_pem,
            self.key_pem,
            self.ca_pem,
            self.client_auth_type,
            self.min_version,
            self.max_version,
        )
        try:
            return server_context(settings)
        except TLSError as err:
            raise _err(self.source, err.field, str(err)) from None

    def client_allowed(self, peercert: dict[str, Any] | None) -> bool:
        """True when client_allowed_sans is empty or the peer certificate has a listed SAN."""
        return client_allowed(self.client_allowed_sans, peercert)

    def check_basic_auth(self, authorization_header: str | None) -> bool:
        """Check an ``Authorization`` header against basic_auth_users (bcrypt, tens of
        milliseconds; cached on success). True when no users are configured."""
        return self._auth.check(authorization_header)

    def check_cached(self, authorization_header: str | None) -> bool:
        """True without bcrypt when no users are configured or these credentials passed before.

        The server calls this in its event loop and runs :meth:`check_basic_auth` in a thread
        only when it returns False.
        """
        return self._auth.check_cached(authorization_header)


def _err(source: str, field: str, reason: str) -> ConfigError:
    return ConfigError(f"{source}: {field}: {reason}", field=field)


def _read_pem(path: str, field: str, source: str, marker: str) -> str:
    from ..config import read_file

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


def parse_web_config(
    data: object,
    source: str = "<web config>",
    base_dir: str | os.PathLike[str] | None = None,
) -> WebConfig:
    """Validate parsed web config data. Raises only ConfigError."""
    # pydantic only here: the daemon validates in short-lived processes (see config/plain.py)
    from pydantic import ValidationError

    from ..config import format_validation_error
    from .schema import WebConfigFile

    if data is None:
        return WebConfig(source=source)
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping, got {type(data).__name__}")
    try:
        raw = WebConfigFile.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None

    def resolve(path: str) -> str:
        path = os.path.expanduser(path)
        if base_dir is not None and not os.path.isabs(path):
            path = os.path.join(os.fspath(base_dir), path)
        return path

    kwargs: dict[str, Any] = {"source": source}
    tls = raw.tls_server_config
    if tls is not None and tls.enabled:
        kwargs.update(_tls_kwargs(tls, source, resolve))
    http = raw.http_server_config
    if http is not None:
        if http.http2 is not None:
            log.debug("%s: http_server_config.http2 is accepted but not applied", source)
        kwargs["headers"] = dict(http.headers or {})
    kwargs["basic_auth_users"] = dict(raw.basic_auth_users or {})
    if raw.rate_limit is not None:
        kwargs["rate_limit"] = _rate_limit(raw.rate_limit, source)
    config = WebConfig(**kwargs)
    config.ssl_context()  # load certificates now so errors surface at startup
    return config


def _rate_limit(rate: RateLimitConfig, source: str) -> tuple[float, int] | None:
    """exporter-toolkit's rate_limit: no interval (or 0) means no limit, as there."""
    if rate.seconds == 0 or rate.burst is None:
        log.warning("%s: rate_limit has no interval, so it does not limit anything", source)
        return None
    return rate.seconds, rate.burst


def _tls_kwargs(tls: TLSServerConfig, source: str, resolve: Callable[[str], str]) -> dict[str, Any]:
    """The PEM texts (inline, or read from the files named) and the TLS choices."""
    prefix = "tls_server_config"
    for name in ("cipher_suites", "curve_preferences", "prefer_server_cipher_suites"):
        if getattr(tls, name) is not None:
            log.debug("%s: %s.%s is accepted but not applied", source, prefix, name)

    def pem(inline: str | None, file: str | None, name: str, marker: str) -> str | None:
        if file is not None:
            return _read_pem(resolve(file), f"{prefix}.{name}_file", source, marker)
        return inline

    return {
        "cert_pem": pem(tls.cert, tls.cert_file, "cert", "CERTIFICATE"),
        "key_pem": pem(tls.key, tls.key_file, "key", "PRIVATE KEY"),
        "ca_pem": pem(tls.client_ca, tls.client_ca_file, "client_ca", "CERTIFICATE"),
        "client_auth_type": tls.auth_type,
        "client_allowed_sans": list(tls.client_allowed_sans or []),
        "min_version": tls.min_version or "TLS12",
        "max_version": tls.max_version or "TLS13",
    }


def load_web_config(path: str | os.PathLike[str]) -> WebConfig:
    """Load an exporter-toolkit web config file. Raises only ConfigError.

    Relative paths inside are resolved against the web config file's directory.
    """
    from ..config import load_yaml_file

    name = os.fspath(path)
    data = load_yaml_file(name, what="web config file")
    return parse_web_config(data, source=name, base_dir=os.path.dirname(os.path.abspath(name)))
