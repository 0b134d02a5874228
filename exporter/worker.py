"""The poll worker: polling and rendering in a process of their own.

Under CPython's GIL, a scrape served in the same process as a poll of 100k rows waits for the
poll's threads at every step, so its latency grows with the poll's work. The daemon therefore
runs the poller, its store and the usage renderer here, in a child process, and ships each
new rendering (the stored exposition bytes, already deflated) and the small live state
(statuses, counters) to the serving process over a pipe. The serving process only answers
HTTP from what it last received. ``--once`` and the tests run everything in one process.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from typing import Any

from .config import Config
from .logs import setup_logging
from .metrics import Exposition
from .store import Store

log = logging.getLogger(__name__)

DEBOUNCE = 0.05
EMPTY: tuple[bytes, bytes, int] = (b"", b"", 0)


def budgets_of(config: Config) -> dict[str, tuple[int | None, int | None]]:
    return {
        a.name: (a.daily_bytes_budget, a.monthly_bytes_budget)
        for a in config.apps
        if a.daily_bytes_budget is not None or a.monthly_bytes_budget is not None
    }


def _worker_main(config: Config, conn: Connection, log_level: str, log_format: str) -> None:
    """Entry point of the worker process."""
    # imported here: the serving process never polls, so it does not load requests/APScheduler
    from .poller import Poller
    from .state import StateFile

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the serving process decides when to stop
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    setup_logging(log_level, log_format, config.secret_values())
    store = Store([a.name for a in config.apps])
    state = StateFile(config.state.path) if config.state.path else None
    poller = Poller(config, store, state_file=state)
    expo = Exposition(store, config.poll.timezone, budgets_of(config), process_metrics=False)
    send_lock = threading.Lock()

    def ship(parts: tuple[bytes, bytes, int] | None) -> None:
        view = store.view()
        usage = {app: dataclasses.replace(u, videos=()) for app, u in view.usage.items()}
        message = (
            "update",
            None if parts is None else parts[2],  # the CRC; the bytes follow as raw messages
            usage,
            dict(view.status),
            dict(view.requests),
            dict(view.poll_errors),
            poller.ready,
        )
        with send_lock:
            conn.send(message)
            if parts is not None:
                conn.send_bytes(parts[0])
                conn.send_bytes(parts[1])

    def shipper() -> None:
        version = -1
        while not stop.is_set():
            new = store.wait_for_change(version, timeout=1.0)
            if new == version:
                continue
            version = new
            stop.wait(DEBOUNCE)  # polls that end together land in one rendering
            try:
                changed = expo.render_now()
                ship(expo.stored_parts() if changed else None)
                if changed:  # the serving process has them now; the fragments stay here
                    expo.set_stored(EMPTY)
            except (BrokenPipeError, EOFError, OSError):
                stop.set()
            except Exception:  # pragma: no cover - a bug; keep polling
                log.exception("shipping the exposition failed")

    def listener() -> None:
        try:
            while not stop.is_set():
                if conn.recv() == "stop":
                    break
        except (EOFError, OSError):
            pass  # the serving process is gone
        stop.set()

    ship(expo.stored_parts())
    expo.set_stored(EMPTY)
    threading.Thread(target=shipper, name="ship", daemon=True).start()
    threading.Thread(target=listener, name="listen", daemon=True).start()
    poller.start()
    stop.wait()
    poller.shutdown()  # stops the scheduler and saves the state
    try:
        with send_lock:
            conn.send(("stopped",))
    except OSError:
        pass


class PollWorker:
    """The serving side: starts the worker process and mirrors what it ships."""

    def __init__(self, config: Config, store: Store, exposition: Exposition) -> None:
        self.config = config
        self.store = store
        self.exposition = exposition
        self.ready = False
        self.stopped = threading.Event()
        self._process: Any = None
        self._conn: Connection | None = None
        self.exited = threading.Event()

    def start(self, log_level: str = "info", log_format: str = "logfmt") -> None:
        """Start ``python -m exporter.worker`` on one end of a socket pair."""
        ours, theirs = socket.socketpair()
        package_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([package_root, *filter(None, [env.get("PYTHONPATH")])])
        self._process = subprocess.Popen(
            [sys.executable, "-m", "exporter.worker", str(theirs.fileno())],
            pass_fds=[theirs.fileno()],
            stdin=subprocess.DEVNULL,
            env=env,
        )
        theirs.close()
        self._conn = Connection(ours.detach())
        self._conn.send((self.config, log_level, log_format))
        threading.Thread(target=self._receive, name="receive", daemon=True).start()

    def _receive(self) -> None:
        assert self._conn is not None
        try:
            while True:
                message = self._conn.recv()
                if message[0] == "stopped":
                    self.stopped.set()
                    break
                _, crc, usage, status, requests, poll_errors, ready = message
                if crc is not None:
                    plain = self._conn.recv_bytes()
                    deflated = self._conn.recv_bytes()
                    self.exposition.set_stored((plain, deflated, crc))
                    del plain, deflated
                self.store.mirror(usage, status, requests, poll_errors)
                self.ready = ready
        except (EOFError, OSError):
            pass
        self.exited.set()

    def stop(self, timeout: float = 3.0) -> None:
        """Ask the worker to save its state and stop; kill it if it takes too long."""
        if self._process is None:
            return
        try:
            if self._conn is not None:
                self._conn.send("stop")
        except OSError:
            pass
        self.stopped.wait(timeout)
        try:
            self._process.wait(0.5)
        except subprocess.TimeoutExpired:
            log.warning("poll worker did not stop in time, killing it")
            self._process.kill()
            self._process.wait(1)


def _child() -> None:  # pragma: no cover - runs in the worker process
    conn = Connection(int(sys.argv[1]))
    config, log_level, log_format = conn.recv()
    _worker_main(config, conn, log_level, log_format)
    logging.shutdown()
    # a poll still waiting on the network holds a pool thread; the state is saved already
    os._exit(0)


if __name__ == "__main__":  # pragma: no cover
    _child()
