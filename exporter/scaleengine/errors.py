"""How a request fails: ApiError, its outcome label (a fixed set), the API's error codes, and
server text made safe to show (one printable line, our secrets replaced by ``***``).

Nothing here ever puts the API key, the secret, a signature or a request body into an exception
message or a log line: server text passes a scrub before it is cut and kept.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime

from exporter.phpjson import php_json_encode

# Published error codes: (meaning, retryable).
API_CODES: dict[str, tuple[str, bool]] = {
    "0000": ("unrecognized API command", False),
    "0001": ("CDN authorization failed: check cdn_id and api_key", False),
    "0002": ("timestamp outside the valid range", False),
    "0003": ("HMAC-SHA256 signature failed: check api_secret", False),
    "0004": ("unexpected error on the API side", True),
    "0005": ("unauthorized access to the API", False),
    "0006": ("one or more required fields missing or invalid", False),
    "1000": ("servers under heavy traffic, try again in a few minutes", True),
}

POLL_TIMEOUT = "poll_timeout"  # the outcome of a fetch its poll's deadline ended
# Every outcome an ApiError can carry (a Prometheus label value: never a server-chosen string).
OUTCOMES = frozenset(
    {
        "connection",
        "timeout",
        POLL_TIMEOUT,
        "http_status",
        "invalid_json",
        "bad_response",
        "too_large",
        "pagination",
        "api_other",
        *(f"api_{code}" for code in API_CODES),
    }
)

_CODE_RE = re.compile(r"[0-9A-Za-z_]{1,16}")
MAX_SERVER_TEXT = 200

Scrub = Callable[[str], str]


class ApiError(Exception):
    """A failed usage.vse request or fetch.

    ``outcome`` is a short label (used as a Prometheus label value), ``retryable`` says whether
    trying again later may help, ``code`` is the API's error code when it sent one.
    """

    def __init__(
        self,
        message: str,
        outcome: str,
        retryable: bool,
        code: str | None = None,
        busy: bool = False,
        retry_after: float | None = None,
    ):
        super().__init__(message)
        self.outcome = outcome
        self.retryable = retryable
        self.code = code
        # the server asked us to come back later (code 1000, or 429/503 with Retry-After): not
        # retried within the poll; the poller backs off that app (poll.busy_backoff)
        self.busy = busy
        self.retry_after = retry_after
        self.backing_off = False  # set by the poller: no request made, the app is backing off

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


def server_text(value: object, limit: int = MAX_SERVER_TEXT, scrub: Scrub | None = None) -> str:
    """Text from the server, made safe to log: printable, one line, at most ``limit`` chars.

    ``scrub`` (the client's: our secrets and signature replaced by ``***``) runs on the whole
    text first: cut first, a secret straddling the cut would leave its first characters."""
    if not isinstance(value, str):
        return ""
    if scrub is not None:
        value = scrub(value)
    text = "".join(
        c if c.isprintable() and not 0xD800 <= ord(c) <= 0xDFFF else " " for c in value[: limit * 2]
    )
    text = " ".join(text.split())
    if len(text) > limit or len(value) > limit * 2:
        text = text[:limit] + "..."
    return text


def secret_forms(*secrets: str) -> tuple[str, ...]:
    """Each secret as sent, and as a server echoing our JSON request shows it (PHP escapes "/"
    etc.); secrets shorter than 4 characters are left out (they would star out any text)."""
    return tuple(
        dict.fromkeys(
            form
            for secret in secrets
            if secret and len(secret) >= 4
            for form in (secret, php_json_encode(secret)[1:-1])
        )
    )


def scrub_secrets(text: str, forms: tuple[str, ...]) -> str:
    """``text`` with each of ``forms`` (see :func:`secret_forms`) replaced by ``***``."""
    for secret in forms:
        if secret in text:
            text = text.replace(secret, "***")
    return text


def _code(code: object) -> str | None:
    """The API's error code as the 4-digit string it documents; None when unusable."""
    if isinstance(code, int) and not isinstance(code, bool) and 0 <= code <= 9999:
        return f"{code:04d}"
    if isinstance(code, str) and _CODE_RE.fullmatch(code):
        return code
    return None


def api_failure(
    code: object, server_message: object, now: float | None = None, scrub: Scrub | None = None
) -> ApiError:
    """The ApiError for a ``"status": "failure"`` answer."""
    code_s = _code(code)
    meaning, retryable = API_CODES.get(code_s or "", ("unknown error code", False))
    busy = code_s == "1000"
    if busy:
        retryable = False  # "try again in a few minutes": the poller backs off instead
    text = server_text(server_message, scrub=scrub)
    msg = f"API error {code_s or '(no code)'}: {meaning}"
    if code_s == "0002":
        t = time.time() if now is None else now
        local = datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        msg += (
            f"; the local clock is probably off (local UTC time {local},"
            f" timestamp {int(t)}): sync it with NTP"
        )
    if text:
        msg += f" (server said: {text!r})"
    # outcome label values come from a fixed set: never a server-chosen string
    outcome = f"api_{code_s}" if code_s in API_CODES else "api_other"
    return ApiError(msg, outcome, retryable, code_s, busy=busy)


def bad_response(message: str) -> ApiError:
    return ApiError(message, "bad_response", False)


def too_large(limit: int) -> ApiError:
    return ApiError(
        f"answer larger than scaleengine.max_response_bytes ({limit} bytes, after"
        " decompression): refused",
        "too_large",
        False,
    )


def poll_timeout() -> ApiError:
    return ApiError(
        "the poll took longer than poll.timeout (all its fetches, pages and retries)",
        POLL_TIMEOUT,
        False,
    )
