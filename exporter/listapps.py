"""`scaleengine-exporter list-apps`: the account's applications (app.list), one per line.

Also the quickest check that the config's credentials work: exit 0 and the names, or exit 1
with the API's message (error 0001/0003: the CDN id, key or secret are wrong). With several
accounts: ``account<TAB>app`` lines for every account, or one account's names with
``--account NAME``; the JSON entries carry ``account`` in every case.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import IO

from . import __version__
from .config import ConfigError, load_config
from .logs import add_client_log_flags, log_level_of, set_secrets, setup_logging
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
        "--account",
        metavar="NAME",
        help="list this account only (its name in accounts:, or the single form's"
        " scaleengine.account / cdn_id); default every account",
    )
    p.add_argument(
        "--format",
        choices=("text", "json"),
        default="text",
        help="text: one app name per line, account<TAB>app with several accounts (default);"
        " json: the list of entries with every field the API gave, and account",
    )
    add_client_log_flags(p)
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
    accounts = list(config.accounts)
    if args.account is not None:
        accounts = [a for a in accounts if a.name == args.account]
        if not accounts:
            names = ", ".join(a.name for a in config.accounts)
            err_stream.write(
                f"scaleengine-exporter: error: --account {args.account}: no such account"
                f" (the config has: {names})\n"
            )
            return 2
    code = 0
    rows: list[dict[str, object]] = []
    for account in accounts:
        try:
            with client_for(config, account) as client:
                entries = client.list_apps()
        except ApiError as err:
            who = f" account {account.name}:" if len(config.accounts) > 1 else ""
            err_stream.write(f"{PROG}: error:{who} {err.message}\n")
            code = 1
            continue
        # our account name first; an "account" field of the API's entry would be ambiguous
        rows.extend(
            {"account": account.name, **{k: v for k, v in e.items() if k != "account"}}
            for e in entries
        )
    _write(out, rows, args.format, tabbed=len(accounts) > 1)
    return code


def _write(out: IO[str], rows: list[dict[str, object]], fmt: str, tabbed: bool) -> None:
    """The listed apps: JSON, ``account<TAB>app`` lines, or names one per line."""
    if fmt == "json":
        out.write(json.dumps(rows, indent=2, ensure_ascii=False, default=str) + "\n")
    elif tabbed:
        out.writelines(f"{row['account']}\t{row['name']}\n" for row in rows)
    else:
        out.writelines(f"{row['name']}\n" for row in rows)
