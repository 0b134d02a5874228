"""The web config file's schema (exporter-toolkit's format), validated by pydantic: every
error names its field. Reading the file and the PEM files it names is webconfig.py's part."""

from __future__ import annotations

import re
from typing import Annotated

from pydantic import BaseModel, BeforeValidator, ConfigDict, field_validator, model_validator

from ..config import parse_duration
from .tls import CLIENT_AUTH_TYPES, TLS_VERSIONS

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
    """``tls_server_config``. TLS is on when a certificate, key or CA is given; then the pair
    is complete, the choices are known ones, and client certificates can be verified."""

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

    @property
    def enabled(self) -> bool:
        pems = (self.cert, self.cert_file, self.key, self.key_file, self.client_ca)
        return any(v is not None for v in (*pems, self.client_ca_file))

    @property
    def auth_type(self) -> str:
        return self.client_auth_type or "NoClientCert"

    @model_validator(mode="after")
    def _check(self) -> TLSServerConfig:
        if not self.enabled:
            if self.auth_type != "NoClientCert":
                raise ValueError("@cert_file: missing (client_auth_type needs TLS)")
            return self
        for name in ("cert", "key", "client_ca"):
            _check_pem_source(getattr(self, name), getattr(self, f"{name}_file"), name)
        if self.cert is None and self.cert_file is None:
            raise ValueError("@cert_file: missing")
        if self.key is None and self.key_file is None:
            raise ValueError("@key_file: missing")
        self._check_client_auth()
        self._check_versions()
        return self

    def _check_client_auth(self) -> None:
        auth = self.auth_type
        if auth not in CLIENT_AUTH_TYPES:
            choices = ", ".join(CLIENT_AUTH_TYPES)
            raise ValueError(f"@client_auth_type: unknown value {auth!r} (one of {choices})")
        if auth != "NoClientCert" and self.client_ca is None and self.client_ca_file is None:
            raise ValueError(
                f"@client_ca_file: required for client_auth_type {auth} (Python's ssl module "
                "verifies client certificates against a CA)"
            )
        if self.client_allowed_sans and auth not in (
            "RequireAnyClientCert",
            "RequireAndVerifyClientCert",
        ):
            raise ValueError(
                "@client_allowed_sans: needs client_auth_type RequireAndVerifyClientCert "
                "(or RequireAnyClientCert)"
            )

    def _check_versions(self) -> None:
        for name in ("min_version", "max_version"):
            value = getattr(self, name)
            if value is not None and value not in TLS_VERSIONS:
                choices = ", ".join(TLS_VERSIONS)
                raise ValueError(f"@{name}: unknown TLS version {value!r} (one of {choices})")
        if TLS_VERSIONS[self.min_version or "TLS12"] > TLS_VERSIONS[self.max_version or "TLS13"]:
            raise ValueError("@max_version: is lower than min_version")


def _check_pem_source(inline: str | None, file: str | None, name: str) -> None:
    if inline is not None and file is not None:
        raise ValueError(f"@{name}_file: give either {name} or {name}_file")
    if inline is not None and "-----BEGIN" not in inline:
        raise ValueError(f"@{name}: not PEM text")


class HTTPServerConfig(BaseModel):
    """``http_server_config``: the headers exporter-toolkit allows, canonically spelled."""

    model_config = _MODEL

    http2: bool | None = None
    headers: dict[Str, Str | None] | None = None

    @field_validator("headers")
    @classmethod
    def _headers(cls, headers: dict[str, str | None] | None) -> dict[str, str | None] | None:
        if headers is None:
            return None
        canonical = {name.lower(): name for name in ALLOWED_HEADERS}
        checked: dict[str, str | None] = {}
        for name, value in headers.items():
            proper = canonical.get(name.lower())
            if proper is None:
                allowed = ", ".join(ALLOWED_HEADERS)
                raise ValueError(f"@{name}: header cannot be configured (allowed: {allowed})")
            if not value:
                continue  # blank means unset
            if any(c in value for c in "\r\n\0"):
                raise ValueError(f"@{name}: value must be one line")
            choices = ALLOWED_HEADERS[proper]
            if choices is not None and value.lower() not in choices:
                raise ValueError(f"@{name}: must be one of {', '.join(choices)}")
            checked[proper] = value
        return checked


class RateLimitConfig(BaseModel):
    """``rate_limit``: no interval (or 0) means no limit, as in exporter-toolkit."""

    model_config = _MODEL

    interval: Str | int | float | None = None
    burst: int | None = None

    @property
    def seconds(self) -> float:
        return 0.0 if self.interval is None else parse_duration(self.interval)

    @model_validator(mode="after")
    def _check(self) -> RateLimitConfig:
        try:
            seconds = self.seconds
        except ValueError as err:
            raise ValueError(f"@interval: {err}") from None
        if seconds and (self.burst is None or self.burst < 1):
            raise ValueError("@burst: must be at least 1 (requests let through at once)")
        return self


class WebConfigFile(BaseModel):
    """The whole file."""

    model_config = _MODEL

    tls_server_config: TLSServerConfig | None = None
    http_server_config: HTTPServerConfig | None = None
    basic_auth_users: dict[Str, Str] | None = None
    rate_limit: RateLimitConfig | None = None

    @field_validator("basic_auth_users")
    @classmethod
    def _users(cls, users: dict[str, str] | None) -> dict[str, str] | None:
        for user, hashed in (users or {}).items():
            if ":" in user:
                raise ValueError(f"@{user}: user names cannot contain ':'")
            if not _BCRYPT_RE.fullmatch(hashed):
                raise ValueError(
                    f"@{user}: not a bcrypt hash (make one with: htpasswd -nBC 10 '' | tr -d ':')"
                )
        return users
