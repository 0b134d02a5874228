"""Command line: wires config -> client -> poller -> store -> exposition -> HTTP."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from . import __version__
from .config import ConfigError
from .daemon import fail, serve_forever, stop_simulator
from .logs import add_log_flags, log_level_of, set_secrets, setup_logging
from .metrics import Exposition
from .state import StateFile, StateLockedError, check_state_path, open_state_file
from .store import Store
from .web.app import parse_listen_address
from .web.webconfig import WebConfig, load_web_config
from .worker import budgets_of

if TYPE_CHECKING:  # the serving process runs on plain Settings (config/plain.py), no pydantic
    import argparse

    from .config import Config

log = logging.getLogger("exporter")

DEFAULT_CONFIG = "config.yaml"
DEFAULT_LISTEN = ":8491"
DEMO_BUDGETS = {
    "demo-origin": ("40GB", "1TB"),
    "live-events": ("15GB", "400GB"),
    "vod-library": ("60GB", "1.5TB"),
}


def build_parser() -> argparse.ArgumentParser:
    import argparse  # the command line's only: the serving process does not load it

    p = argparse.ArgumentParser(
        prog="scaleengine-exporter",
        description="Prometheus exporter for ScaleEngine usage.vse bandwidth and request data.",
        epilog="History: `scaleengine-exporter backfill --help` (past days for promtool)."
        " The account's apps: `scaleengine-exporter list-apps --help`.",
    )
    p.add_argument("--config", metavar="PATH", help=f"YAML config file (default {DEFAULT_CONFIG})")
    _add_override_flags(p)
    add_log_flags(p, "info", "only log messages of this level or above (default info)")
    p.add_argument(
        "--check-config", action="store_true", help="validate the config and exit (0 ok, 2 bad)"
    )
    p.add_argument(
        "--once",
        action="store_true",
        help="poll every app once, print the exposition, exit 0 if all apps succeeded else 1",
    )
    p.add_argument(
        "--demo",
        action="store_true",
        help="run against the built-in ScaleEngine simulator on loopback (no credentials needed)",
    )
    p.add_argument("--version", action="version", version=f"scaleengine-exporter {__version__}")
    return p


def _add_override_flags(p: argparse.ArgumentParser) -> None:
    """The flags that override a config setting, and those of the daemon's config handling."""
    p.add_argument(
        "--web.listen-address",
        dest="listen_address",
        metavar="ADDR",
        help=f"address to listen on, overrides web.listen_address (default {DEFAULT_LISTEN})",
    )
    p.add_argument(
        "--web.telemetry-path",
        dest="telemetry_path",
        metavar="PATH",
        help="path of the metrics endpoint, overrides web.telemetry_path (default /metrics)",
    )
    p.add_argument(
        "--web.config.file",
        dest="web_config_file",
        metavar="PATH",
        help="exporter-toolkit web config (TLS, basic auth), overrides web.config_file",
    )
    p.add_argument(
        "--state.path",
        dest="state_path",
        metavar="PATH",
        help="file that keeps the counters across restarts, overrides state.path",
    )
    p.add_argument(
        "--web.enable-lifecycle",
        dest="enable_lifecycle",
        action="store_true",
        help="enable POST /-/reload (reload the config, as SIGHUP does)",
    )
    p.add_argument(
        "--config.auto-reload-interval",
        dest="auto_reload_interval",
        metavar="DURATION",
        help="re-read the config file when its content changes, checked this often, and "
        "apply it as SIGHUP does (e.g. 30s; 0 or absent: off). Sees Kubernetes ConfigMap "
        "updates, which swap a symlink",
    )


def demo_config(api_url: str, path: str | None = None) -> Config:
    """The demo's config: the simulator's URL and fake credentials in the scaleengine section.

    With ``path``, that file's apps, budgets, poll, limits, web and state settings are used
    (its scaleengine section, if any, is replaced); without, the simulator's demo apps with
    budgets and short intervals so that data shows within seconds.
    """
    from .config import load_yaml_file, parse_config
    from .simulator import DEMO_API_KEY, DEMO_API_SECRET, DEMO_APPS, DEMO_CDN_ID

    scaleengine = {
        "api_url": api_url,
        "cdn_id": DEMO_CDN_ID,
        "api_key": DEMO_API_KEY,
        "api_secret": DEMO_API_SECRET,
        "timeout": "5s",
    }
    if path is not None:
        data = load_yaml_file(path)
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections")
        _demo_accounts(data, scaleengine)
        base_dir = os.path.dirname(os.path.abspath(path))
        return parse_config(data, env={}, source=path, base_dir=base_dir, warn_fast_poll=False)
    apps = []
    for name in DEMO_APPS:
        entry: dict[str, Any] = {"name": name}
        if name in DEMO_BUDGETS:
            entry["daily_bytes_budget"], entry["monthly_bytes_budget"] = DEMO_BUDGETS[name]
        apps.append(entry)
    data = {
        "scaleengine": scaleengine,
        "apps": apps,
        "poll": {"interval": "10s", "month_interval": "30s"},
    }
    # the demo polls its own simulator: no warning about polling the real API hard
    return parse_config(data, env={}, source="demo", warn_fast_poll=False)


def _demo_accounts(data: dict[str, Any], api: dict[str, Any]) -> None:
    """--demo with a config file: every account polls the simulator (its API settings and
    secrets replaced by the simulator's); the single form's scaleengine section likewise."""
    accounts = data.get("accounts")
    if not isinstance(accounts, list):
        data["scaleengine"] = api
        return
    for index, entry in enumerate(accounts):
        if isinstance(entry, dict):
            kept = {k: v for k, v in entry.items() if k in ("name", "apps", "discovery")}
            accounts[index] = {**kept, **api}


class Exporter:
    """Store, poller and exposition in one process (--once, tests); the daemon splits them.

    ``state_file``: the state file the command line opened and locked; without it, the one
    ``config.state.path`` names (tests and the benchmark, which take no lock).
    """

    def __init__(
        self, config: Config, clock: Any = None, state_file: StateFile | None = None
    ) -> None:
        self.config = config
        from .poller import Poller  # not needed by the serving process of the daemon

        self.store = Store(config.app_keys())
        if state_file is None:
            state_file = open_state_file(config.state.path)
        kwargs = {"clock": clock} if clock is not None else {}
        self.poller = Poller(config, self.store, state_file=state_file, **kwargs)
        budgets = budgets_of(config)
        self.exposition = Exposition(self.store, config.poll.timezone, budgets)


def _start_simulator() -> Any:
    """--demo: the built-in simulator, started on loopback."""
    from .simulator import Simulator

    simulator = Simulator()
    simulator.start()
    log.info("demo mode: polling the built-in simulator", extra={"api_url": simulator.url})
    return simulator


def _loader(args: argparse.Namespace, simulator: Any) -> Callable[[], Config]:
    """What loads the config at start and at each reload: the file (or the demo's) with the
    command line's overrides applied."""

    def load() -> Config:
        from .config import load_config

        if simulator is not None:
            return _with_flags(demo_config(simulator.url, args.config), args)
        return _with_flags(load_config(args.config or DEFAULT_CONFIG), args)

    return load


def _check_state_path(config: Config) -> None:
    """A state file that can never be saved is a config error (also for --check-config)."""
    if config.state.path:
        problem = check_state_path(config.state.path)
        if problem:
            raise ConfigError(f"state.path: {problem}")


def lock_state(config: Config) -> StateFile | None:
    """The state file, opened once here and locked for this process's life (and the poll
    worker's, which inherits the lock): one exporter per state file, since a second one would
    overwrite the first one's counters. Raises StateLockedError or OSError."""
    state = open_state_file(config.state.path)
    if state is not None:
        state.acquire()
    return state


def run_once(config: Config, state: StateFile | None) -> int:
    """--once: poll every app, print the exposition; 0 when every app is up, else 1."""
    exporter = Exporter(config, state_file=state)
    # scaleengine_app_listed; a failure is logged, no more (with discovery on: exit 1)
    listed = exporter.poller.check_app_list() or not exporter.poller.discovering
    ok = exporter.poller.poll_all() and listed
    exporter.exposition.render_now()
    sys.stdout.buffer.write(exporter.exposition.text())
    sys.stdout.flush()
    exporter.poller.shutdown()
    # an app whose usage could not be rendered is down too
    ok = ok and all(st.up for st in exporter.store.view().status.values())
    return 0 if ok else 1


def _subcommand(argv: list[str]) -> int | None:
    """`backfill` and `list-apps`: their own flags and main; None for the daemon's."""
    if argv[:1] == ["backfill"]:
        from .backfill import main as backfill_main

        return backfill_main(argv[1:])
    if argv[:1] == ["list-apps"]:
        from .listapps import main as list_apps_main

        return list_apps_main(argv[1:])
    return None


def _check_config_only(args: argparse.Namespace) -> int:
    """--check-config (without --demo): the file checked without its secrets."""
    try:
        _auto_reload_interval(args.auto_reload_interval)
    except ConfigError as err:
        return fail(str(err))
    from .checkconfig import check_config_file  # pydantic: not in the serving process

    return check_config_file(args.config or DEFAULT_CONFIG, lambda c: _with_flags(c, args))


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    code = _subcommand(argv)
    if code is not None:
        return code
    args = build_parser().parse_args(argv)
    level = log_level_of(args)
    formatter = setup_logging(level, args.log_format)
    if args.check_config and not args.demo:
        return _check_config_only(args)

    simulator = None
    try:
        if args.demo:
            simulator = _start_simulator()
        load = _loader(args, simulator)
        auto_reload = _auto_reload_interval(args.auto_reload_interval)
        config = load()
        _check_state_path(config)
        web_config = load_web_config(config.web.config_file) if config.web.config_file else None
    except ConfigError as err:
        stop_simulator(simulator)
        return fail(str(err))
    set_secrets(formatter, config.secret_values())

    if args.check_config:
        from .checkconfig import summary

        print(f"config ok: {summary(config)}")
        return 0
    try:
        state = lock_state(config)
    except (StateLockedError, OSError) as err:
        stop_simulator(simulator)
        return fail(f"state.path: {err}")
    if args.once:
        code = run_once(config, state)
        stop_simulator(simulator)
        return code
    if simulator is None:  # the demo's simulator lives in this process: no exec for it
        try:
            _become_serving(args, config, web_config, level, state, auto_reload)
        except OSError as err:  # the interpreter cannot be started again: nothing runs yet
            return fail(f"cannot start the serving process: {err}")
    return serve_forever(
        config,
        web_config,
        level,
        args.log_format,
        simulator,
        state,
        load=load,
        lifecycle=args.enable_lifecycle,
        formatter=formatter,
        auto_reload=auto_reload,
        config_path=args.config or (None if simulator is not None else DEFAULT_CONFIG),
    )


def _become_serving(
    args: argparse.Namespace,
    config: Config,
    web_config: WebConfig | None,
    level: str,
    state: StateFile | None,
    auto_reload: float,
) -> None:
    """Exec into the lean serving process (exporter/serving.py), handing it the validated
    config as plain settings: pydantic and the YAML loader stay behind in this image."""
    from .config import to_plain
    from .handoff import exec_serving

    payload = {
        "config": to_plain(config),
        "web_config": web_config,
        "log": (level, args.log_format),
        "state": state.handoff() if state is not None else None,
        "lifecycle": args.enable_lifecycle,
        "auto_reload": auto_reload,
        "config_path": args.config or DEFAULT_CONFIG,
        "flags": reload_flags(args),
    }
    # an early SIGHUP must not end the daemon before serving.py installs the reload handler
    # (an ignored signal stays ignored across exec)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    exec_serving(payload, [] if state is None or state.lock_fd is None else [state.lock_fd])


RELOAD_FLAGS = ("config", "listen_address", "telemetry_path", "web_config_file", "state_path")


def reload_flags(args: argparse.Namespace) -> dict[str, Any]:
    """The command line's part of each reload: the config file and the overriding flags."""
    return {name: getattr(args, name) for name in RELOAD_FLAGS}


def _auto_reload_interval(value: str | None) -> float:
    """--config.auto-reload-interval in seconds; 0 when off."""
    if value is None:
        return 0.0
    from .config import parse_duration

    try:
        seconds = parse_duration(value)
    except ValueError as err:
        raise ConfigError(f"--config.auto-reload-interval: {err}") from None
    if seconds != 0 and seconds < 1:
        raise ConfigError("--config.auto-reload-interval: at least 1s (or 0: off)")
    return seconds


def _with_flags(config: Config, args: argparse.Namespace) -> Config:
    """The command line's --web.* and --state.path flags over the config's values."""
    updates: dict[str, Any] = {}
    if args.listen_address:
        try:
            parse_listen_address(args.listen_address)
        except ValueError as err:
            raise ConfigError(f"--web.listen-address: {err}") from None
        updates["listen_address"] = args.listen_address
    if args.telemetry_path:
        if not args.telemetry_path.startswith("/"):
            raise ConfigError("--web.telemetry-path: must start with /")
        updates["telemetry_path"] = args.telemetry_path
    if args.web_config_file:
        updates["config_file"] = args.web_config_file
    if updates:
        config = config.model_copy(update={"web": config.web.model_copy(update=updates)})
    if args.state_path:
        state = config.state.model_copy(update={"path": args.state_path})
        config = config.model_copy(update={"state": state})
    return config


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
