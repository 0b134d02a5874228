"""The usage.vse request: its command, its fields in the documented order, its signature.

Signed and encoded exactly as the documented PHP example does (see phpjson.py and
docs/API.md). The simulator checks requests with these same functions.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from typing import Any

from exporter.phpjson import php_json_encode

COMMAND = "usage.vse"


def sign(request: dict, secret: str) -> str:
    """base64(HMAC-SHA256(key=secret, msg=php_json_encode(request)))."""
    msg = php_json_encode(request).encode("ascii")
    digest = hmac.new(secret.encode("utf-8"), msg, hashlib.sha256).digest()
    return base64.b64encode(digest).decode("ascii")


def encode_body(request: dict, secret: str) -> str:
    """The ``json`` form field: the request with its signature appended last, PHP-encoded."""
    if "signature" in request:
        raise ValueError("request already has a signature")
    signed = dict(request)
    signed["signature"] = sign(request, secret)
    return php_json_encode(signed)


def build_request(
    api_key: str,
    cdn_id: int,
    app: str,
    urls: list[str] | None,
    year: int,
    month: int,
    day: int | None,
    limit: int,
    offset: int,
    timestamp: float,
) -> dict[str, Any]:
    """A usage.vse request with its keys in the documented order (signature not included)."""
    request: dict[str, Any] = {
        "command": COMMAND,
        "api_key": api_key,
        "timestamp": int(timestamp),
        "cdn": int(cdn_id),
        "app": app,
    }
    if urls is not None:
        if isinstance(urls, str):
            raise TypeError("urls must be a list of strings, not a string")
        if not urls:
            raise ValueError("urls must not be empty (use None for all videos)")
        request["url"] = list(urls)
    request["year"] = int(year)
    request["month"] = int(month)
    if day is not None:
        request["day"] = int(day)
    request["limit"] = int(limit)
    request["offset"] = int(offset)
    return request


APP_LIST = "app.list"
# app.list's fields, in the vendor's order (docs/API.md): usage.vse's first four and no others
APP_LIST_KEYS = ("command", "api_key", "timestamp", "cdn")


def build_app_list_request(api_key: str, cdn_id: int, timestamp: float) -> dict[str, Any]:
    """An app.list request ("the account's applications"), signature not included."""
    return {
        "command": APP_LIST,
        "api_key": api_key,
        "timestamp": int(timestamp),
        "cdn": int(cdn_id),
    }
