"""Exposition: the usage series rendered once per poll, the small live part at scrape time.

The per-video usage series (tens of thousands of lines for a large library) only change when a
poll swaps in a new snapshot, so :class:`Exposition` renders them then (the daemon's worker
once per poll cycle): one text fragment per app and metric family, joined into one body and
compressed once. A scrape
sends those stored bytes as they are and renders only the live self-metrics (up, counters, poll
durations, request outcomes, process metrics) through prometheus_client, which is a few dozen
lines. For gzip the stored part is kept as a sync-flushed raw deflate stream, so a scrape appends
the live part's deflate blocks and a trailer instead of recompressing megabytes: the result is
one ordinary gzip member.

The stored part contains gauges only, whose lines read the same in the Prometheus text format and
in OpenMetrics; the live part is rendered in whichever format the scraper negotiated, and ends
with OpenMetrics' ``# EOF``, so the stored part goes first.
"""

from __future__ import annotations

import logging
import os
import platform
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector
from prometheus_client import generate_latest as generate_text
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics

from . import __version__
from .reload import ReloadStatus
from .store import AppStatus, AppUsage, Store

log = logging.getLogger(__name__)

TEXT_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
OPENMETRICS_CONTENT_TYPE = "application/openmetrics-text; version=1.0.0; charset=utf-8"
GZIP_LEVEL = 6
LIVE_TTL = 1.0  # seconds a rendered live part (process metrics included) is reused
_GZIP_HEADER = b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\xff"

RENDER_OUTCOME = "render"  # poll error outcome of an app whose usage could not be rendered

_POLLED = "Polled from ScaleEngine usage.vse every poll.interval, not fetched at scrape time."


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


@dataclass(frozen=True, slots=True)
class Family:
    name: str
    help: str
    per_video: bool

    def header(self) -> bytes:
        return f"# HELP {self.name} {self.help}\n# TYPE {self.name} gauge\n".encode()


def usage_families(timezone: str) -> tuple[Family, ...]:
    """The stored (per-poll) gauge families, in exposition order."""
    today = f"today (the current day in {timezone})"
    return (
        Family(
            "scaleengine_vse_day_bytes",
            f"Bytes delivered {today} per video or stream; videos past "
            f"limits.max_videos_per_app or filtered out are summed in video_url=__other__. "
            + _POLLED,
            True,
        ),
        Family(
            "scaleengine_vse_day_requests",
            f"Play, pause and stop commands received {today} per video or stream. " + _POLLED,
            True,
        ),
        Family(
            "scaleengine_vse_app_day_bytes",
            f"Bytes delivered {today} by the app, summed over all its videos. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_requests",
            f"Play, pause and stop commands received {today} by the app. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_videos",
            f"Distinct videos or streams with usage {today} in the app. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_month_bytes",
            f"Bytes delivered by the app in the current month to date ({timezone}). " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_month_requests",
            f"Commands received by the app in the current month to date ({timezone}). " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_previous_day_bytes",
            f"Latest total of bytes delivered yesterday ({timezone}) by the app; yesterday is "
            "polled for late data for poll.late_data_window after midnight. " + _POLLED,
            False,
        ),
        Family(
            "scaleengine_vse_app_day_end_timestamp_seconds",
            f"Unix time at which the app's current day ({timezone}) ends.",
            False,
        ),
        Family(
            "scaleengine_vse_app_day_bytes_budget",
            "Daily bandwidth budget of the app in bytes (apps[].daily_bytes_budget).",
            False,
        ),
        Family(
            "scaleengine_vse_app_month_bytes_budget",
            "Monthly bandwidth budget of the app in bytes (apps[].monthly_bytes_budget).",
            False,
        ),
    )


def escape_label(value: str) -> str:
    """Escape a label value for the text formats (backslash, double quote, newline)."""
    if "\\" in value or '"' in value or "\n" in value:
        value = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
    return value


def _format_float(value: float) -> str:
    if value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(value)


def render_app(usage: AppUsage) -> dict[str, bytes]:
    """The app's lines of every stored usage family (without headers), by family name."""
    app = escape_label(usage.app)
    prefix_b = 'scaleengine_vse_day_bytes{app="' + app + '",video_url="'
    prefix_r = 'scaleengine_vse_day_requests{app="' + app + '",video_url="'
    bytes_lines = []
    request_lines = []
    for url, nbytes, nrequests in usage.videos:
        label = escape_label(url)
        bytes_lines.append(f'{prefix_b}{label}"}} {nbytes}\n')
        request_lines.append(f'{prefix_r}{label}"}} {nrequests}\n')
    out = {
        "scaleengine_vse_day_bytes": "".join(bytes_lines).encode(),
        "scaleengine_vse_day_requests": "".join(request_lines).encode(),
    }
    app_values: list[tuple[str, int | float | None]] = [
        ("scaleengine_vse_app_day_bytes", usage.day_bytes),
        ("scaleengine_vse_app_day_requests", usage.day_requests),
        ("scaleengine_vse_app_day_videos", usage.day_videos),
        ("scaleengine_vse_app_month_bytes", usage.month_bytes),
        ("scaleengine_vse_app_month_requests", usage.month_requests),
        ("scaleengine_vse_app_previous_day_bytes", usage.previous_day_bytes),
        ("scaleengine_vse_app_day_end_timestamp_seconds", usage.day_end),
    ]
    for name, value in app_values:
        if value is not None:
            out[name] = f'{name}{{app="{app}"}} {_format_float(value)}\n'.encode()
    return out


def render_budgets(budgets: Mapping[str, tuple[int | None, int | None]]) -> dict[str, bytes]:
    day = []
    month = []
    for app, (daily, monthly) in budgets.items():
        label = escape_label(app)
        if daily is not None:
            day.append(f'scaleengine_vse_app_day_bytes_budget{{app="{label}"}} {daily}\n')
        if monthly is not None:
            month.append(f'scaleengine_vse_app_month_bytes_budget{{app="{label}"}} {monthly}\n')
    return {
        "scaleengine_vse_app_day_bytes_budget": "".join(day).encode(),
        "scaleengine_vse_app_month_bytes_budget": "".join(month).encode(),
    }


class LiveCollector:
    """prometheus_client collector for the small live part, read from the store at scrape."""

    def __init__(self, store: Store) -> None:
        self._store = store

    def collect(self) -> Iterable[Metric]:
        view = self._store.view()
        statuses: list[AppStatus] = [view.status[a] for a in sorted(view.status)]
        bytes_total = CounterMetricFamily(
            "scaleengine_vse_bytes",
            "Bytes delivered, counted from the growth of each app's day totals seen since the "
            "exporter started (late data of yesterday included); a new day starts from zero.",
            labels=["app"],
        )
        requests_total = CounterMetricFamily(
            "scaleengine_vse_requests",
            "Play, pause and stop commands, counted from the growth of each app's day totals.",
            labels=["app"],
        )
        up = GaugeMetricFamily(
            "scaleengine_up", "1 when the app's last poll of usage.vse succeeded.", labels=["app"]
        )
        last_success = GaugeMetricFamily(
            "scaleengine_last_success_timestamp_seconds",
            "Unix time of the app's last successful poll.",
            labels=["app"],
        )
        duration = GaugeMetricFamily(
            "scaleengine_poll_duration_seconds",
            "Wall time of the app's last poll (all pages, retries included).",
            labels=["app"],
        )
        skipped = CounterMetricFamily(
            "scaleengine_vse_skipped_rows",
            "usage.vse rows skipped because their numbers were unusable.",
            labels=["app"],
        )
        incomplete = CounterMetricFamily(
            "scaleengine_vse_incomplete_rows",
            "usage.vse rows kept with 0 requests because their requests_total was null or "
            "missing (their bytes are counted).",
            labels=["app"],
        )
        for st in statuses:
            incomplete.add_metric([st.app], st.incomplete_rows)
            # absent until the worker has its counters (state loaded): never a false reset
            if st.bytes_total is not None:
                bytes_total.add_metric([st.app], st.bytes_total)
            if st.requests_total is not None:
                requests_total.add_metric([st.app], st.requests_total)
            up.add_metric([st.app], 1 if st.up else 0)
            if st.last_success is not None:
                last_success.add_metric([st.app], st.last_success)
            if st.poll_duration is not None:
                duration.add_metric([st.app], st.poll_duration)
            skipped.add_metric([st.app], st.skipped_rows)
        api = CounterMetricFamily(
            "scaleengine_api_requests",
            "HTTP requests made to the ScaleEngine API, by app and outcome "
            "(success, or the kind of error).",
            labels=["app", "outcome"],
        )
        for (app, outcome), count in sorted(view.requests.items()):
            api.add_metric([app, outcome], count)
        poll_errors = CounterMetricFamily(
            "scaleengine_poll_errors",
            "Fetches of a poll that failed after retries, by app and outcome (the kind of "
            "error); the app's last good data is kept until poll.stale_after.",
            labels=["app", "outcome"],
        )
        for (app, outcome), count in sorted(view.poll_errors.items()):
            poll_errors.add_metric([app, outcome], count)
        state: list[Metric] = []
        if view.state_saves is not None:
            failures, last_save = view.state_saves
            save_failures = CounterMetricFamily(
                "scaleengine_state_save_failures",
                "Saves of the state file (state.path) that failed (disk full, folder gone, ...); "
                "a restart then loads older counters.",
            )
            save_failures.add_metric([], failures)
            state.append(save_failures)
            if last_save is not None:
                state.append(
                    GaugeMetricFamily(
                        "scaleengine_state_last_save_timestamp_seconds",
                        "Unix time of the last successful save of the state file.",
                        value=last_save,
                    )
                )
        info = GaugeMetricFamily(
            "scaleengine_exporter_build_info",
            "Build information of scaleengine-exporter; always 1.",
            labels=["version", "python_version"],
        )
        info.add_metric([__version__, platform.python_version()], 1)
        return [
            bytes_total,
            requests_total,
            up,
            last_success,
            duration,
            skipped,
            incomplete,
            api,
            poll_errors,
            *state,
            info,
        ]


class WorkerCollector:
    """The poll worker's memory and CPU, read from /proc at scrape time by the serving process
    (its parent): the process_* metrics describe the serving process only."""

    _TICK = os.sysconf("SC_CLK_TCK")
    _PAGE = os.sysconf("SC_PAGE_SIZE")

    def __init__(self, pid: Callable[[], int | None]) -> None:
        self._pid = pid

    def collect(self) -> Iterable[Metric]:
        pid = self._pid()
        if pid is None:
            return []
        try:
            with open(f"/proc/{pid}/stat", "rb") as fh:
                fields = fh.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            return []
        rss = GaugeMetricFamily(
            "scaleengine_worker_resident_memory_bytes",
            "Resident memory of the poll worker process (polling and rendering) in bytes.",
            value=int(fields[21]) * self._PAGE,
        )
        cpu = CounterMetricFamily(
            "scaleengine_worker_cpu_seconds",
            "User and system CPU time spent by the poll worker process in seconds.",
            value=(int(fields[11]) + int(fields[12])) / self._TICK,
        )
        return [rss, cpu]


class Exposition:
    """Pre-rendered exposition of the store's usage data plus the live part at scrape time."""

    def __init__(
        self,
        store: Store,
        timezone: str = "UTC",
        budgets: Mapping[str, tuple[int | None, int | None]] | None = None,
        process_metrics: bool = True,
        debounce: float = 0.05,
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
        # the app families change only with the store: rendered once per change and format;
        # the process metrics move all the time: rendered at every scrape
        self.live_registry = CollectorRegistry(auto_describe=False)
        self.live_registry.register(LiveCollector(store))  # type: ignore[arg-type]
        self.process_registry = CollectorRegistry(auto_describe=False)
        if process_metrics:
            ProcessCollector(registry=self.process_registry)
            PlatformCollector(registry=self.process_registry)
        self.reload_status = ReloadStatus()  # set by a config reload (SIGHUP, /-/reload)
        self.process_registry.register(self.reload_status)  # type: ignore[arg-type]
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
                    log.warning("app marked down", extra={"app": app, "err": error})
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
        self, timezone: str, budgets: Mapping[str, tuple[int | None, int | None]]
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
        version = self._store.live_version
        cached = self._live_cache.get(openmetrics)
        if cached is None or cached[0] != version:
            if openmetrics:
                apps = generate_openmetrics(self.live_registry)[: -len(b"# EOF\n")]
            else:
                apps = generate_text(self.live_registry)
            cached = (version, apps)
            self._live_cache[openmetrics] = cached
        if openmetrics:
            return cached[1] + generate_openmetrics(self.process_registry)
        return cached[1] + generate_text(self.process_registry)

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
