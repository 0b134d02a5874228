"""The :class:`Exposition`: the stored usage part rendered once per poll (plain and as a
sync-flushed raw deflate stream) and the live part at scrape time; :class:`StoredFile`, the
stored bytes handed over as files; content negotiation (:func:`negotiate`)."""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
import zlib
from collections.abc import Mapping
from typing import Any

from ..appkey import AppKey
from ..store import AppUsage, Store
from .usage import render_app, render_budgets, usage_families

# one logger for the package, named as before it was split
log = logging.getLogger("exporter.metrics")

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GZIP_LEVEL = 6
LIVE_TTL = 1.0  # seconds a rendered live part (process metrics included) is reused
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

RENDER_OUTCOME = "render"  # poll error outcome of an app whose usage could not be rendered


class StoredFile:
    """Bytes held in an (unlinked) file instead of memory; sent with sendfile.

    The daemon's worker hands its renderings over as files, so the serving process keeps
    megabytes of exposition in the page cache (as nginx would) rather than in its heap. The
    descriptor is closed when the last reference goes, so a scrape still sending an older
    rendering keeps it alive.
    """

    __slots__ = ("fd", "size")

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def __len__(self) -> int:
        return self.size

    def read(self) -> bytes:
        return os.pread(self.fd, self.size, 0)

    def __del__(self) -> None:
        try:
            os.close(self.fd)
        except OSError:
            pass


Chunk = bytes | StoredFile


class Exposition:
    """Pre-rendered exposition of the store's usage data plus the live part at scrape time."""

    def __init__(
        self,
        store: Store,
        timezone: str = "UTC",
        budgets: Mapping[AppKey, tuple[int | None, int | None]] | None = None,
        process_metrics: bool = True,
        debounce: float = 0.05,
        poll_interval: float | None = None,
    ) -> None:
        self._store = store
        self._families = usage_families(timezone)
        self._headers = {f.name: f.header() for f in self._families}
        self._budget_lines = render_budgets(budgets or {})
        self._lock = threading.Lock()  # one render at a time
        self._stored: tuple[Chunk, Chunk, int] = (b"", b"", 0)
        self._rendered_usage: dict[str, AppUsage] | None = None
        self._debounce = debounce
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.renders = 0
        self._process_metrics = process_metrics
        self._poll_interval = poll_interval  # the daemon's poll.interval; --once has none
        self._live: _LiveParts | None = None  # built on first use: see _live_parts
        self._live_lock = threading.Lock()
        self._live_cache: dict[bool, tuple[tuple[int, int], bytes]] = {}
        self._payload_cache: dict[tuple[bool, bool], tuple[Any, Any, float, list[Chunk]]] = {}
        self.render_now()

    # -- rendering (poll side) ------------------------------------------------------------
    def render_now(self) -> bool:
        """Render the stored part from the store's current usage; False if nothing changed."""
        with self._lock:
            _, usage = self._store.usage_view()
            current = dict(usage)
            if self._rendered_usage is not None and _same(current, self._rendered_usage):
                return False
            started = time.perf_counter()
            per_app = []
            for app in sorted(current):
                # one app's bad data must not stop the others' updates: render each alone
                try:
                    per_app.append(render_app(current[app]))
                except Exception as err:  # noqa: BLE001 - any failure: that app is down
                    failed = current.pop(app)
                    error = f"cannot render its usage ({type(err).__name__}: {str(err)[:200]})"
                    log.warning("app marked down", extra={**app._asdict(), "err": error})
                    self._store.fail_app(app, RENDER_OUTCOME, error, failed)
            chunks: list[bytes] = []
            for family in self._families:
                if family.name in self._budget_lines:
                    parts = [self._budget_lines[family.name]]
                else:
                    parts = [frag.get(family.name, b"") for frag in per_app]
                if any(parts):
                    chunks.append(self._headers[family.name])
                    chunks.extend(parts)
            plain = b"".join(chunks)
            compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            deflated = compressor.compress(plain) + compressor.flush(zlib.Z_SYNC_FLUSH)
            crc = zlib.crc32(plain)
            # swap all three at once: a scrape reads them as one tuple
            self._stored = (plain, deflated, crc)
            self._rendered_usage = current
            self.renders += 1
            log.debug(
                "rendered exposition",
                extra={
                    "bytes": len(plain),
                    "gzip_bytes": len(deflated),
                    "seconds": round(time.perf_counter() - started, 4),
                },
            )
            return True

    def reconfigure(
        self, timezone: str, budgets: Mapping[AppKey, tuple[int | None, int | None]]
    ) -> None:
        """A reload's time zone (in the help texts) and budgets; the next render shows them."""
        with self._lock:
            self._families = usage_families(timezone)
            self._headers = {f.name: f.header() for f in self._families}
            self._budget_lines = render_budgets(budgets)
            self._rendered_usage = None

    def start(self) -> None:
        """Re-render in a background thread whenever the store changes."""
        if self._thread is not None:
            return
        self._thread = threading.Thread(target=self._run, name="exposition", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        version = -1
        while not self._stop.is_set():
            version = self._store.wait_for_change(version, timeout=1.0)
            if self._stop.is_set():
                return
            # let polls that finish together land in one render
            self._stop.wait(self._debounce)
            try:
                self.render_now()
            except Exception:  # pragma: no cover - a bug; keep serving the last body
                log.exception("rendering the exposition failed")

    # -- serving (scrape side) ------------------------------------------------------------
    def _live_parts(self) -> _LiveParts:
        """The live part's registries, built on first use: the poll worker renders the
        stored part only and so never loads prometheus_client."""
        with self._live_lock:
            if self._live is None:
                self._live = _LiveParts(self._store, self._process_metrics, self._poll_interval)
            return self._live

    @property
    def live_registry(self) -> Any:
        """The app families of the live part: they change only with the store, so they are
        rendered once per change and format."""
        return self._live_parts().live_registry

    @property
    def process_registry(self) -> Any:
        """The process metrics and the reload status: rendered at every scrape."""
        return self._live_parts().process_registry

    @property
    def reload_status(self) -> Any:
        """Set by a config reload (SIGHUP, /-/reload)."""
        return self._live_parts().reload_status

    @property
    def poll_settings(self) -> Any:
        """``scaleengine_poll_interval_seconds`` (None without a poll interval): a reload sets
        its ``interval``."""
        return self._live_parts().poll_settings

    def stored_parts(self) -> tuple[Chunk, Chunk, int]:
        """(plain, sync-flushed raw deflate of it, its CRC-32): what a scrape sends."""
        return self._stored

    def set_stored(self, parts: tuple[Chunk, Chunk, int]) -> None:
        """Serve parts rendered elsewhere (by the poll worker process)."""
        self._stored = parts

    def stored(self) -> bytes:
        """The stored (per-poll) part in the text format."""
        plain = self._stored[0]
        return plain.read() if isinstance(plain, StoredFile) else plain

    def live(self, openmetrics: bool = False) -> bytes:
        """The live part: the store's app families (cached per change) and process metrics."""
        parts = self._live_parts()
        version = self._store.live_version
        cached = self._live_cache.get(openmetrics)
        if cached is None or cached[0] != version:
            if openmetrics:
                apps = parts.openmetrics(parts.live_registry)[: -len(b"# EOF\n")]
            else:
                apps = parts.text(parts.live_registry)
            cached = (version, apps)
            self._live_cache[openmetrics] = cached
        if openmetrics:
            return cached[1] + parts.openmetrics(parts.process_registry)
        return cached[1] + parts.text(parts.process_registry)

    def payload(self, openmetrics: bool = False, gzip: bool = False) -> tuple[list[Chunk], str]:
        """Body chunks and content type for one scrape; costs only the live part's rendering.

        The live part (and its deflated tail) is reused for up to LIVE_TTL seconds while the
        stored part and the store's live state are unchanged: the process metrics are then at
        most that old, and back-to-back scrapes cost no rendering at all.
        """
        stored = self._stored
        plain, deflated, crc = stored
        content_type = OPENMETRICS_CONTENT_TYPE if openmetrics else TEXT_CONTENT_TYPE
        key = (openmetrics, gzip)
        now = time.monotonic()
        hit = self._payload_cache.get(key)
        if hit and hit[0] is stored and hit[1] == self._store.live_version and now < hit[2]:
            return hit[3], content_type
        version = self._store.live_version
        live = self.live(openmetrics)
        if not gzip:
            chunks = [plain, live]
        else:
            tail = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, -zlib.MAX_WBITS)
            live_deflated = tail.compress(live) + tail.flush(zlib.Z_FINISH)
            size = (len(plain) + len(live)) & 0xFFFFFFFF
            trailer = struct.pack("<II", zlib.crc32(live, crc), size)
            chunks = [_GZIP_HEADER, deflated, live_deflated + trailer]
        self._payload_cache[key] = (stored, version, now + LIVE_TTL, chunks)
        return chunks, content_type

    def text(self, openmetrics: bool = False) -> bytes:
        """The whole exposition as one bytes object (for --once and tests)."""
        chunks, _ = self.payload(openmetrics=openmetrics)
        return b"".join(c.read() if isinstance(c, StoredFile) else c for c in chunks)


class _LiveParts:
    """The live part's prometheus_client side: its registries, the reload status and the two
    renderers (imported here, when the first scrape or the daemon's set-up needs them)."""

    def __init__(self, store: Store, process_metrics: bool, poll_interval: float | None) -> None:
        from prometheus_client import (
            CollectorRegistry,
            PlatformCollector,
            ProcessCollector,
            generate_latest,
        )
        from prometheus_client.openmetrics.exposition import generate_latest as openmetrics

        from ..reload import ReloadStatus
        from .live import LiveCollector, PollSettings

        self.text = generate_latest
        self.openmetrics = openmetrics
        self.live_registry = CollectorRegistry(auto_describe=False)
        self.live_registry.register(LiveCollector(store))  # type: ignore[arg-type]
        self.process_registry = CollectorRegistry(auto_describe=False)
        if process_metrics:
            ProcessCollector(registry=self.process_registry)
            PlatformCollector(registry=self.process_registry)
        self.reload_status = ReloadStatus()
        self.process_registry.register(self.reload_status)  # type: ignore[arg-type]
        # poll.interval, for the dashboard's rate windows; set again by a reload
        self.poll_settings = PollSettings(poll_interval) if poll_interval is not None else None
        if self.poll_settings is not None:
            self.process_registry.register(self.poll_settings)  # type: ignore[arg-type]


def _same(a: Mapping[str, AppUsage], b: Mapping[str, AppUsage]) -> bool:
    return a.keys() == b.keys() and all(a[k] is b[k] for k in a)


def negotiate(accept: str | None, accept_encoding: str | None) -> tuple[bool, bool]:
    """(openmetrics, gzip) from the request's Accept and Accept-Encoding headers."""
    openmetrics = False
    if accept:
        for part in accept.split(","):
            media, _, params = part.strip().partition(";")
            if media.strip() == "application/openmetrics-text" and not _q_zero(params):
                openmetrics = True
                break
    gzip = False
    if accept_encoding:
        for part in accept_encoding.split(","):
            coding, _, params = part.strip().partition(";")
            if coding.strip().lower() in ("gzip", "*") and not _q_zero(params):
                gzip = True
                break
    return openmetrics, gzip


def _q_zero(params: str) -> bool:
    for p in params.split(";"):
        key, _, value = p.strip().partition("=")
        if key.strip() == "q":
            try:
                return float(value) == 0
            except ValueError:
                return False
    return False
