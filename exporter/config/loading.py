"""Configuration loading: the YAML file, ``*_file`` secrets, the environment, relative paths.

Files are read through :func:`~exporter.state.read_regular_file` (regular files only, capped,
never blocking); YAML mappings with a key given twice are refused. Everything that goes wrong
is a :class:`~exporter.config.errors.ConfigError` naming the file and the field.
"""

from __future__ import annotations

import logging
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml
from pydantic import ValidationError

from ..state import read_regular_file
from .errors import ConfigError, problems_error, validation_problems
from .errors import show as _show
from .model import (
    NOT_IN_SCALEENGINE,
    SINGLE_FORM_KEYS,
    Config,
    both_forms_message,
    duplicate_account_message,
    single_form_to_accounts,
)

__all__ = ["check_config", "load_config", "load_yaml_file", "parse_config", "read_file"]

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


PLACEHOLDER = "not-checked"  # a secret --check-config could not read, so the rest is checked


@dataclass
class _Resolving:
    """What resolving the secrets of a file found: problems (path, text) and, under
    --check-config, the secrets it could not check."""

    env: Mapping[str, str]
    source: str
    base_dir: str | os.PathLike[str] | None
    check: bool
    single: bool = True  # the single form (scaleengine:): default env vars, its field names
    problems: list[tuple[str, str]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)

    def problem(self, path: str, text: str) -> None:
        self.problems.append((path, f"{path}: {text}"))

    def missing(self, path: str, text: str, detail: str) -> str | None:
        """A secret that is not there: a problem, or under --check-config a note."""
        if self.check:
            self.unchecked.append(f"{path} ({detail})")
            return PLACEHOLDER
        self.problem(path, text)
        return None


def _from_env(r: _Resolving, var: object, path: str, env_field: str) -> str | None:
    if not isinstance(var, str) or not var.strip():
        r.problem(env_field, "must be the name of an environment variable")
        return None
    value = r.env.get(var)
    if value:
        return value
    return r.missing(path, f"the environment variable {var} is not set", f"${var} not set")


def _from_file(r: _Resolving, file_path: object, path: str, file_field: str) -> str | None:
    if not isinstance(file_path, str) or not file_path.strip():
        r.problem(file_field, "must be a file path")
        return None
    resolved = _resolve_path(file_path, r.base_dir)
    if r.check and not os.path.exists(resolved):
        return r.missing(path, "", f"file {resolved} missing")
    try:
        return _read_secret_file(resolved, file_field, r.source)
    except ConfigError as err:
        r.problems.append((file_field, str(err)[len(r.source) + 2 :]))
        return None


def _resolve_one(
    r: _Resolving, entry: dict[Any, Any], prefix: str, name: str, single: bool
) -> None:
    """Fill ``entry[name]`` (api_key or api_secret) from inline, *_file or *_env; in the
    single form, SCALEENGINE_API_KEY/SCALEENGINE_API_SECRET when none is given."""
    path = f"{prefix}.{name}"
    sources = [k for k in (name, f"{name}_file", f"{name}_env") if entry.get(k) is not None]
    if len(sources) > 1:
        r.problem(path, f"give either {' or '.join(sources)}, not both")
        entry.setdefault(name, PLACEHOLDER)
        return
    value: str | None = None
    if sources == [f"{name}_file"]:
        value = _from_file(r, entry[f"{name}_file"], path, f"{prefix}.{name}_file")
        if value is not None:
            entry[f"{name}_file"] = _resolve_path(entry[f"{name}_file"], r.base_dir)
    elif sources == [f"{name}_env"]:
        value = _from_env(r, entry[f"{name}_env"], path, f"{prefix}.{name}_env")
    elif not sources and single:
        default = ENV_API_KEY if name == "api_key" else ENV_API_SECRET
        value = r.env.get(default) or r.missing(
            path,
            f"missing; set {path} or {path}_file, or the environment variable {default}"
            f" (or name another one in {path}_env)",
            f"${default} not set",
        )
    elif not sources:
        r.problem(path, f"missing; each account names its secret: {name}, {name}_file or"
                  f" {name}_env (an environment variable)")  # fmt: skip
    if sources != [name]:  # an inline value is the schema's to check
        entry[name] = PLACEHOLDER if value is None else value  # None: already reported


def _resolve_secrets(data: dict[Any, Any], r: _Resolving) -> dict[Any, Any]:
    """Every account's api_key/api_secret from inline values, *_file or *_env (``data`` in
    the accounts form, as :func:`single_form_to_accounts` gives it)."""
    accounts = data.get("accounts")
    if not isinstance(accounts, list):
        return data  # let the schema report the problem
    single = r.single
    out = []
    for index, entry in enumerate(accounts):
        if isinstance(entry, dict):
            entry = dict(entry)
            prefix = "scaleengine" if single else f"accounts[{index}]"
            for name in ("api_key", "api_secret"):
                _resolve_one(r, entry, prefix, name, single)
        out.append(entry)
    return {**data, "accounts": out}


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


def _single_form_path(path: str) -> str:
    """A path of the normalized data (``accounts[0]....``) as the single form names it."""
    if path in ("accounts", "accounts[0]"):
        return "scaleengine"
    if not path.startswith("accounts[0]."):
        return path
    rest = path[len("accounts[0].") :]
    head = re.split(r"[.\[]", rest, maxsplit=1)[0]
    if head in ("apps", "discovery"):
        return rest
    if head == "name":
        return "scaleengine.account" + rest[len("name") :]
    return "scaleengine." + rest


def _form_problems(data: dict[Any, Any], problems: list[tuple[str, str]]) -> dict[Any, Any]:
    """The loader's checks of the file's form (both forms given, a key of an account in
    scaleengine:, an account named twice), collected; the data without what they refused."""
    if "accounts" in data:
        given = [k for k in SINGLE_FORM_KEYS if k in data]
        for key in given:
            problems.append((key, f"{key}: {both_forms_message(key)}"))
        accounts = data["accounts"]
        if isinstance(accounts, list):
            seen: set[str] = set()
            for index, entry in enumerate(accounts):
                name = entry.get("name") if isinstance(entry, dict) else None
                if isinstance(name, str) and name in seen:
                    path = f"accounts[{index}].name"
                    problems.append((path, f"{path}: {duplicate_account_message(name)}"))
                if isinstance(name, str):
                    seen.add(name)
        return {k: v for k, v in data.items() if k not in given}
    section = data.get("scaleengine")
    if isinstance(section, dict):
        for key in NOT_IN_SCALEENGINE:
            if key in section:
                problems.append((f"scaleengine.{key}", f"unknown field 'scaleengine.{key}'"))
        section = {k: v for k, v in section.items() if k not in NOT_IN_SCALEENGINE}
        data = {**data, "scaleengine": section}
    return data


def _validate(
    data: object, r: _Resolving, base_dir: str | os.PathLike[str] | None
) -> tuple[Config, list[str]]:
    """The config and the secrets not checked; every problem at once as one ConfigError."""
    source = r.source
    if data is None:
        raise ConfigError(f"{source}: the configuration is empty")
    if not isinstance(data, dict):
        raise ConfigError(
            f"{source}: the top level must be a mapping (scaleengine:, apps:, ...), "
            f"got {type(data).__name__}"
        )
    r.single = "accounts" not in data
    data = _form_problems(data, r.problems)
    data = _resolve_secrets(single_form_to_accounts(data), r)
    config = None
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        rename = _single_form_path if r.single else None
        r.problems.extend(validation_problems(exc, rename))
    except RecursionError:
        raise ConfigError(f"{source}: the configuration is nested too deeply") from None
    if r.problems or config is None:
        raise problems_error(source, r.problems)
    return _resolve_other_paths(config, base_dir), r.unchecked


def parse_config(
    data: object,
    env: Mapping[str, str] | None = None,
    source: str = "<config>",
    base_dir: str | os.PathLike[str] | None = None,
    warn_fast_poll: bool = True,
) -> Config:
    """Validate already-parsed configuration data (a dict as YAML would give).

    Secrets come from each account's ``api_key``/``api_secret``, their ``*_file`` variants
    (relative to ``base_dir``) or ``*_env`` (a variable of ``env``, default ``os.environ``);
    in the single form also from ``SCALEENGINE_API_KEY``/``SCALEENGINE_API_SECRET``.
    Relative ``web.config_file`` and ``state.path`` are resolved against ``base_dir`` when it
    is given. Raises only :class:`ConfigError`, naming every problem found.
    """
    r = _Resolving(os.environ if env is None else env, source, base_dir, check=False)
    config, _ = _validate(data, r, base_dir)
    _warn_fast_poll(config, warn_fast_poll)
    return config


def _warn_fast_poll(config: Config, warn: bool) -> None:
    if warn and config.poll.interval < HARD_POLL_INTERVAL:
        log.warning(
            "poll.interval is %gs: below 60s the ScaleEngine API is polled hard "
            "(%d apps, each every %gs)",
            config.poll.interval,
            len(config.app_keys()),
            config.poll.interval,
        )


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


def _read_config(path: str | os.PathLike[str]) -> tuple[str, object]:
    name = os.fspath(path)
    data = load_yaml_file(name)
    if data is None:
        raise ConfigError(f"{name}: the configuration file is empty")
    if _has_inline_secret(data):
        # only a file that holds a secret itself needs to be private
        _warn_if_exposed(name, "config file with an inline secret")
    return name, data


def _has_inline_secret(data: object) -> bool:
    if not isinstance(data, dict):
        return False
    sections = [data.get("scaleengine")]
    if isinstance(data.get("accounts"), list):
        sections += data["accounts"]
    return any(isinstance(s, dict) and ("api_key" in s or "api_secret" in s) for s in sections)


def load_config(path: str | os.PathLike[str], env: Mapping[str, str] | None = None) -> Config:
    """Load and validate the YAML configuration file at ``path``.

    Raises only :class:`ConfigError`; its message starts with the file name.
    """
    name, data = _read_config(path)
    base_dir = os.path.dirname(os.path.abspath(name))
    return parse_config(data, env=env, source=name, base_dir=base_dir)


def check_config(
    path: str | os.PathLike[str], env: Mapping[str, str] | None = None
) -> tuple[Config, list[str]]:
    """``--check-config``: the file validated as :func:`load_config` does, but a secret whose
    file is missing or whose environment variable is not set is not a problem: it is returned
    as a note (``accounts[0].api_secret (file /x missing)``) and the rest is checked with a
    placeholder. Raises :class:`ConfigError` with every problem of the file
    (``ConfigError.problems``)."""
    name, data = _read_config(path)
    base_dir = os.path.dirname(os.path.abspath(name))
    r = _Resolving(os.environ if env is None else env, name, base_dir, check=True)
    return _validate(data, r, base_dir)
