"""The daemon's serving process: ``python -m exporter.serving FD``, exec'd by the command line.

The command line validates the config with pydantic, locks the state file and execs this
module with the validated settings as plain objects (exporter/handoff.py): this process
answers HTTP and supervises the poll worker without pydantic, the YAML loader or the poll
stack (requests, urllib3, tenacity, APScheduler), about 20 MB less than the command line
held. Each reload validates in a short-lived child, ``python -m exporter.serving --load``
(:class:`ChildLoader`), so pydantic never stays resident.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .config import ConfigError
from .daemon import serve_forever
from .handoff import read_payload, run_child
from .logs import setup_logging
from .state import open_state_file

if TYPE_CHECKING:
    from .config import Config
    from .web.webconfig import WebConfig


class ChildLoader:
    """What a reload calls in the serving process: validation in a child process.

    ``loader()`` returns the new config (plain settings) or raises ConfigError with the
    child's message; :meth:`web` then gives the web config that child loaded with it."""

    def __init__(self, flags: dict[str, Any], log: tuple[str, str]) -> None:
        self.flags = flags
        self.log = log
        self._web: WebConfig | None = None

    def __call__(self) -> Config:
        try:
            answer = run_child({"flags": self.flags, "log": self.log})
        except RuntimeError as err:
            raise ConfigError(str(err)) from None
        if answer[0] != "ok":
            raise ConfigError(answer[1])
        _, config, self._web = answer
        return config

    def web(self, _config: Config) -> WebConfig | None:
        return self._web


def load_for_reload(flags: dict[str, Any]) -> tuple[Config, WebConfig | None]:
    """What a reload child validates: the config file with the command line's overriding
    flags (``cli.reload_flags``), and the web config it names (raises ConfigError)."""
    from argparse import Namespace

    from .cli import _loader
    from .web.webconfig import load_web_config

    config = _loader(Namespace(**flags), None)()
    web = load_web_config(config.web.config_file) if config.web.config_file else None
    return config, web


def load_main() -> int:
    """``--load``: the reload child. The request (pickled) on stdin; on stdout ("ok", plain
    config, web config) or ("error", message). Log lines (warnings about the file) on stderr."""
    import pickle

    from .config import to_plain

    request = pickle.loads(sys.stdin.buffer.read())  # noqa: S301 - from our serving process
    setup_logging(*request["log"])
    try:
        config, web = load_for_reload(request["flags"])
        answer: tuple[Any, ...] = ("ok", to_plain(config), web)
    except ConfigError as err:
        answer = ("error", str(err))
    except Exception as err:  # noqa: BLE001 - MemoryError, a bug: the reload fails, named
        answer = ("error", f"{type(err).__name__}: {str(err)[:200]}")
    sys.stdout.buffer.write(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
    sys.stdout.flush()
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["--load"]:
        return load_main()
    payload = read_payload(int(argv[0]))
    config = payload["config"]
    level, log_format = payload["log"]
    formatter = setup_logging(level, log_format, config.secret_values())
    state = open_state_file(*payload["state"]) if payload["state"] is not None else None
    loader = ChildLoader(payload["flags"], payload["log"])
    return serve_forever(
        config,
        payload["web_config"],
        level,
        log_format,
        None,
        state,
        load=loader,
        lifecycle=payload["lifecycle"],
        formatter=formatter,
        auto_reload=payload["auto_reload"],
        config_path=payload["config_path"],
        load_web=loader.web,
    )


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
