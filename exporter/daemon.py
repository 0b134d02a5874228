"""The daemon's serving side once the config is loaded: HTTP here, the poll worker
supervised (restarted when it ends), signals (SIGTERM/SIGINT stop, SIGHUP reloads), reloads
applied, a shutdown bounded in time. :func:`serve_forever` is what ``exporter.serving`` runs;
cli.py parses the flags and loads the config before it."""

from __future__ import annotations

import errno
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from . import __version__
from .autoreload import ConfigWatcher
from .logs import set_secrets
from .metrics import Exposition
from .reload import Reloader
from .state import StateFile
from .store import Store
from .web.app import WebApp, serve
from .web.webconfig import WebConfig
from .worker import PollWorker, budgets_of

if TYPE_CHECKING:  # the serving process runs on plain Settings (config/plain.py), no pydantic
    from .config import Config

log = logging.getLogger("exporter")

SHUTDOWN_SECONDS = 5.0
# a poll worker that ends is restarted after RESTART_FIRST seconds, doubling up to RESTART_MAX
RESTART_FIRST = 1.0
RESTART_MAX = 60.0


# budgets and poll settings of the demo: short intervals so data shows within seconds
def fail(message: str) -> int:
    """One error line on stderr; the exit status of a bad config or command line (2)."""
    print(f"scaleengine-exporter: error: {message}", file=sys.stderr)
    return 2


def stop_simulator(simulator: Any) -> None:
    if simulator is not None:
        simulator.stop()


def _watched_files(config_path: str, config: Config) -> list[str]:
    """The config file and the secret files it names (a rotated Secret counts too)."""
    files = [f for a in config.accounts for f in (a.api_key_file, a.api_secret_file) if f]
    return [config_path, *files]


def bound_address(server: Any) -> tuple[str, str]:
    """(host:port really bound, which interfaces) of a listening server."""
    host, port = server.server_address[:2]
    if host in ("::", "0.0.0.0"):
        scope = "all (IPv4 and IPv6)" if host == "::" else "all (IPv4)"
    elif host in ("127.0.0.1", "::1") or host.startswith("127."):
        scope = "loopback only"
    else:
        scope = host
    shown = f"[{host}]" if ":" in host else host
    return f"{shown}:{port}", scope


def supervise(worker: PollWorker, stop: threading.Event) -> None:
    """Restart the poll worker whenever it ends before ``stop``: after 1 s, doubling while it
    keeps ending, up to 60 s; a worker that ran for 60 s or more starts the back-off over.
    One log line each time, no traceback; the serving process and its last snapshot stay up
    (shown down once the worker has been silent too long: ``PollWorker.check_overdue``)."""
    delay = RESTART_FIRST
    while True:
        while not worker.exited.wait(1.0):
            worker.check_overdue()
        if stop.is_set():
            return
        if time.monotonic() - worker.started_at >= RESTART_MAX:
            delay = RESTART_FIRST
        cause = worker.reap()
        log.error(
            "the poll worker process ended unexpectedly, restarting it",
            extra={"cause": cause, "restart_in": f"{delay:g}s"},
        )
        until = time.monotonic() + delay
        while (left := until - time.monotonic()) > 0:
            if stop.wait(min(left, 1.0)):
                return
            worker.check_overdue()
        worker.restart()
        delay = min(delay * 2, RESTART_MAX)


# A SIGHUP before the reloader exists (the port already answers): noted, and reloaded as soon
# as the reloader exists, not lost.
_early_hangup = threading.Event()


def _catch_stop_signals() -> tuple[threading.Event, list[int]]:
    """SIGTERM and SIGINT set the event (and are noted in the list); SIGHUP is noted until
    the reloader exists. Installed first: a signal as soon as the port answers must stop us
    cleanly, and a SIGHUP before the reloader exists must not kill us, nor be lost."""
    stop = threading.Event()
    received: list[int] = []

    def on_signal(signum: int, _frame: Any) -> None:
        received.append(signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGHUP, lambda _signum, _frame: _early_hangup.set())
    return stop, received


def _listen_error(address: str, err: OSError) -> str:
    hint = ""
    if err.errno in (errno.EADDRINUSE, errno.EACCES, errno.EADDRNOTAVAIL):
        hint = " (choose another address with --web.listen-address, e.g. 127.0.0.1:9491)"
    return f"cannot listen on {address}: {err.strerror or err}{hint}"


def _log_listening(server: Any, config: Config) -> None:
    address, interfaces = bound_address(server)
    log.info(
        "listening",
        extra={
            "address": address,
            "interfaces": interfaces,
            "url": server.url + config.web.telemetry_path,
            "version": __version__,
        },
    )


def _applier(
    worker: PollWorker, exposition: Exposition, app: Any, formatter: Any
) -> Callable[[Config], None]:
    """What makes the running daemon use a reloaded config (the worker first: it may refuse)."""

    def apply(new: Config) -> None:
        worker.reload(new)
        exposition.reconfigure(new.poll.timezone, budgets_of(new))
        if exposition.poll_settings is not None:
            exposition.poll_settings.interval = new.poll.interval
        app.telemetry_path = new.web.telemetry_path
        app.config = new
        if formatter is not None:
            # the old values stay redacted: lines about the old config may still be logged
            set_secrets(formatter, [*formatter.secrets, *new.secret_values()])

    return apply


def _start_reloading(reloader: Reloader, auto_reload: float, config_path: str | None) -> None:
    """SIGHUP reloads (in a thread: a signal handler must not block); with
    --config.auto-reload-interval, so does a change of the config or its secret files."""

    def on_hangup(_signum: int, _frame: Any) -> None:
        log.info("SIGHUP received, reloading the config")
        threading.Thread(target=reloader, name="reload", daemon=True).start()

    signal.signal(signal.SIGHUP, on_hangup)
    if _early_hangup.is_set():  # one came before the line above: reload now
        on_hangup(signal.SIGHUP, None)
    if auto_reload > 0 and config_path is not None:
        # reloader.config is the running config after each reload
        ConfigWatcher(
            lambda: _watched_files(config_path, reloader.config), auto_reload, reloader
        ).start()


def _shut_down(server: Any, worker: PollWorker, simulator: Any, received: list[int]) -> None:
    """Stop serving, let the worker save its state, and end the process within
    SHUTDOWN_SECONDS whatever hangs."""
    if received:
        log.info("shutting down", extra={"signal": signal.Signals(received[0]).name})
    done = threading.Event()

    def finish() -> None:
        server.shutdown()
        server.server_close()
        worker.stop(SHUTDOWN_SECONDS - 1.5)
        stop_simulator(simulator)
        done.set()

    threading.Thread(target=finish, name="shutdown", daemon=True).start()
    if not done.wait(SHUTDOWN_SECONDS - 0.5):
        log.warning("shutdown took too long, exiting anyway")
    write_modules_file()
    logging.shutdown()
    os._exit(0)


MODULES_FILE_ENV = "SCALEENGINE_EXPORTER_MODULES_FILE"


def write_modules_file() -> None:
    """With $SCALEENGINE_EXPORTER_MODULES_FILE set, the serving process writes the names of
    the modules it loaded there as it exits, one a line (tests/test_footprint.py: it must
    not load pydantic or the poll stack)."""
    path = os.environ.get(MODULES_FILE_ENV)
    if not path:
        return
    try:
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("".join(f"{name}\n" for name in sorted(sys.modules)))
    except OSError as err:
        log.warning("cannot write the modules file", extra={"err": str(err)})


def serve_forever(
    config: Config,
    web_config: WebConfig | None,
    log_level: str,
    log_format: str,
    simulator: Any = None,
    state: StateFile | None = None,
    load: Callable[[], Config] | None = None,
    lifecycle: bool = False,
    formatter: Any = None,
    auto_reload: float = 0.0,
    config_path: str | None = None,
    load_web: Callable[[Config], WebConfig | None] | None = None,
) -> int:
    """The daemon: HTTP here, polling and rendering in the poll worker process (which is
    handed ``state``, the state file locked by :func:`lock_state`)."""
    stop, received = _catch_stop_signals()
    store = Store(config.app_keys())
    exposition = Exposition(
        store, config.poll.timezone, budgets_of(config), poll_interval=config.poll.interval
    )
    worker = PollWorker(config, store, exposition, state)
    app = WebApp(
        exposition,
        store,
        lambda: worker.ready,
        web_config,
        config.web.telemetry_path,
        config=config,  # the landing page shows budgets and intervals
        demo=simulator is not None,
    )
    ctx = web_config.ssl_context() if web_config else None
    try:
        server, _ = serve(config.web.listen_address, app, ctx)
    except OSError as err:
        stop_simulator(simulator)
        return fail(_listen_error(config.web.listen_address, err))
    worker.start(log_level, log_format)
    _log_listening(server, config)
    if load is not None:
        apply = _applier(worker, exposition, app, formatter)
        status = exposition.reload_status
        reloader = Reloader(load, apply, config, web_config, status, load_web=load_web)
        if lifecycle:
            app.reload = reloader
        _start_reloading(reloader, auto_reload, config_path)
    threading.Thread(target=supervise, args=(worker, stop), name="supervise", daemon=True).start()
    # a signal the kernel hands to another thread only runs its Python handler when the main
    # thread next runs bytecode: wake up every second rather than block for an hour
    while not stop.wait(1.0):
        pass
    _shut_down(server, worker, simulator, received)
    return 0  # pragma: no cover - _shut_down ends the process
