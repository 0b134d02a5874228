"""Structured logging (logfmt or JSON) on the standard library, with secrets redacted.

The standard library's logging is enough here: a formatter that writes the message and the
record's ``extra`` fields as logfmt or one JSON object per line. Every formatted line passes
through a redaction step that replaces the configured secret values, whatever logger (ours,
APScheduler's, urllib3's) produced it, at any level.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TextIO

if TYPE_CHECKING:
    import argparse

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}
REDACTED = "<redacted>"
# a shorter value would redact ordinary words and numbers all over the log
MIN_SECRET_LENGTH = 4
LOG_LEVELS = ["debug", "info", "warn", "warning", "error"]
LOG_FORMATS = ["logfmt", "json"]


class StructuredFormatter(logging.Formatter):
    def __init__(self, fmt: str = "logfmt", secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.fmt = fmt
        self.secrets: list[str] = []
        set_secrets(self, secrets)

    def fields(self, record: logging.LogRecord) -> dict[str, Any]:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return out

    def format(self, record: logging.LogRecord) -> str:
        fields = self.fields(record)
        if self.fmt == "json":
            line = json.dumps(fields, default=str, ensure_ascii=False)
        else:
            line = " ".join(f"{k}={_logfmt_value(v)}" for k, v in fields.items())
        return self.redact(line)

    def redact(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, REDACTED)
        return text


def set_secrets(formatter: StructuredFormatter, values: Iterable[str]) -> None:
    """Make ``formatter`` redact exactly ``values``: the one place the redaction rule lives.

    Values shorter than 4 characters are left out (they would redact ordinary text); the
    longest come first, so a secret that contains another is replaced whole.
    """
    unique = {v for v in values if v and len(v) >= MIN_SECRET_LENGTH}
    formatter.secrets = sorted(unique, key=len, reverse=True)


def add_log_flags(
    parser: argparse.ArgumentParser,
    level: str,
    level_help: str,
    format_help: str = "log line format (default logfmt)",
) -> None:
    """--log.level (default ``level``) and --log.format: the same choices in every command."""
    parser.add_argument(
        "--log.level",
        dest="log_level",
        default=level,
        choices=LOG_LEVELS,
        help=level_help,
    )
    parser.add_argument(
        "--log.format",
        dest="log_format",
        default="logfmt",
        choices=LOG_FORMATS,
        help=format_help,
    )


def add_client_log_flags(parser: argparse.ArgumentParser) -> None:
    """The log flags of the API client's one-off commands (backfill, list-apps): warn and
    above by default, on stderr."""
    add_log_flags(
        parser,
        "warn",
        "log level of the API client's messages on stderr (default warn)",
        "log format on stderr (default logfmt)",
    )


def log_level_of(args: argparse.Namespace) -> str:
    """The logging level name of --log.level (``warn`` is ``warning``)."""
    return "warning" if args.log_level == "warn" else str(args.log_level)


def _logfmt_value(value: Any) -> str:
    text = value if isinstance(value, str) else str(value)
    if text == "" or any(c in text for c in ' ="\\\n\t'):
        return json.dumps(text, ensure_ascii=False)
    return text


def setup_logging(
    level: str = "info",
    fmt: str = "logfmt",
    secrets: Iterable[str] = (),
    stream: TextIO | None = None,
) -> StructuredFormatter:
    """Configure the root logger; returns the formatter so secrets can be added later."""
    handler = logging.StreamHandler(stream or sys.stderr)
    formatter = StructuredFormatter(fmt, secrets)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # APScheduler logs every job run at INFO; keep that for debug
    logging.getLogger("apscheduler").setLevel(
        logging.DEBUG if level.lower() == "debug" else logging.WARNING
    )
    return formatter
