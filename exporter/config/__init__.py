"""The exporter's configuration: YAML file -> validated, frozen :class:`Config`.

- ``schema``: the pydantic models (``Config`` and its sections, ``extra="forbid"``
  everywhere) and the value parsers they use (:func:`parse_duration`, :func:`parse_size`).
- ``model``: :class:`Config` (``accounts``, ``poll``, ``limits``, ``web``, ``state``) and
  :class:`AccountConfig`; the single form (``scaleengine:``/``apps:``/``discovery:``) becomes
  one account.
- ``loading``: reading the YAML file (unique keys, size cap, never blocking), ``*_file``
  secrets, ``SCALEENGINE_API_KEY``/``SCALEENGINE_API_SECRET`` from the environment and paths
  relative to the config file (:func:`load_config`, :func:`parse_config`).
- ``errors``: :class:`ConfigError` and :func:`format_validation_error`, which turns pydantic's
  errors into one line naming the field with a dotted path (``apps[2].name``), never a secret.

Everything the rest of the exporter, the tests and the benchmarks use is importable from here.
"""

from .errors import ConfigError, format_validation_error
from .loading import check_config, load_config, load_yaml_file, parse_config, read_file
from .model import MAX_ACCOUNT_NAME, AccountConfig, Config
from .schema import (
    DEFAULT_MAX_FETCH_BYTES,
    DEFAULT_MAX_LABEL_LENGTH,
    DEFAULT_MAX_PAGES,
    DEFAULT_MAX_RESPONSE_BYTES,
    DEFAULT_PAGE_SIZE,
    DEFAULT_RETRIES,
    DEFAULT_TIMEOUT,
    AppConfig,
    DiscoveryConfig,
    LimitsConfig,
    PollConfig,
    ScaleEngineConfig,
    StateConfig,
    WebServerConfig,
    parse_duration,
    parse_size,
)

__all__ = [
    "DEFAULT_MAX_FETCH_BYTES",
    "DEFAULT_MAX_LABEL_LENGTH",
    "DEFAULT_MAX_PAGES",
    "DEFAULT_MAX_RESPONSE_BYTES",
    "DEFAULT_PAGE_SIZE",
    "DEFAULT_RETRIES",
    "DEFAULT_TIMEOUT",
    "MAX_ACCOUNT_NAME",
    "AccountConfig",
    "AppConfig",
    "Config",
    "ConfigError",
    "DiscoveryConfig",
    "LimitsConfig",
    "PollConfig",
    "ScaleEngineConfig",
    "StateConfig",
    "WebServerConfig",
    "check_config",
    "format_validation_error",
    "load_config",
    "load_yaml_file",
    "parse_config",
    "parse_duration",
    "parse_size",
    "read_file",
]
