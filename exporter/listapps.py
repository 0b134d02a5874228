"""`scaleengine-exporter list-apps`: the account's applications (app.list), one per line.

Also the quickest check that the config's credentials work: exit 0 and the names, or exit 1
with the API's message (error 0001/0003: the CDN id, key or secret are wrong).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO

from . import __version__
from .config import ConfigError, load_config
from .logs import add_log_flags, log_level_of, set_secrets, setup_logging
from .scaleengine import ApiError, client_for

PROG = "scaleengine-exporter list-apps"
DESCRIPTION = (
    "Print the applications of the ScaleEngine account the config names (the API's app.list),"
    " one name per line; the quickest check that the credentials work."
)
EPILOG = (
    "Exit status: 0 listed; 1 the API refused or failed (its message on stderr); 2 bad"
    " arguments or config."
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=DESCRIPTION, epilog=EPILOG)
    p.add_argument(
        "--config",
        metavar="FILE",
        default="config.yaml",
        help="the exporter's YAML config: the API credentials (default config.yaml)",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: one app name per line (default); json: the list of entries with every"
        " field the API gave",
    )
    add_log_flags(
        p,
        "warn",
        "log level of the API client's messages on stderr (default warn)",
        "log format on stderr (default logfmt)",
    )
    p.add_argument("--version", action="version", version=f"scaleengine-exporter {__version__}")
    return p


def main(
    argv: Sequence[str] | None = None, stdout: IO[str] | None = None, stderr: IO[str] | None = None
) -> int:
    """Entry point of ``scaleengine-exporter list-apps``."""
    out = stdout or sys.stdout
    err_stream = stderr or sys.stderr
    args = build_parser().parse_args(argv)
    formatter = setup_logging(log_level_of(args), args.log_format, stream=err_stream)
    try:
        config = load_config(args.config)
    except ConfigError as err:
        err_stream.write(f"scaleengine-exporter: error: {err}\n")
        return 2
    set_secrets(formatter, config.secret_values())
    try:
        with client_for(config) as client:
            entries = client.list_apps()
    except ApiError as err:
        err_stream.write(f"{PROG}: error: {err.message}\n")
        return 1
    if args.format == "json":
        out.write(json.dumps(entries, indent=2, ensure_ascii=False, default=str) + "\n")
    else:
        out.writelines(f"{entry['name']}\n" for entry in entries)
    return 0
