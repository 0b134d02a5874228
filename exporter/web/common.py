"""What the server's modules share: status reasons, the plain-text type, log thinning."""

from __future__ import annotations

TEXT = "text/plain; charset=utf-8"
REASONS = {
    200: "OK", 400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 413: "Content Too Large", 429: "Too Many Requests",
    431: "Request Header Fields Too Large", 500: "Internal Server Error",
    501: "Not Implemented", 503: "Service Unavailable",
}  # fmt: skip


def log_count(n: int) -> bool:
    """Whether the n-th occurrence of a repeated event is logged: 1, 10, 100, every 1000th."""
    return n in (1, 10, 100) or n % 1000 == 0
