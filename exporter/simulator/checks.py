"""Request checks at least as strict as the real API (see docs/API.md).

A request the simulator accepts is one the real API accepts: the ``json`` form field
(urlencoded or multipart) must be byte for byte what PHP's json_encode writes for the decoded
request, keys in the documented order, ``cdn`` (not ``cdn_id``), integers where integers are
documented, a timestamp within the window of the clock and a valid HMAC-SHA256 signature.
A refused request raises :class:`Reject` with the API's failure code.
"""

from __future__ import annotations

import calendar
import email.parser
import email.policy
import hmac
import json
import urllib.parse
from typing import Any

from exporter.phpjson import php_json_encode
from exporter.scaleengine.protocol import sign

COMMAND = "usage.vse"
# Documented order of the request keys; "signature" is appended last by the signer.
KEY_ORDER = (
    "command",
    "api_key",
    "timestamp",
    "cdn",
    "app",
    "url",
    "year",
    "month",
    "day",
    "limit",
    "offset",
    "signature",
)
# app.list: exactly these keys, in this order (docs/API.md)
APP_LIST = "app.list"
APP_LIST_ORDER = ("command", "api_key", "timestamp", "cdn", "signature")
REQUIRED = ("command", "api_key", "timestamp", "cdn", "app", "year", "month")
INT_FIELDS = ("timestamp", "cdn", "year", "month", "day", "limit", "offset")

# The API's failure codes and their messages.
FAILURE_MESSAGES = {
    "0000": "Unrecognized API command",
    "0001": "CDN Authorization Failed",
    "0002": "Timestamp outside of valid range",
    "0003": "HMAC-SHA256 Signature Failed",
    "0004": "Unexpected Error",
    "0005": "Unauthorized access to API",
    "0006": "One or more required fields missing",
    "1000": "Servers under heavy traffic, please try again in a few minutes",
}


class Reject(Exception):
    """A request the API refuses: answered with the documented failure JSON (HTTP 200)."""

    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def form_json(content_type: str, body: bytes) -> str:
    """The ``json`` field of a urlencoded or multipart form; raises Reject(0006)."""
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/x-www-form-urlencoded":
        values = _urlencoded_json(body)
    elif ctype == "multipart/form-data":
        values = _multipart_json(content_type, body)
    else:
        raise Reject("0006", "no form data (send the json field as a form)")
    if len(values) != 1:
        raise Reject("0006", "the form must have exactly one json field")
    return values[0]


def _urlencoded_json(body: bytes) -> list[str]:
    try:
        fields = urllib.parse.parse_qs(
            body.decode("ascii"), keep_blank_values=True, strict_parsing=True,
            encoding="utf-8", errors="strict",
        )  # fmt: skip
    except (ValueError, UnicodeDecodeError):
        raise Reject("0006", "malformed form body") from None
    return fields.get("json", [])


def _multipart_json(content_type: str, body: bytes) -> list[str]:
    header = f"Content-Type: {content_type}\r\nMIME-Version: 1.0\r\n\r\n".encode("latin-1")
    msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(header + body)
    if not msg.is_multipart() or msg.defects:
        raise Reject("0006", "malformed multipart body")
    values: list[str] = []
    for part in msg.iter_parts():
        if part.get_param("name", header="content-disposition") == "json":
            payload = part.get_payload(decode=True)
            if not isinstance(payload, bytes):
                raise Reject("0006", "malformed multipart body")
            try:
                values.append(payload.decode("utf-8"))
            except UnicodeDecodeError:
                raise Reject("0006", "json field is not UTF-8") from None
    return values


def validate(
    text: str, cdn_id: int, api_key: str, api_secret: str, now: float, window: float
) -> dict[str, Any]:
    """Check a request like the real API; returns the decoded request or raises Reject."""
    keys, req = _decode(text)
    if isinstance(req, dict) and req.get("command") == APP_LIST:
        _check_app_list(keys, req)
    else:
        _check_fields(keys, req)
        _check_values(req)
    if req["cdn"] != cdn_id or not hmac.compare_digest(
        req["api_key"].encode("utf-8"), api_key.encode("utf-8")
    ):
        raise Reject("0001")
    if abs(req["timestamp"] - now) > window:
        raise Reject("0002")
    _check_signature(text, keys, req, api_secret)
    return req


def _decode(text: str) -> tuple[list[str], dict[str, Any]]:
    """The request's keys in their order, and the request; no duplicate keys."""
    try:
        pairs = json.loads(text, object_pairs_hook=lambda p: p)
    except (ValueError, RecursionError):
        raise Reject("0006", "request is not valid JSON") from None
    if not isinstance(pairs, list) or not all(isinstance(p, tuple) for p in pairs):
        raise Reject("0006", "request is not a JSON object")
    keys = [k for k, _ in pairs]
    if len(set(keys)) != len(keys):
        raise Reject("0006", "duplicate keys in request")
    return keys, json.loads(text)


def _check_fields(keys: list[str], req: dict[str, Any]) -> None:
    """The command, then the documented fields, all required ones, in the documented order."""
    if "command" not in req:
        raise Reject("0006", "missing field: command")
    if req["command"] != COMMAND:
        raise Reject("0000")
    if "cdn_id" in req:
        raise Reject("0006", "unknown field cdn_id: the account field is cdn")
    unknown = [k for k in keys if k not in KEY_ORDER]
    if unknown:
        raise Reject("0006", f"unknown field(s): {', '.join(unknown)}")
    missing = [k for k in REQUIRED if k not in req]
    if missing:
        raise Reject("0006", f"missing field(s): {', '.join(missing)}")
    if keys != [k for k in KEY_ORDER if k in req]:
        raise Reject("0006", "fields out of the documented order")


def _check_app_list(keys: list[str], req: dict[str, Any]) -> None:
    """app.list: command, api_key, timestamp, cdn (and the signature), no other, in order."""
    unknown = [k for k in keys if k not in APP_LIST_ORDER]
    if unknown:
        raise Reject("0006", f"unknown field(s): {', '.join(unknown)}")
    missing = [k for k in APP_LIST_ORDER[:-1] if k not in req]
    if missing:
        raise Reject("0006", f"missing field(s): {', '.join(missing)}")
    if [k for k in keys if k != "signature"] != list(APP_LIST_ORDER[:-1]):
        raise Reject("0006", "fields out of the documented order")
    for k in ("timestamp", "cdn"):
        if type(req[k]) is not int:
            raise Reject("0006", f"field {k} must be an integer")
    if not isinstance(req["api_key"], str):
        raise Reject("0006", "field api_key must be a string")


def _check_values(req: dict[str, Any]) -> None:
    """Each field's type and range."""
    for k in INT_FIELDS:
        if k in req and type(req[k]) is not int:
            raise Reject("0006", f"field {k} must be an integer")
    for k in ("app", "url"):
        v = req.get(k)
        if k in req and not (
            isinstance(v, str) or (isinstance(v, list) and v and all(isinstance(x, str) for x in v))
        ):
            raise Reject("0006", f"field {k} must be a string or a list of strings")
    if not isinstance(req["api_key"], str):
        raise Reject("0006", "field api_key must be a string")
    if not 1 <= req["month"] <= 12 or not 1970 <= req["year"] <= 9999:
        raise Reject("0006", "invalid year or month")
    if "day" in req and not 1 <= req["day"] <= calendar.monthrange(req["year"], req["month"])[1]:
        raise Reject("0006", "invalid day")
    if req.get("limit", 1) < 1 or req.get("offset", 0) < 0:
        raise Reject("0006", "limit must be >= 1 and offset >= 0")


def _check_signature(text: str, keys: list[str], req: dict[str, Any], api_secret: str) -> None:
    """The signature last, over the request exactly as PHP's json_encode writes it."""
    signature = req.get("signature")
    if not isinstance(signature, str) or keys[-1] != "signature":
        raise Reject("0003", "missing signature")
    unsigned = dict(req)
    del unsigned["signature"]
    try:
        canonical = php_json_encode(req)
        expected = sign(unsigned, api_secret)
    except (ValueError, TypeError):
        raise Reject("0003", "request cannot be encoded by PHP json_encode") from None
    if text != canonical:
        raise Reject("0003", "request JSON is not as PHP json_encode writes it")
    if not hmac.compare_digest(signature.encode("utf-8"), expected.encode("ascii")):
        raise Reject("0003")
