"""The poll worker: polling and rendering in a process of their own.

Under CPython's GIL, a scrape served in the same process as a poll of 100k rows waits for the
poll's threads at every step, so its latency grows with the poll's work. The daemon therefore
runs the poller, its store and the usage renderer here, in a child process, and ships each
new rendering (the stored exposition bytes, already deflated) and the small live state
(statuses, counters) to the serving process over a socket pair; the bytes travel as the
descriptors of unlinked temporary files, which the serving process sends with sendfile, so
they sit in the page cache rather than in either heap. The serving process only answers HTTP
from what it last received. ``--once`` and the tests run everything in one process.
"""

from __future__ import annotations

import ctypes
import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from multiprocessing.connection import Connection
from multiprocessing.reduction import recv_handle, send_handle
from typing import Any

from .config import Config
from .logs import StructuredFormatter, set_secrets, setup_logging
from .metrics import Exposition, StoredFile, WorkerCollector
from .state import StateFile, open_state_file
from .store import Store

log = logging.getLogger(__name__)

DEBOUNCE = 0.05
WORKER_NICENESS = 10
MAX_RENDER_DELAY = 2.0  # the longest a finished poll waits for the others before rendering
# a restarted worker ships its first update once every app has been polled, or after this long
RESTART_SHIP_WAIT = 30.0


def _load_malloc_trim() -> Any:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


_MALLOC_TRIM = _load_malloc_trim()


def release_memory() -> None:
    """Hand freed heap back to the OS after a big poll or rendering (glibc keeps it)."""
    if _MALLOC_TRIM is not None:
        _MALLOC_TRIM(0)


EMPTY: tuple[bytes, bytes, int] = (b"", b"", 0)


def budgets_of(config: Config) -> dict[str, tuple[int | None, int | None]]:
    return {
        a.name: (a.daily_bytes_budget, a.monthly_bytes_budget)
        for a in config.apps
        if a.daily_bytes_budget is not None or a.monthly_bytes_budget is not None
    }


def _to_file(data: object) -> Any:
    """An unlinked temporary file holding ``data`` (the serving process sends it by sendfile)."""
    fh = tempfile.TemporaryFile()
    fh.write(data)  # type: ignore[arg-type]
    fh.flush()
    return fh


class _WorkerProcess:
    """The worker process's side: polls, renders and ships each new rendering and the live
    state to the serving process; takes reloads and the stop request from it."""

    def __init__(
        self,
        config: Config,
        conn: Connection,
        formatter: StructuredFormatter,
        state: StateFile | None,
        seed: dict[str, Any] | None,
        stop: threading.Event,
    ) -> None:
        # imported here: the serving process never polls, so it does not load requests/APScheduler
        from .poller import Poller

        self.conn = conn
        self.formatter = formatter
        self.seed = seed
        self.stop = stop
        self.send_lock = threading.Lock()
        self.store = Store([a.name for a in config.apps])
        if seed is not None:
            # a restart: the request and error counters go on from what was served
            self.store.mirror(
                {}, {}, seed["requests"], seed["poll_errors"], seed["state_saves"],
                seed.get("listed"),
            )  # fmt: skip
        self.poller = Poller(config, self.store, state_file=state)
        if seed is not None:
            self.poller.continue_counters(seed["totals"])
        budgets = budgets_of(config)
        self.expo = Exposition(self.store, config.poll.timezone, budgets, process_metrics=False)

    def ship(self, parts: tuple[bytes, bytes, int] | None) -> None:
        """Send the live state, and with ``parts`` the new rendering as two descriptors."""
        view = self.store.view()
        usage = {app: dataclasses.replace(u, videos=()) for app, u in view.usage.items()}
        message = (
            "update",
            None if parts is None else parts[2],  # the CRC; two file descriptors follow
            usage,
            dict(view.status),
            dict(view.requests),
            dict(view.poll_errors),
            self.poller.ready,
            view.state_saves,
            dict(view.listed),
        )
        files = [_to_file(p) for p in parts[:2]] if parts is not None else []
        with self.send_lock:
            self.conn.send(message)
            for fh in files:  # the descriptors themselves, over the socket pair
                send_handle(self.conn, fh.fileno(), os.getppid())
        for fh in files:
            fh.close()

    def _wait(self, until: float, busy: Callable[[], bool]) -> None:
        while busy() and time.monotonic() < until and not self.stop.is_set():
            self.stop.wait(DEBOUNCE)

    def shipper(self) -> None:
        """Render and ship after every change of the store (one poll cycle at a time)."""
        version = -1
        if self.seed is not None:
            # a restart: the serving process keeps the last snapshot until this worker has
            # polled every app once (or RESTART_SHIP_WAIT has passed)
            self._wait(time.monotonic() + RESTART_SHIP_WAIT, lambda: not self.poller.ready)
        while not self.stop.is_set():
            new = self.store.wait_for_change(version, timeout=1.0)
            if new == version:
                continue
            version = new
            # render a poll cycle once: wait while other apps' polls are still running
            self._wait(time.monotonic() + MAX_RENDER_DELAY, lambda: self.poller.in_flight)
            self._render_and_ship()

    def _render_and_ship(self) -> None:
        try:
            changed = self.expo.render_now()
        except Exception:  # pragma: no cover - a bug; the live part still goes out
            log.exception("rendering the exposition failed")
            changed = False
        try:
            self.ship(self.expo.stored_parts() if changed else None)
            if changed:  # the serving process has them now; the fragments stay here
                self.expo.set_stored(EMPTY)
                release_memory()
        except (BrokenPipeError, EOFError, OSError):
            self.stop.set()
        except Exception:  # pragma: no cover - a bug; keep polling
            log.exception("shipping the exposition failed")

    def reload(self, new: Config) -> None:
        ok, message = True, "reloaded"
        try:
            set_secrets(self.formatter, new.secret_values())
            self.expo.reconfigure(new.poll.timezone, budgets_of(new))
            self.poller.reconfigure(new)
        except Exception as err:  # pragma: no cover - a bug; the serving side reports it
            log.exception("applying the reloaded config failed")
            ok, message = False, str(err)
        with self.send_lock:
            self.conn.send(("reloaded", ok, message))

    def listener(self) -> None:
        try:
            while not self.stop.is_set():
                message = self.conn.recv()
                if message == "stop":
                    break
                if isinstance(message, tuple) and message[0] == "reload":
                    self.reload(message[1])
        except (EOFError, OSError):
            pass  # the serving process is gone
        self.stop.set()

    def run(self) -> None:
        if self.seed is None:
            self.ship(self.expo.stored_parts())
            self.expo.set_stored(EMPTY)
        threading.Thread(target=self.shipper, name="ship", daemon=True).start()
        threading.Thread(target=self.listener, name="listen", daemon=True).start()
        self.poller.start()
        self.stop.wait()
        self.poller.shutdown()  # stops the scheduler and saves the state
        try:
            with self.send_lock:
                self.conn.send(("stopped",))
        except OSError:
            pass


def _worker_main(
    config: Config,
    conn: Connection,
    log_level: str,
    log_format: str,
    seed: dict[str, Any] | None = None,
    state_handoff: tuple[str, int | None] | None = None,
) -> None:
    """Entry point of the worker process. ``seed``: what the serving process last showed,
    when this worker replaces one that died (see :meth:`PollWorker.restart`);
    ``state_handoff``: the serving process's state file and the lock it inherited."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    formatter = setup_logging(log_level, log_format, config.secret_values())
    state = open_state_file(*state_handoff) if state_handoff is not None else None
    _WorkerProcess(config, conn, formatter, state, seed, stop).run()


class _WorkerCpu(WorkerCollector):
    """The worker's metrics; its CPU counter goes on across worker restarts (the CPU time of
    the workers that ended is added), so it never goes down."""

    def __init__(self, pid: Any) -> None:
        super().__init__(pid)
        self._last: tuple[int | None, float] = (None, 0.0)  # (pid, its last CPU seconds)
        self._ended = 0.0  # CPU seconds of the workers that ended
        self._cpu_lock = threading.Lock()

    def collect(self) -> Any:
        pid = self._pid()
        families = list(super().collect())
        with self._cpu_lock:
            last_pid, last_cpu = self._last
            if last_pid is not None and pid != last_pid:
                self._ended += last_cpu
                self._last = (None, 0.0)
            for family in families:
                if family.name == "scaleengine_worker_cpu_seconds":
                    cpu = family.samples[0].value
                    self._last = (pid, cpu)
                    family.samples[0] = family.samples[0]._replace(value=cpu + self._ended)
        return families


class PollWorker:
    """The serving side: starts the worker process and mirrors what it ships."""

    def __init__(
        self,
        config: Config,
        store: Store,
        exposition: Exposition,
        state: StateFile | None = None,
    ) -> None:
        self.config = config
        # the state file, locked: its lock's descriptor is passed on, held while the worker lives
        self.state = state
        self.store = store
        self.exposition = exposition
        self.ready = False
        self.stopped = threading.Event()
        self._process: Any = None
        self._conn: Connection | None = None
        self.exited = threading.Event()
        self._send_lock = threading.Lock()
        self._reloaded: tuple[bool, str] | None = None
        self._reload_done = threading.Event()
        self._log_args = ("info", "logfmt")
        self.started_at = 0.0  # time.monotonic() of the last start
        self.last_update = time.monotonic()  # of the last update received (or of the start)
        self._shown_overdue = False

    def start(self, log_level: str = "info", log_format: str = "logfmt") -> None:
        """Start ``python -m exporter.worker`` on one end of a socket pair."""
        self._log_args = (log_level, log_format)
        collector = _WorkerCpu(self._live_pid)
        self.exposition.process_registry.register(collector)  # type: ignore[arg-type]
        self._spawn(None)

    def restart(self) -> None:
        """Start a new worker process after the last one ended (the caller waited its back-off).

        The new worker goes on from what this side shows: the state file is loaded again, no
        counter is lower than the one served (a counter that would be is taken over with a
        fresh day baseline: growth until its next poll is not counted, nothing twice), and the
        request and error counters continue. The last snapshot stays up meanwhile.
        """
        self.reap()
        view = self.store.view()
        seed = {
            "totals": {a: (s.bytes_total, s.requests_total) for a, s in view.status.items()},
            "requests": dict(view.requests),
            "poll_errors": dict(view.poll_errors),
            "state_saves": view.state_saves,
            "listed": dict(view.listed),
        }
        self._spawn(seed)

    def _spawn(self, seed: dict[str, Any] | None) -> None:
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self.exited.clear()
        self.stopped.clear()
        self._process = subprocess.Popen(
            [sys.executable, "-m", "exporter.worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno(), *self._state_fds()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        self.started_at = self.last_update = time.monotonic()
        theirs.close()
        conn = Connection(ours.detach())
        self._conn = conn
        threading.Thread(target=self._receive, args=(conn,), name="receive", daemon=True).start()
        try:
            with self._send_lock:
                handoff = self.state.handoff() if self.state is not None else None
                conn.send((self.config, *self._log_args, seed, handoff))
        except OSError:
            pass  # it died before it got its config: the receiver sees EOF and says so

    def _state_fds(self) -> list[int]:
        fd = self.state.lock_fd if self.state is not None else None
        return [] if fd is None else [fd]

    def _live_pid(self) -> int | None:
        process = self._process
        return process.pid if process is not None and process.poll() is None else None

    def check_overdue(self) -> None:
        """No update from the worker for 2 x poll.interval + poll.timeout (it hangs, or keeps
        dying): every app is shown down (``overdue``) until the next update; its last data
        stays until then. A worker that polls ships after every poll, so a healthy one never
        gets here."""
        poll = self.config.poll
        limit = 2 * poll.interval + poll.timeout
        late = time.monotonic() - self.last_update
        if late <= limit or self._shown_overdue:
            return
        self._shown_overdue = True
        view = self.store.view()
        error = f"overdue: nothing from the poll worker for {late:.0f}s"
        for app, status in view.status.items():
            down = dataclasses.replace(status, up=False, last_error=error)
            self.store.publish(app, view.usage.get(app), down)
        log.error(
            "the poll worker sent nothing in time, every app is shown down",
            extra={"seconds": round(late), "limit": round(limit)},
        )

    def reap(self) -> str:
        """Wait for the ended worker process (killing it if it still runs); how it ended."""
        process = self._process
        if process is None:
            return "not started"
        if process.poll() is None:
            try:
                process.wait(1.0)
            except subprocess.TimeoutExpired:
                process.kill()  # its connection is gone: it can do nothing useful
                process.wait()
        code = process.returncode
        if code < 0:
            try:
                return f"killed by {signal.Signals(-code).name}"
            except ValueError:
                return f"killed by signal {-code}"
        return f"exit code {code}"

    def _receive(self, conn: Connection) -> None:
        try:
            while True:
                message = conn.recv()
                if message[0] == "stopped":
                    self.stopped.set()
                    break
                if message[0] == "reloaded":
                    self._reloaded = (message[1], message[2])
                    self._reload_done.set()
                    continue
                _, crc, usage, status, requests, poll_errors, ready, state_saves, listed = message
                if crc is not None:
                    files = []
                    for _ in range(2):
                        fd = recv_handle(conn)
                        files.append(StoredFile(fd, os.fstat(fd).st_size))
                    self.exposition.set_stored((files[0], files[1], crc))
                self.store.mirror(usage, status, requests, poll_errors, state_saves, listed)
                self.ready = self.ready or ready  # a reload's new apps do not unready it
                self.last_update = time.monotonic()
                self._shown_overdue = False
        except (EOFError, OSError):
            pass
        except Exception as err:  # noqa: BLE001 - e.g. descriptors cut off by the worker's death
            log.warning(
                "the connection to the poll worker broke",
                extra={"err": f"{type(err).__name__}: {str(err)[:200]}"},
            )
        # Not while a send is under way (every send holds the lock): the freed descriptor
        # number may at once be a scraper's socket, and the rest of a config (the API secret
        # in it) written there. A send after the close raises OSError instead.
        with self._send_lock:
            conn.close()
        if conn is self._conn:
            self.exited.set()

    def reload(self, config: Config, timeout: float = 10.0) -> None:
        """Hand a reloaded config to the worker process; raises if it does not take it."""
        if self._conn is None or self.exited.is_set():
            raise RuntimeError("the poll worker is not running")
        self._reload_done.clear()
        try:
            with self._send_lock:
                self._conn.send(("reload", config))
        except OSError:
            raise RuntimeError("the poll worker is not running") from None
        if not self._reload_done.wait(timeout):
            raise RuntimeError(f"the poll worker did not confirm within {timeout:g}s")
        assert self._reloaded is not None
        ok, message = self._reloaded
        if not ok:
            raise RuntimeError(message)
        self.config = config

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to save its state and stop; kill it if it takes too long."""
        if self._process is None:
            return
        try:
            if self._conn is not None:
                with self._send_lock:
                    self._conn.send("stop")
        except OSError:
            pass
        if not self.exited.is_set():  # a worker that already ended sends nothing more
            self.stopped.wait(timeout)
        try:
            self._process.wait(0.5)
        except subprocess.TimeoutExpired:
            log.warning("poll worker did not stop in time, killing it")
            self._process.kill()
            self._process.wait(1)


def _child() -> None:  # pragma: no cover - runs in the worker process
    # SIGHUP is the serving process's (config reload); a terminal's hangup must not kill us
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    conn = Connection(int(sys.argv[1]))
    try:
        # polling is background work: when the CPUs are busy, a scrape should win them
        os.nice(WORKER_NICENESS)
    except OSError:
        pass
    try:
        config, log_level, log_format, seed, state_handoff = conn.recv()
    except (EOFError, OSError):  # the serving process ended before it sent the config
        os._exit(0)
    _worker_main(config, conn, log_level, log_format, seed, state_handoff)
    logging.shutdown()
    # a poll still waiting on the network holds a pool thread; the state is saved already
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    _child()
