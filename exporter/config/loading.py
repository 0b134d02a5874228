"""Configuration loading: the YAML file, ``*_file`` secrets, the environment, relative paths.

Files are read through :func:`~exporter.state.read_regular_file` (regular files only, capped,
never blocking); YAML mappings with a key given twice are refused. Everything that goes wrong
is a :class:`~exporter.config.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from typing import Any

import yaml
from pydantic import ValidationError

from ..state import read_regular_file
from .errors import ConfigError, format_validation_error
from .errors import show as _show
from .schema import Config

__all__ = ["load_config", "load_yaml_file", "parse_config", "read_file"]

# one logger for the whole package, as when it was one module
log = logging.getLogger("exporter.config")

ENV_API_KEY = "SCALEENGINE_API_KEY"
ENV_API_SECRET = "SCALEENGINE_API_SECRET"

MAX_CONFIG_BYTES = 4 * 1024 * 1024
MAX_SECRET_BYTES = 64 * 1024
HARD_POLL_INTERVAL = 60.0


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
