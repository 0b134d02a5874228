"""Configuration schema: the pydantic models and the value parsers they use.

Every model forbids unknown fields and is frozen. Durations accept ``30s``, ``5m``, ``2h``,
``1d``, ``1h30m`` (units ms, s, m, h, d, w, decimals allowed) or a bare number of seconds, and
are stored as float seconds. Sizes accept a bare integer (bytes) or a number with a unit: B,
KB/MB/GB/TB/PB (powers of 1000) or KiB/MiB/GiB/TiB/PiB (powers of 1024), optional space; stored
as int bytes. The multiplier letter's case is free (``500gB`` = ``500GB``), but a lowercase ``b``
after it reads as bits (``500Gb``, ``1kb``, ``10Mib``) and is refused with the byte spelling to
write instead; a bare ``B``/``b`` (bytes, no multiplier) is accepted.
"""

from __future__ import annotations

import hashlib
import math
import re
import zoneinfo
from decimal import Decimal, InvalidOperation
from typing import Annotated
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    field_validator,
    model_validator,
)

from .defaults import (  # noqa: F401 - the client's defaults, re-exported
    DEFAULT_MAX_FETCH_BYTES,
    DEFAULT_MAX_LABEL_LENGTH,
    DEFAULT_MAX_PAGES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PAGE_SIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
)
from .errors import show as _show

__all__ = [
    "AppConfig",
    "DiscoveryConfig",
    "LimitsConfig",
    "PollConfig",
    "ScaleEngineConfig",
    "StateConfig",
    "WebServerConfig",
    "apps_before",
    "parse_duration",
    "parse_size",
]

DEFAULT_API_URL = "https://api.scaleengine.net/stable/"

MAX_DURATION_SECONDS = 10 * 365 * 86400.0  # ten years: anything longer is a typo


_DURATION_UNITS = {
    "ms": 0.001,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
    "d": 86400.0,
    "w": 604800.0,
}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)(ms|s|m|h|d|w)")
_DURATION_HINT = "(use e.g. 30s, 5m, 2h)"


def parse_duration(value: object) -> float:
    """Parse a duration into float seconds; raise ValueError with a readable message."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid duration {_show(value)} {_DURATION_HINT}")
    if isinstance(value, int | float):
        try:
            seconds = float(value)
        except OverflowError:
            raise ValueError(f"duration {_show(value)} is too large") from None
    elif isinstance(value, str):
        text = value.strip().lower().replace(" ", "")
        if not text:
            raise ValueError(f"invalid duration {_show(value)} {_DURATION_HINT}")
        if re.fullmatch(r"\d+(?:\.\d+)?", text):
            seconds = float(text)
        else:
            pos = 0
            seconds = 0.0
            for match in _DURATION_RE.finditer(text):
                if match.start() != pos:
                    break
                seconds += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
                pos = match.end()
            if pos != len(text):
                raise ValueError(f"invalid duration {_show(value)} {_DURATION_HINT}")
    else:
        raise ValueError(f"invalid duration {_show(value)} {_DURATION_HINT}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {_show(value)} {_DURATION_HINT}")
    if seconds > MAX_DURATION_SECONDS:
        raise ValueError(f"duration {_show(value)} is too large")
    return seconds


_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
}
_SIZE_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+) ?([a-z]*)")
_SIZE_HINT = "(use e.g. 500GB, 10TiB or a number of bytes)"
# A multiplier letter, an optional "i", then a lowercase "b": bits by the usual reading.
_SIZE_BITS_RE = re.compile(r"(\d+(?:\.\d+)?|\.\d+)( ?)([kmgtpKMGTP])([iI]?)b")
MAX_SIZE_BYTES = 1000**7  # a zettabyte; larger is a typo


def parse_size(value: object) -> int:
    """Parse a size into int bytes; raise ValueError with a readable message."""
    if isinstance(value, bool) or value is None:
        raise ValueError(f"invalid size {_show(value)} {_SIZE_HINT}")
    if isinstance(value, int):
        result = value
    elif isinstance(value, float):
        if not math.isfinite(value) or not value.is_integer():
            raise ValueError(f"invalid size {_show(value)} {_SIZE_HINT}")
        result = int(value)
    elif isinstance(value, str):
        _refuse_bits(value)
        match = _SIZE_RE.fullmatch(value.strip().lower())
        if not match or match.group(2) not in _SIZE_UNITS or len(match.group(1)) > 40:
            raise ValueError(f"invalid size {_show(value)} {_SIZE_HINT}")
        try:
            result = int(Decimal(match.group(1)) * _SIZE_UNITS[match.group(2)])
        except (InvalidOperation, ValueError, OverflowError):
            raise ValueError(f"invalid size {_show(value)} {_SIZE_HINT}") from None
    else:
        raise ValueError(f"invalid size {_show(value)} {_SIZE_HINT}")
    if result < 0:
        raise ValueError(f"size {_show(value)} must not be negative")
    if result > MAX_SIZE_BYTES:
        raise ValueError(f"size {_show(value)} is too large")
    return result


def _refuse_bits(value: str) -> None:
    """Refuse ``500Gb`` (a lowercase b reads as bits), naming the byte spelling to write."""
    bits = _SIZE_BITS_RE.fullmatch(value.strip())
    if bits:
        number, space, letter, i = bits.groups()
        fixed = f"{number}{space}{letter.upper()}{'i' if i else ''}B"
        raise ValueError(
            f"invalid size {_show(value)}: a lowercase b means bits; write {fixed} for bytes"
        )


def _reject_bool(value: object) -> object:
    if isinstance(value, bool):
        raise ValueError("expected a number, not true/false")
    return value


def _reject_non_str(value: object) -> object:
    if value is not None and not isinstance(value, str):
        raise ValueError(f"expected a string, got {type(value).__name__}")
    return value


def _duration_or_off(value: object) -> float | None:
    """Duration where ``off``/``false``/``null`` means disabled (None)."""
    if value is None or value is False:
        return None
    if isinstance(value, str) and value.strip().lower() in ("off", "false", "no", "none"):
        return None
    return parse_duration(value)


Duration = Annotated[float, BeforeValidator(parse_duration)]
Size = Annotated[int, BeforeValidator(parse_size)]
Int = Annotated[int, BeforeValidator(_reject_bool)]
Str = Annotated[str, BeforeValidator(_reject_non_str)]

_MODEL_CONFIG = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)


# --------------------------------------------------------------------------- models


class ScaleEngineConfig(BaseModel):
    """How to reach the API: one account's settings (today's ``scaleengine:`` section, and
    each entry of ``accounts:``). ``api_key``/``api_secret`` are resolved from inline values,
    ``*_file`` files or ``*_env`` environment variables by :func:`parse_config` before
    validation; ``*_file``/``*_env`` then record where they came from."""

    model_config = _MODEL_CONFIG

    api_url: Str = DEFAULT_API_URL
    cdn_id: Int = Field(gt=0)
    api_key: SecretStr
    api_key_file: Str | None = None
    api_key_env: Str | None = None
    api_secret: SecretStr
    api_secret_file: Str | None = None
    api_secret_env: Str | None = None
    timeout: Duration = DEFAULT_TIMEOUT
    # a bigger answer (counted after decompression) is refused: outcome too_large
    max_response_bytes: Size = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    # what one fetch (all pages of one app and period) may hold: each distinct video counts
    # its video_url (cut to limits.max_label_length) plus 256 bytes; past it: too_large
    max_fetch_bytes: Size = Field(default=DEFAULT_MAX_FETCH_BYTES, ge=1024 * 1024)

    @property
    def api_fingerprint(self) -> str:
        """A digest of every API setting of this section (secrets included, never shown): a
        reload gives an account's apps new clients when it changes."""
        parts = []
        for name in ScaleEngineConfig.model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            parts.append(repr(value))
        return hashlib.sha256("\0".join(parts).encode()).hexdigest()

    @field_validator("api_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        try:
            parts = urlsplit(value)
            ok = parts.scheme in ("http", "https") and bool(parts.hostname)
            parts.port  # noqa: B018 - raises ValueError on a bad port
        except ValueError:
            ok = False
        if not ok or any(c.isspace() for c in value):
            raise ValueError(f"must be an http(s) URL, got {_show(value)}")
        return value

    @field_validator("api_key", "api_secret")
    @classmethod
    def _check_secret(cls, value: SecretStr) -> SecretStr:
        if not value.get_secret_value():
            raise ValueError("must not be empty")
        return value

    @field_validator("timeout")
    @classmethod
    def _check_timeout(cls, value: float) -> float:
        if value <= 0:
            raise ValueError("must be greater than 0")
        return value


class AppConfig(BaseModel):
    """One ScaleEngine application to poll."""

    model_config = _MODEL_CONFIG

    name: Str
    urls: list[Str] | None = None
    daily_bytes_budget: Size | None = None
    monthly_bytes_budget: Size | None = None

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not value.strip():
            raise ValueError("app name must not be empty")
        if value != value.strip() or any(not c.isprintable() for c in value):
            raise ValueError(f"app name {_show(value)} has surrounding spaces or control chars")
        return value

    @field_validator("urls")
    @classmethod
    def _check_urls(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if not value:
            raise ValueError("must be a non-empty list of video URLs (or leave it out)")
        for url in value:
            if not url.strip():
                raise ValueError("URLs must not be empty strings")
        return value


# poll.timeout when unset: this share of poll.interval (at least 10 s), so that with one slow
# app taking all of it, every other app is still polled within 2 intervals (jitter included)
DEFAULT_POLL_TIMEOUT_SHARE = 0.8


class PollConfig(BaseModel):
    """When and how hard to poll."""

    model_config = _MODEL_CONFIG

    interval: Duration = 300.0
    month_interval: Annotated[float | None, BeforeValidator(_duration_or_off)] = 3600.0
    timezone: Str = "UTC"
    page_size: Int = Field(default=DEFAULT_PAGE_SIZE, ge=1, le=10000)
    max_pages: Int = Field(default=DEFAULT_MAX_PAGES, ge=1, le=1_000_000)
    concurrency: Int = Field(default=4, ge=1, le=256)
    retries: Int = Field(default=DEFAULT_RETRIES, ge=0, le=10)
    late_data_window: Annotated[float, BeforeValidator(lambda v: _duration_or_off(v) or 0.0)] = (
        7200.0
    )
    # -1.0 is the "unset" sentinel (a duration can never be negative); resolved to 3 x interval.
    stale_after: Annotated[
        float, BeforeValidator(lambda v: -1.0 if v is None else parse_duration(v))
    ] = -1.0
    # API busy (code 1000, or HTTP 429/503 with Retry-After): the app's next request waits this
    # long, doubling while the API stays busy, up to busy_backoff_max
    busy_backoff: Duration = 120.0
    busy_backoff_max: Duration = 900.0
    # the longest one poll of an app may take, every fetch, page and retry included (outcome
    # poll_timeout past it). -1.0 is the "unset" sentinel: 80 % of interval, at least 10 s.
    timeout: Annotated[
        float, BeforeValidator(lambda v: -1.0 if v is None else parse_duration(v))
    ] = -1.0

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: float) -> float:
        if value < 1.0:
            raise ValueError("must be at least 1s")
        return value

    @field_validator("month_interval")
    @classmethod
    def _check_month_interval(cls, value: float | None) -> float | None:
        if value is not None and value < 1.0:
            raise ValueError("must be at least 1s (or off)")
        return value

    @field_validator("timezone")
    @classmethod
    def _check_timezone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except Exception:  # ZoneInfoNotFoundError is a KeyError; bad names raise ValueError
            raise ValueError(
                f"unknown time zone {_show(value)} (use an IANA name such as UTC)"
            ) from None
        return value

    @model_validator(mode="after")
    def _check_busy_backoff(self) -> PollConfig:
        if self.busy_backoff_max < self.busy_backoff:
            raise ValueError("@busy_backoff_max: must be at least poll.busy_backoff")
        return self

    @model_validator(mode="after")
    def _resolve_stale_after(self) -> PollConfig:
        if self.stale_after < 0:
            self.__dict__["stale_after"] = 3 * self.interval
        elif self.stale_after < self.interval:
            raise ValueError("@stale_after: must be at least poll.interval")
        return self

    @model_validator(mode="after")
    def _resolve_timeout(self) -> PollConfig:
        if self.timeout < 0:
            self.__dict__["timeout"] = max(DEFAULT_POLL_TIMEOUT_SHARE * self.interval, 10.0)
        elif self.timeout == 0:
            raise ValueError("@timeout: must be greater than 0")
        elif self.timeout > self.interval:
            raise ValueError(
                f"@timeout: must be at most poll.interval ({self.interval:g}s): a poll may not"
                " outlast its interval"
            )
        return self

    @property
    def tz(self) -> zoneinfo.ZoneInfo:
        """The poll time zone (``ZoneInfo`` caches instances)."""
        return zoneinfo.ZoneInfo(self.timezone)


def _compile_pattern(value: object) -> object:
    if value is None or isinstance(value, re.Pattern):
        return value
    if not isinstance(value, str):
        raise ValueError(f"expected a regular expression string, got {type(value).__name__}")
    try:
        return re.compile(value)
    except Exception as err:  # re.error, RecursionError, OverflowError
        raise ValueError(f"invalid regular expression {_show(value)}: {err}") from None


Pattern = Annotated[re.Pattern[str] | None, BeforeValidator(_compile_pattern)]


class LimitsConfig(BaseModel):
    """Cardinality protection."""

    model_config = _MODEL_CONFIG

    max_videos_per_app: Int = Field(default=1000, ge=1)
    # bytes of UTF-8 per video_url label; longer ones are cut and a hash appended
    max_label_length: Int = Field(default=DEFAULT_MAX_LABEL_LENGTH, ge=64)
    include: Pattern = None
    exclude: Pattern = None


_LISTEN_RE = re.compile(r"(?:\[(?P<v6>[0-9A-Fa-f:.%\w-]+)\]|(?P<host>[^:\[\]\s]*)):(?P<port>\d+)")


class WebServerConfig(BaseModel):
    """Where to listen."""

    model_config = _MODEL_CONFIG

    listen_address: Str = ":8491"
    telemetry_path: Str = "/metrics"
    config_file: Str | None = None

    @field_validator("listen_address")
    @classmethod
    def _check_listen(cls, value: str) -> str:
        match = _LISTEN_RE.fullmatch(value)
        if not match or int(match.group("port")) > 65535:
            raise ValueError(
                f"invalid listen address {_show(value)} (use host:port, :port or [::1]:port)"
            )
        return value

    @field_validator("telemetry_path")
    @classmethod
    def _check_path(cls, value: str) -> str:
        if not value.startswith("/") or any(c.isspace() or c in "?#" for c in value):
            raise ValueError(f"must be a path starting with /, got {_show(value)}")
        return value

    @property
    def listen_host(self) -> str:
        """Host part of listen_address ("" means all interfaces; IPv6 without brackets)."""
        match = _LISTEN_RE.fullmatch(self.listen_address)
        assert match is not None
        return match.group("v6") or match.group("host") or ""

    @property
    def listen_port(self) -> int:
        """Port part of listen_address."""
        match = _LISTEN_RE.fullmatch(self.listen_address)
        assert match is not None
        return int(match.group("port"))


class StateConfig(BaseModel):
    """Persistence of counters across restarts."""

    model_config = _MODEL_CONFIG

    path: Str | None = None


def apps_before(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError("must be a list of app names or mappings")
    out: list[object] = []
    for index, item in enumerate(value):
        if isinstance(item, str):
            out.append({"name": item})
        elif isinstance(item, dict):
            out.append(item)
        else:
            raise ValueError(
                f"@[{index}]: must be an app name (quote it if it looks like a number) "
                f"or a mapping with name:, got {type(item).__name__}"
            )
    return out


DEFAULT_DISCOVERY_INTERVAL = 3600.0  # how often app.list is asked (discovery.interval)
DEFAULT_DISCOVERY_MAX_APPS = 1000  # apps discovery polls at most (discovery.max_apps)


class DiscoveryConfig(BaseModel):
    """Polling every app app.list names (filtered by include/exclude, Python re.search on
    the app name), beside the apps listed in the config."""

    model_config = _MODEL_CONFIG

    enabled: bool = False
    interval: Duration = DEFAULT_DISCOVERY_INTERVAL
    include: Pattern = None
    exclude: Pattern = None
    max_apps: Int = Field(default=DEFAULT_DISCOVERY_MAX_APPS, ge=1, le=100_000)

    @field_validator("interval")
    @classmethod
    def _check_interval(cls, value: float) -> float:
        if value < 60:
            raise ValueError("must be at least 60s (app.list is asked this often)")
        return value
