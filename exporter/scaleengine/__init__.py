"""Client of ScaleEngine's ``usage.vse`` API, one module per concern:

- ``protocol``: the command, the request's fields in the documented order, its signature and
  encoding (exactly as the documented PHP example; the simulator checks with these too).
- ``errors``: ApiError and its outcome label (a fixed set, :data:`OUTCOMES`), the API's error
  codes, server text made safe to show (one printable line, our secrets replaced by ``***``).
- ``parsing``: an answer into a Page (usable numbers, skipped and incomplete rows) or into its
  ApiError; UsageResult; :func:`cut_url`, the one cut of a long video_url to its label, and the
  include/exclude verdict on each URL as sent.
- ``paging``: one full read of a fetch: whether the pages moved while being read, the rows
  summed per video_url, the fetch's memory bound.
- ``transport``: one POST under a deadline for the whole request (a watchdog thread shutting
  down every socket it tracks, name resolution on a helper thread, proxies included), the
  answer read bounded and decompressed by us. The only module touching requests/urllib3
  internals.
- ``client``: ScaleEngineClient (retries, paging, consistent re-reads, the poll's deadline,
  fetch limits) and :func:`client_for` (the client as the config sets it up).

Nothing in the package ever puts the API key, the secret, a signature or a request body into an
exception message or a log line.

The names below are imported on first use: the simulator, which signs and checks with
``protocol``, does not load the HTTP stack.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..lazy import lazy_names

if TYPE_CHECKING:
    from .client import ScaleEngineClient, client_for, warn_if_cleartext
    from .errors import API_CODES, OUTCOMES, POLL_TIMEOUT, ApiError, api_failure
    from .parsing import Page, UsageResult, cut_url, parse_page
    from .protocol import COMMAND, build_request, encode_body, sign

_MODULES = {
    "client": ["ScaleEngineClient", "client_for", "warn_if_cleartext"],
    "errors": ["API_CODES", "OUTCOMES", "POLL_TIMEOUT", "ApiError", "api_failure"],
    "parsing": ["Page", "UsageResult", "cut_url", "parse_page"],
    "protocol": ["COMMAND", "build_request", "encode_body", "sign"],
}

__all__ = [
    "API_CODES",
    "COMMAND",
    "OUTCOMES",
    "POLL_TIMEOUT",
    "ApiError",
    "Page",
    "ScaleEngineClient",
    "UsageResult",
    "api_failure",
    "build_request",
    "client_for",
    "cut_url",
    "encode_body",
    "parse_page",
    "sign",
    "warn_if_cleartext",
]


__getattr__, __dir__ = lazy_names(__name__, _MODULES, globals())
