"""Configuration schema and loader.

The YAML file is validated with pydantic models (``extra="forbid"`` everywhere) and every
problem is reported as a :class:`ConfigError` whose message names the offending field with a
dotted path (``apps[2].name``), never a secret value.

Durations accept ``30s``, ``5m``, ``2h``, ``1d``, ``1h30m`` (units ms, s, m, h, d, w, decimals
allowed) or a bare number of seconds, and are stored as float seconds. Sizes accept a bare
integer (bytes) or a number with a unit: B, KB/MB/GB/TB/PB (powers of 1000) or
KiB/MiB/GiB/TiB/PiB (powers of 1024), case-insensitive, optional space; stored as int bytes.
"""

from __future__ import annotations

import logging
import math
import os
import re
import stat
import zoneinfo
from collections.abc import Mapping
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any
from urllib.parse import urlsplit

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from exporter.state import read_regular_file

__all__ = [
    "AppConfig",
    "Config",
    "ConfigError",
    "LimitsConfig",
    "PollConfig",
    "ScaleEngineConfig",
    "StateConfig",
    "WebServerConfig",
    "load_config",
    "load_yaml_file",
    "parse_config",
    "parse_duration",
    "parse_size",
]

log = logging.getLogger("exporter.config")

ENV_API_KEY = "SCALEENGINE_API_KEY"
ENV_API_SECRET = "SCALEENGINE_API_SECRET"
DEFAULT_API_URL = "https://api.scaleengine.net/stable/"

MAX_CONFIG_BYTES = 4 * 1024 * 1024
# The client's defaults, one constant each: exporter.scaleengine's client takes these when it is
# built without a config (tests, bench), so the two cannot drift apart.
DEFAULT_TIMEOUT = 10.0  # seconds for a whole request (scaleengine.timeout)
DEFAULT_PAGE_SIZE = 1000  # rows asked per page (poll.page_size)
DEFAULT_MAX_PAGES = 1000  # pages of one fetch (poll.max_pages)
DEFAULT_RETRIES = 3  # retries of a transient failure of one page (poll.retries)
DEFAULT_MAX_RESPONSE_BYTES = 64 * 1024 * 1024  # one answer, decompressed
DEFAULT_MAX_FETCH_BYTES = 256 * 1024 * 1024  # what one fetch holds
DEFAULT_MAX_LABEL_LENGTH = 1024  # bytes of UTF-8 per video_url label (limits.max_label_length)
MAX_SECRET_BYTES = 64 * 1024
MAX_DURATION_SECONDS = 10 * 365 * 86400.0  # ten years: anything longer is a typo
HARD_POLL_INTERVAL = 60.0


class ConfigError(Exception):
    """A configuration problem, with a one-line human message naming the field.

    ``field`` is the dotted path of the (first) offending field when there is one.
    """

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


# --------------------------------------------------------------------------- helpers


def _show(value: object, limit: int = 60) -> str:
    """repr() of a user value, shortened so messages stay one line."""
    text = repr(value)
    if len(text) > limit:
        text = text[: limit - 3] + "..."
    return text


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
    """How to reach the API. ``api_key``/``api_secret`` are resolved from inline values,
    ``*_file`` files or the environment by :func:`parse_config` before validation."""

    model_config = _MODEL_CONFIG

    api_url: Str = DEFAULT_API_URL
    cdn_id: Int = Field(gt=0)
    api_key: SecretStr
    api_key_file: Str | None = None
    api_secret: SecretStr
    api_secret_file: Str | None = None
    timeout: Duration = DEFAULT_TIMEOUT
    # a bigger answer (counted after decompression) is refused: outcome too_large
    max_response_bytes: Size = Field(default=DEFAULT_MAX_RESPONSE_BYTES, ge=1024)
    # what one fetch (all pages of one app and period) may hold: each distinct video counts
    # its video_url (cut to limits.max_label_length) plus 256 bytes; past it: too_large
    max_fetch_bytes: Size = Field(default=DEFAULT_MAX_FETCH_BYTES, ge=1024 * 1024)

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


def _apps_before(value: object) -> object:
    if not isinstance(value, list):
        raise ValueError("must be a list of app names or mappings")
    if not value:
        raise ValueError("must list at least one app")
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


class Config(BaseModel):
    """The whole exporter configuration."""

    model_config = _MODEL_CONFIG

    scaleengine: ScaleEngineConfig
    apps: Annotated[list[AppConfig], BeforeValidator(_apps_before)]
    poll: PollConfig = PollConfig()
    limits: LimitsConfig = LimitsConfig()
    web: WebServerConfig = WebServerConfig()
    state: StateConfig = StateConfig()

    @field_validator("apps")
    @classmethod
    def _unique_apps(cls, value: list[AppConfig]) -> list[AppConfig]:
        seen: set[str] = set()
        for index, app in enumerate(value):
            if app.name in seen:
                raise ValueError(f"@[{index}].name: app {_show(app.name)} is listed twice")
            seen.add(app.name)
        return value

    def secret_values(self) -> list[str]:
        """The API key and secret, for a log redaction filter."""
        return [
            self.scaleengine.api_key.get_secret_value(),
            self.scaleengine.api_secret.get_secret_value(),
        ]


# --------------------------------------------------------------------------- errors


def _loc_path(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        else:
            path += ("." if path else "") + str(part)
    return path


def _error_text(err: Mapping[str, Any]) -> tuple[str, str]:
    """(path, reason) for one pydantic error dict."""
    loc = tuple(err.get("loc", ()))
    kind = err.get("type", "")
    msg = str(err.get("msg", "invalid value"))
    path = _loc_path(loc)
    if kind == "extra_forbidden":
        return path, f"unknown field {path!r}"
    if kind == "missing":
        return path, "required field missing"
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return path, "must be a mapping"
    if kind == "list_type":
        return path, "must be a list"
    if kind == "int_parsing":
        return path, "expected a whole number, not text"
    if kind == "int_from_float":
        return path, "expected a whole number, not a fraction"
    if kind in ("int_type", "float_type", "float_parsing"):
        return path, "expected a number"
    if msg.startswith("Value error, "):
        msg = msg[len("Value error, ") :]
    if msg.startswith("Input should be "):  # pydantic's bounds and choices, in our voice
        msg = "must be " + msg[len("Input should be ") :]
    # A model-level validator names the field itself ("stale_after: ...").
    if msg.startswith("@") and ": " in msg:
        sub, msg = msg[1:].split(": ", 1)
        path = f"{path}{sub}" if sub.startswith("[") else f"{path}.{sub}" if path else sub
    return path, msg


def format_validation_error(exc: ValidationError, source: str) -> ConfigError:
    """Turn a pydantic ValidationError into a one-line ConfigError."""
    parts: list[str] = []
    first_path: str | None = None
    errors = exc.errors(include_input=False, include_url=False)
    for err in errors[:5]:
        path, reason = _error_text(err)
        if first_path is None:
            first_path = path
        if reason.startswith("unknown field"):
            parts.append(reason)
        else:
            parts.append(f"{path}: {reason}" if path else reason)
    text = "; ".join(parts)
    if len(errors) > 5:
        text += f"; and {len(errors) - 5} more"
    return ConfigError(f"{source}: {text}", field=first_path)


# --------------------------------------------------------------------------- loading


def _warn_if_exposed(path: str, what: str) -> None:
    try:
        st = os.stat(path)
    except (OSError, ValueError):
        return
    if stat.S_ISREG(st.st_mode) and st.st_mode & 0o077:
        log.warning(
            "%s %s is readable by group/others (mode %04o); consider chmod 600",
            what,
            path,
            stat.S_IMODE(st.st_mode),
        )


def _resolve_path(path: str, base_dir: str | os.PathLike[str] | None) -> str:
    expanded = os.path.expanduser(path)
    if base_dir is not None and not os.path.isabs(expanded):
        return os.path.join(os.fspath(base_dir), expanded)
    return expanded


def read_file(path: str, max_bytes: int) -> bytes:
    """:func:`~exporter.state.read_regular_file` (regular files only, at most ``max_bytes``,
    never blocking) with every failure a ValueError whose message is the reason."""
    try:
        return read_regular_file(path, max_bytes)
    except (OSError, ValueError) as err:
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err)
        raise ValueError(reason) from None


def _read_secret_file(path: str, field: str, source: str) -> str:
    try:
        raw = read_file(path, MAX_SECRET_BYTES)
    except ValueError as err:
        raise ConfigError(
            f"{source}: {field}: cannot read secret file {path!r}: {err}", field=field
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(
            f"{source}: {field}: secret file {path!r} is not valid UTF-8", field=field
        ) from None
    text = text.rstrip("\r\n")
    if not text:
        raise ConfigError(f"{source}: {field}: secret file {path!r} is empty", field=field)
    _warn_if_exposed(path, "secret file")
    return text


def _resolve_secrets(
    data: dict[Any, Any],
    env: Mapping[str, str],
    source: str,
    base_dir: str | os.PathLike[str] | None,
) -> dict[Any, Any]:
    """Fill scaleengine.api_key/api_secret from *_file or the environment."""
    se = data.get("scaleengine")
    if not isinstance(se, dict):
        return data  # let the schema report the problem
    se = dict(se)
    for name, env_name in (("api_key", ENV_API_KEY), ("api_secret", ENV_API_SECRET)):
        file_key = f"{name}_file"
        inline = se.get(name)
        file_path = se.get(file_key)
        if inline is not None and file_path is not None:
            raise ConfigError(
                f"{source}: scaleengine.{name}: give either {name} or {file_key}, not both",
                field=f"scaleengine.{name}",
            )
        if file_path is not None:
            field = f"scaleengine.{file_key}"
            if not isinstance(file_path, str) or not file_path.strip():
                raise ConfigError(f"{source}: {field}: must be a file path", field=field)
            resolved = _resolve_path(file_path, base_dir)
            se[name] = _read_secret_file(resolved, field, source)
            se[file_key] = resolved
        elif inline is None:
            value = env.get(env_name)
            if value:
                se[name] = value
            else:
                raise ConfigError(
                    f"{source}: scaleengine.{name}: missing; set scaleengine.{name} or "
                    f"scaleengine.{file_key}, or the environment variable {env_name}",
                    field=f"scaleengine.{name}",
                )
    data = dict(data)
    data["scaleengine"] = se
    return data


def _resolve_other_paths(config: Config, base_dir: str | os.PathLike[str] | None) -> Config:
    if base_dir is None:
        return config
    update: dict[str, Any] = {}
    if config.web.config_file:
        path = _resolve_path(config.web.config_file, base_dir)
        update["web"] = config.web.model_copy(update={"config_file": path})
    if config.state.path:
        path = _resolve_path(config.state.path, base_dir)
        update["state"] = config.state.model_copy(update={"path": path})
    return config.model_copy(update=update) if update else config


def parse_config(
    data: object,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    base_dir: str | os.PathLike[str] | None = None,
    warn_fast_poll: bool = True,
) -> Config:
    """Validate already-parsed configuration data (a dict as YAML would give).

    Secrets come from ``scaleengine.api_key``/``api_secret``, their ``*_file`` variants
    (relative to ``base_dir``) or ``SCALEENGINE_API_KEY``/``SCALEENGINE_API_SECRET`` in ``env``
    (default ``os.environ``). Relative ``web.config_file`` and ``state.path`` are resolved
    against ``base_dir`` when it is given. Raises only :class:`ConfigError`.
    """
    if env is None:
        env = os.environ
    if data is None:
        raise ConfigError(f"{source}: the configuration is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping (scaleengine:, apps:, ...), "
            f"got {type(data).__name__}"
        )
    data = _resolve_secrets(data, env, source, base_dir)
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, source) from None
    except RecursionError:
        raise ConfigError(f"{source}: the configuration is nested too deeply") from None
    if warn_fast_poll and config.poll.interval < HARD_POLL_INTERVAL:
        log.warning(
            "poll.interval is %gs: below 60s the ScaleEngine API is polled hard "
            "(%d apps, each every %gs)",
            config.poll.interval,
            len(config.apps),
            config.poll.interval,
        )
    return _resolve_other_paths(config, base_dir)


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate mapping keys."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=True)
        try:
            duplicate = key in seen
            seen.add(key)
        except TypeError:
            continue  # unhashable: construct_mapping reports it below
        if duplicate:
            raise yaml.constructor.ConstructorError(
                "while constructing a mapping",
                node.start_mark,
                f"found duplicate key {_show(key)}",
                key_node.start_mark,
            )
    return loader.construct_mapping(node, deep=True)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,  # type: ignore[arg-type]
)


def load_yaml_file(path: str | os.PathLike[str], what: str = "config file") -> object:
    """Read and parse a YAML file; raise ConfigError naming the file on any problem."""
    name = os.fspath(path)
    try:
        raw = read_file(name, MAX_CONFIG_BYTES)
    except ValueError as err:
        raise ConfigError(f"{name}: cannot read {what}: {err}") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ConfigError(f"{name}: {what} is not valid UTF-8 (byte {err.start})") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = err.problem or err.context or "invalid YAML"
        raise ConfigError(f"{name}: YAML syntax error{where}: {problem}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{name}: invalid YAML: {_show(str(err), 200)}") from None
    except RecursionError:
        raise ConfigError(f"{name}: YAML is nested too deeply") from None
    except Exception as err:  # e.g. ValueError for absurdly long integers
        raise ConfigError(f"{name}: invalid YAML: {_show(str(err), 200)}") from None
    return data


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the YAML configuration file at ``path``.

    Raises only :class:`ConfigError`; its message starts with the file name.
    """
    name = os.fspath(path)
    data = load_yaml_file(name)
    if data is None:
        raise ConfigError(f"{name}: the configuration file is empty")
    section = data.get("scaleengine") if isinstance(data, dict) else None
    if isinstance(section, dict) and ("api_key" in section or "api_secret" in section):
        # only a file that holds a secret itself needs to be private
        _warn_if_exposed(name, "config file with an inline secret")
    base_dir = os.path.dirname(os.path.abspath(name))
    return parse_config(data, env=env, source=name, base_dir=base_dir)
