"""The exporter's web app: the routes, the auth policy, the lifecycle endpoint, the landing
page's cache, and the server that serves them (server.py's, with the exporter's handler).

A scrape sends the exposition's stored bytes plus the live part; it never calls the API and
never waits for a poll. Limits kept here (see the README's security section):

* bcrypt runs in a small thread pool, never in the loop, with bounded pending checks
  (basicauth.py; 429 beyond); the web config's rate_limit answers 429;
* POST /-/reload refuses what a browser sends cross-site (403);
* the landing page is rendered at most once per LANDING_TTL, in a thread.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from .. import __version__
from ..appkey import AppKey
from ..metrics import Exposition, negotiate
from ..store import Store
from ..worker import release_memory
from .basicauth import PendingChecks
from .common import TEXT
from .connection import Connection, Outcome, Request
from .landing import LandingView, render_landing
from .server import HTTPServer, parse_listen_address
from .webconfig import WebConfig

if TYPE_CHECKING:  # pydantic-free at run time: the config arrives as plain Settings
    from ..config import Config

LANDING_TTL = 1.0  # the landing page is rendered at most this often
LANDING_STALE = 5.0  # while a new one renders, the last page is served up to this age
_HTML = "text/html; charset=utf-8"


class WebApp:
    """What the handler serves; built by the CLI from the other stages. ``config`` (budgets
    and intervals) and ``demo`` (the banner) are for the landing page; ``reload`` is called by
    POST /-/reload ((ok, message)); None: the lifecycle API is not enabled."""

    def __init__(
        self,
        exposition: Exposition,
        store: Store,
        ready: Callable[[], bool],
        web_config: WebConfig | None = None,
        telemetry_path: str = "/metrics",
        reload: Callable[[], tuple[bool, str]] | None = None,
        config: Config | None = None,
        demo: bool = False,
    ) -> None:
        self.exposition = exposition
        self.store = store
        self.ready = ready
        self.web_config = web_config or WebConfig()
        self.telemetry_path = telemetry_path
        self.reload = reload
        self.started = time.time()
        self.config = config
        self.demo = demo

    def landing_view(self) -> LandingView:
        """What the landing page shows, as of now."""
        view = self.store.view()
        config = self.config
        discovered = frozenset(
            AppKey(account, app) for account, st in view.discovery.items() for app in st.apps
        )
        if config is None:
            return LandingView(
                view.status, view.usage, self.telemetry_path, __version__, demo=self.demo,
                listed=view.listed, discovered=discovered,
            )  # fmt: skip
        return LandingView(
            view.status,
            view.usage,
            self.telemetry_path,
            __version__,
            {key: (a.daily_bytes_budget, a.monthly_bytes_budget) for key, _, a in config.apps()},
            config.poll.interval,
            config.poll.timezone,
            self.demo,
            view.listed,
            discovered,
        )


class RateLimiter:
    """exporter-toolkit's rate_limit: a token bucket, one token per interval, ``burst`` deep."""

    def __init__(self, interval: float, burst: int) -> None:
        self.interval = interval
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic()

    def allow(self) -> bool:
        now = time.monotonic()
        self._tokens = min(self.burst, self._tokens + (now - self._last) / self.interval)
        self._last = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


_FORM_TYPES = ("application/x-www-form-urlencoded", "multipart/form-data", "text/plain")


def cross_site(headers: dict[bytes, bytes]) -> str | None:
    """Why a POST looks like a browser's cross-site request (a form or a fetch from another
    site's page), or None. As Go's http.CrossOriginProtection: ``Sec-Fetch-Site`` other than
    ``same-origin`` or ``none``, else an ``Origin`` that is not this host; and, for browsers
    older than both headers, the content types a cross-site form can send. ``curl -X POST``
    sends none of these."""
    fetch_site = headers.get(b"sec-fetch-site", b"").decode("latin-1").strip().lower()
    if fetch_site and fetch_site not in ("same-origin", "none"):
        return f"cross-site request (Sec-Fetch-Site: {fetch_site[:20]})"
    origin = headers.get(b"origin", b"").decode("latin-1").strip()
    if not fetch_site and origin:
        host = headers.get(b"host", b"").decode("latin-1").strip().lower()
        if origin.lower().partition("://")[2].rstrip("/") != host:
            return "cross-origin request (Origin is not this host)"
    content_type = headers.get(b"content-type", b"").decode("latin-1")
    media = content_type.partition(";")[0].strip().lower()
    if media in _FORM_TYPES:
        return f"a form's content type ({media}), as a cross-site form sends"
    return None


async def _then(outcome: Outcome) -> bool:
    return outcome if isinstance(outcome, bool) else await outcome


class LandingCache:
    """The landing page, rendered at most once per LANDING_TTL and never in the loop (with
    5,000 apps a render takes about 90 ms, which a flood of "/" must not take from scrapes)."""

    def __init__(self, app: WebApp) -> None:
        self.app = app
        self.renders = 0
        self._page: tuple[float, bytes] = (float("-inf"), b"")
        self._rendering: asyncio.Future[bytes] | None = None

    def page(self) -> bytes | asyncio.Future[bytes]:
        """While a newer page renders in a thread, the last one is served if it is younger
        than LANDING_STALE; else (after a quiet while) the render to wait for."""
        rendered, page = self._page
        age = time.monotonic() - rendered
        rendering = self._rendering
        if rendering is None and age >= LANDING_TTL:
            loop = asyncio.get_running_loop()
            rendering = self._rendering = loop.run_in_executor(None, self._render)
            rendering.add_done_callback(self._rendered)
        if rendering is None or age < LANDING_STALE:
            return page
        return rendering

    def _render(self) -> bytes:
        started = time.monotonic()
        page = render_landing(self.app.landing_view()).encode()
        self.renders += 1
        self._page = (started, page)
        return page

    def _rendered(self, _future: asyncio.Future[bytes]) -> None:
        self._rendering = None


class ExporterHandler:
    """Answers one request (the server's handler): health and readiness open to all, then
    the rate limit, the methods each path takes, the cross-site refusal, basic auth, and
    the routes behind it."""

    def __init__(self, app: WebApp) -> None:
        self.app = app
        self.landing = LandingCache(app)
        self.auth = PendingChecks()
        rate = app.web_config.rate_limit
        self._limiter = RateLimiter(*rate) if rate is not None else None

    def __call__(self, conn: Connection, request: Request) -> Outcome:
        """Whether the connection stays open, or a coroutine that tells when the answer has
        to wait (bcrypt, a reload, a socket that is full)."""
        method, target, close = request.method, request.target, request.close
        app = self.app
        head = method == b"HEAD"
        if target == "/-/reload" and method != b"POST":  # as Prometheus: 405 and Allow
            return conn.send(405, b"Method Not Allowed\n", TEXT, head, close, {"Allow": "POST"})
        if method not in (b"GET", b"HEAD", b"POST"):
            return conn.send(501, b"Not Implemented\n", TEXT, head, close)
        if target == "/-/healthy" and method != b"POST":
            return conn.send(200, b"Healthy\n", TEXT, head, close)
        if target == "/-/ready" and method != b"POST":
            if app.ready():
                return conn.send(200, b"Ready\n", TEXT, head, close)
            return conn.send(503, b"Not ready: first polls running\n", "text/plain", head, close)
        if self._limiter is not None and not self._limiter.allow():
            return conn.send(429, b"Too Many Requests\n", TEXT, head, close)
        if method == b"POST" and target != "/-/reload":
            return conn.send(
                405, b"Method Not Allowed\n", TEXT, head, close, {"Allow": "GET, HEAD"}
            )
        if method == b"POST":
            refusal = cross_site(request.headers) if app.reload is not None else None
            if refusal is not None:
                return conn.send(403, f"Forbidden: {refusal}\n".encode(), TEXT, False, close)
        return self._check_auth(conn, request)

    def _check_auth(self, conn: Connection, request: Request) -> Outcome:
        """Cached credentials (or none needed) go on at once; others wait for bcrypt in the
        pool, if it has a place for them (429 else); none at all is 401 at once."""
        web = self.app.web_config
        head = request.method == b"HEAD"
        auth = request.headers.get(b"authorization")
        auth_text = auth.decode("latin-1") if auth is not None else None
        if web.auth_required and not web.check_cached(auth_text):
            if auth_text is None:  # nothing to check: no bcrypt, no place in its queue
                return self._unauthorized(conn, head, request.close)
            if not self.auth.admit(conn.peer):
                body = b"Too many password checks pending, retry later\n"
                return conn.send(429, body, TEXT, head, request.close, {"Retry-After": "1"})
            return self._after_bcrypt(conn, auth_text, request)
        return self._authorized(conn, request)

    async def _after_bcrypt(self, conn: Connection, auth: str, request: Request) -> bool:
        ok = await self.auth.run(self.app.web_config.check_basic_auth, auth, conn.peer)
        if ok is None:  # shutting down
            return False
        if ok:
            return await _then(self._authorized(conn, request))
        return await _then(self._unauthorized(conn, request.method == b"HEAD", request.close))

    def _unauthorized(self, conn: Connection, head: bool, close: bool) -> Outcome:
        extra = {"WWW-Authenticate": 'Basic realm="scaleengine-exporter"'}
        return conn.send(401, b"Unauthorized\n", TEXT, head, close, extra)

    def _authorized(self, conn: Connection, request: Request) -> Outcome:
        app = self.app
        method, target, close = request.method, request.target, request.close
        head = method == b"HEAD"
        if method == b"POST":
            if app.reload is None:
                return conn.send(403, b"Lifecycle API is not enabled.\n", TEXT, False, close)
            return self._reload(conn, app.reload, close)
        if target == app.telemetry_path:
            return self._metrics(conn, request.headers, head, close)
        if target == "/":
            page = self.landing.page()
            if isinstance(page, bytes):
                return conn.send(200, page, _HTML, head, close)
            return self._landing_later(conn, page, head, close)
        return conn.send(404, b"Not Found\n", TEXT, head, close)

    def _metrics(
        self, conn: Connection, headers: dict[bytes, bytes], head: bool, close: bool
    ) -> Outcome:
        accept = headers.get(b"accept")
        encoding = headers.get(b"accept-encoding")
        openmetrics, gzip = negotiate(
            accept.decode("latin-1") if accept else None,
            encoding.decode("latin-1") if encoding else None,
        )
        chunks, content_type = self.app.exposition.payload(openmetrics, gzip)
        extra = {"Vary": "Accept, Accept-Encoding"}
        if gzip:
            extra = {"Content-Encoding": "gzip", **extra}
        return conn.send(200, chunks, content_type, head, close, extra)

    async def _landing_later(
        self, conn: Connection, rendering: asyncio.Future[bytes], head: bool, close: bool
    ) -> bool:
        page = await asyncio.shield(rendering)
        return await _then(conn.send(200, page, _HTML, head, close))

    async def _reload(
        self, conn: Connection, reload: Callable[[], tuple[bool, str]], close: bool
    ) -> bool:
        ok, message = await asyncio.get_running_loop().run_in_executor(None, reload)
        body = (message.rstrip("\n") + "\n").encode()
        return await _then(conn.send(200 if ok else 500, body, TEXT, False, close))


class ExporterHTTPServer(HTTPServer):
    """server.py's server with the exporter's handler, name, headers and client check."""

    def __init__(
        self, address: tuple[str, int], app: WebApp, ssl_context: ssl.SSLContext | None = None
    ) -> None:
        self.app = app
        self.exporter = ExporterHandler(app)
        super().__init__(
            address,
            self.exporter,
            ssl_context,
            server_name=f"scaleengine-exporter/{__version__}",
            headers=app.web_config.headers,
            client_allowed=app.web_config.client_allowed,
            trim_memory=release_memory,
        )

    @property
    def landing_renders(self) -> int:
        return self.exporter.landing.renders

    def shutdown(self) -> None:
        super().shutdown()
        self.exporter.auth.shutdown()


def serve(
    address: str, app: WebApp, ssl_context: ssl.SSLContext | None = None
) -> tuple[ExporterHTTPServer, threading.Thread]:
    """Bind and serve in a background thread; returns the server (for .url and shutdown)."""
    server = ExporterHTTPServer(parse_listen_address(address), app, ssl_context)
    thread = threading.Thread(target=server.serve_forever, name="http", daemon=True)
    thread.start()
    return server, thread
