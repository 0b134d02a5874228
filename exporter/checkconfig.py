"""``--check-config``: a config checked as a CI job can, without its secrets.

Every problem of the file is printed, one per line on stderr, each naming its field (exit 2);
a secret whose file is missing or whose environment variable is not set is printed as
``not checked: accounts[0].api_secret (file /x missing)`` on stdout and does not fail the
check (exit 0). The state path and the web config file are checked too.
"""

from __future__ import annotations

import sys
from collections.abc import Callable

from .config import Config, ConfigError, check_config
from .state import check_state_path
from .web.webconfig import load_web_config

__all__ = ["check_config_file", "summary"]


def summary(config: Config) -> str:
    """What --check-config says of a good config: apps, and accounts when several."""
    apps = len(config.app_keys())
    accounts = "" if len(config.accounts) == 1 else f" in {len(config.accounts)} accounts"
    discovering = any(a.discovery.enabled for a in config.accounts)
    return f"{apps} app(s){accounts}" + (
        " and those app.list names (discovery)" if discovering else ""
    )


def check_config_file(path: str, with_flags: Callable[[Config], Config]) -> int:
    """Check the config file at ``path`` (``with_flags``: the command line's overrides);
    the exit status: 0 valid (secrets perhaps not checked), 2 not."""
    try:
        config, unchecked = check_config(path)
    except ConfigError as err:
        return _fail_all(path, err)
    try:
        config = with_flags(config)
    except ConfigError as err:
        print(f"scaleengine-exporter: error: {err}", file=sys.stderr)
        return 2
    problems = []
    if config.state.path:
        problem = check_state_path(config.state.path)
        if problem:
            problems.append(f"state.path: {problem}")
    if config.web.config_file:
        try:
            load_web_config(config.web.config_file)
        except ConfigError as err:
            problems.append(str(err))
    for note in unchecked:
        print(f"not checked: {note}")
    for problem in problems:
        print(f"scaleengine-exporter: error: {problem}", file=sys.stderr)
    if problems:
        return 2
    print(f"config ok: {summary(config)}")
    return 0


def _fail_all(path: str, err: ConfigError) -> int:
    """Every problem of a bad config, one line each, each naming the file."""
    for problem in err.problems:
        text = problem if problem.startswith(path) else f"{path}: {problem}"
        print(f"scaleengine-exporter: error: {text}", file=sys.stderr)
    return 2
