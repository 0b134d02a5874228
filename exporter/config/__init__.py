"""The exporter's configuration: YAML file -> validated, frozen :class:`Config`.

- ``schema``: the pydantic models of the sections (``extra="forbid"`` everywhere) and the
  value parsers they use (:func:`parse_duration`, :func:`parse_size`).
- ``model``: :class:`Config` and :class:`AccountConfig`: both file forms (``scaleengine:`` +
  ``apps:``, or ``accounts:``) load into ``Config.accounts``.
- ``views``: what the code asks of a config (its apps with their keys, an account by name),
  written once for the model and its plain copy.
- ``loading``: reading the YAML file (unique keys, size cap, never blocking), ``*_file`` and
  ``*_env`` secrets, ``SCALEENGINE_API_KEY``/``SCALEENGINE_API_SECRET`` from the environment
  and paths relative to the config file (:func:`load_config`, :func:`parse_config`,
  :func:`check_config`).
- ``errors``: :class:`ConfigError` and :func:`format_validation_error`, which turns pydantic's
  errors into lines naming the field with a dotted path (``apps[2].name``), never a secret.
- ``defaults``: the client's ``DEFAULT_*`` constants.
- ``plain``: :func:`to_plain`, a validated config as pydantic-free :class:`Settings` (secrets
  as :class:`Secret`), what the daemon's long-lived processes run on.

Everything the rest of the exporter, the tests and the benchmarks use is importable from here.
The names load on first use: pydantic is loaded by what validates (``schema``, ``model``,
``loading``), never by what only takes ``ConfigError``, the defaults or plain settings (the
daemon's serving process and poll worker stay without it; tests/test_footprint.py checks).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .defaults import (
        DEFAULT_MAX_FETCH_BYTES,
        DEFAULT_MAX_LABEL_LENGTH,
        DEFAULT_MAX_PAGES,
        DEFAULT_MAX_RESPONSE_BYTES,
        DEFAULT_PAGE_SIZE,
        DEFAULT_RETRIES,
        DEFAULT_TIMEOUT,
    )
    from .errors import ConfigError, format_validation_error
    from .loading import check_config, load_config, load_yaml_file, parse_config, read_file
    from .model import MAX_ACCOUNT_NAME, AccountConfig, Config
    from .plain import Secret, Settings, to_plain
    from .schema import (
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

_MODULES = {
    "defaults": [
        "DEFAULT_MAX_FETCH_BYTES",
        "DEFAULT_MAX_LABEL_LENGTH",
        "DEFAULT_MAX_PAGES",
        "DEFAULT_MAX_RESPONSE_BYTES",
        "DEFAULT_PAGE_SIZE",
        "DEFAULT_RETRIES",
        "DEFAULT_TIMEOUT",
    ],
    "errors": ["ConfigError", "format_validation_error"],
    "loading": ["check_config", "load_config", "load_yaml_file", "parse_config", "read_file"],
    "model": ["MAX_ACCOUNT_NAME", "AccountConfig", "Config"],
    "plain": ["Secret", "Settings", "to_plain"],
    "schema": [
        "AppConfig",
        "DiscoveryConfig",
        "LimitsConfig",
        "PollConfig",
        "ScaleEngineConfig",
        "StateConfig",
        "WebServerConfig",
        "parse_duration",
        "parse_size",
    ],
}
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
    "Secret",
    "Settings",
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
    "to_plain",
]


__getattr__, __dir__ = lazy_names(__name__, _MODULES, globals())
