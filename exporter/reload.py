"""Config reload without a restart, as Prometheus does it: SIGHUP or ``POST /-/reload``.

The config file is read and validated again; a file that fails keeps the last good config
running and the reason is logged. What can change live does (apps added and removed, budgets,
limits, poll and API settings, the telemetry path); what needs a restart (the listen address,
the web config file with its TLS files and users, the state file) keeps its running value and
the log says so. The outcome is exported as
``scaleengine_exporter_config_last_reload_successful`` and
``scaleengine_exporter_config_last_reload_success_timestamp_seconds``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from .config import ConfigError

if TYPE_CHECKING:  # the daemon's serving process reloads plain Settings, without pydantic
    from .config import Config
    from .web.webconfig import WebConfig

log = logging.getLogger("exporter")

# a reload waits this long for one still running, then fails (counted) instead of queueing
RELOAD_WAIT_SECONDS = 30.0


class ReloadStatus:
    """prometheus_client collector: whether the last reload worked, and when one last did."""

    def __init__(self) -> None:
        self.successful = True
        self.success_timestamp = time.time()  # the config loaded at start counts
        self.failures = 0

    def succeeded(self) -> None:
        self.successful = True
        self.success_timestamp = time.time()

    def failed(self) -> None:
        self.successful = False
        self.failures += 1

    def collect(self) -> Iterable[Metric]:
        ok = GaugeMetricFamily(
            "scaleengine_exporter_config_last_reload_successful",
            "1 when the last config reload (SIGHUP or POST /-/reload) succeeded, 0 when it "
            "failed and the previous config is still in use.",
        )
        ok.add_metric([], 1 if self.successful else 0)
        ts = GaugeMetricFamily(
            "scaleengine_exporter_config_last_reload_success_timestamp_seconds",
            "Unix time of the last successful config load (the start counts as one).",
        )
        ts.add_metric([], self.success_timestamp)
        failures = CounterMetricFamily(
            "scaleengine_exporter_config_reload_failures",
            "Config reloads (SIGHUP or POST /-/reload) that failed: a bad or unreadable file, "
            "or a reload still running.",
        )
        failures.add_metric([], self.failures)
        return [ok, ts, failures]


def web_fingerprint(web: WebConfig | None) -> tuple[Any, ...] | None:
    """What a web config serves with (TLS material, users, headers), for comparison."""
    return None if web is None else web.fingerprint()


def _load_web(config: Config) -> WebConfig | None:
    # imported here: the poll worker takes ReloadStatus from this module, not the web stack
    from .web.webconfig import load_web_config

    return load_web_config(config.web.config_file) if config.web.config_file else None


class Reloader:
    """Loads the config again and hands it to ``apply``; one reload at a time.

    ``load`` returns the new config with the command line's overrides applied (or raises
    ConfigError); ``apply`` makes the running exporter use it (or raises). ``load_web`` gives
    the web config the new config names (default: :func:`load_web_config` of its
    ``web.config_file``; the daemon's serving process takes the one its reload child loaded).
    """

    def __init__(
        self,
        load: Callable[[], Config],
        apply: Callable[[Config], None],
        config: Config,
        web_config: WebConfig | None,
        status: ReloadStatus,
        load_web: Callable[[Config], WebConfig | None] | None = None,
    ) -> None:
        self._load = load
        self._load_web = load_web or _load_web
        self._apply = apply
        self.config = config
        self._web = web_fingerprint(web_config)
        self.status = status
        self._lock = threading.Lock()

    def __call__(self) -> tuple[bool, str]:
        if not self._lock.acquire(timeout=RELOAD_WAIT_SECONDS):
            return self._fail(f"another reload is still running after {RELOAD_WAIT_SECONDS:g}s")
        try:
            return self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> tuple[bool, str]:
        try:
            new = self._load()
            web = self._load_web(new)
        except ConfigError as err:
            return self._fail(str(err))
        except Exception as err:  # noqa: BLE001 - MemoryError, a bug: a failed reload
            return self._fail(f"{type(err).__name__}: {str(err)[:200]}")
        new = self._keep_restart_settings(new, web)
        try:
            self._apply(new)
        except Exception as err:  # e.g. the poll worker is gone
            return self._fail(f"applying the new config failed: {err}")
        old_apps = {str(k) for k in self.config.app_keys()}
        new_apps = {str(k) for k in new.app_keys()}
        self.config = new
        self.status.succeeded()
        log.info(
            "config reloaded",
            extra={
                "apps": len(new_apps),
                "added": ",".join(sorted(new_apps - old_apps)) or "none",
                "removed": ",".join(sorted(old_apps - new_apps)) or "none",
            },
        )
        return True, "config reloaded"

    def _fail(self, reason: str) -> tuple[bool, str]:
        self.status.failed()
        log.error("config reload failed, keeping the last good config", extra={"err": reason})
        return False, f"config reload failed, keeping the last good config: {reason}"

    def _keep_restart_settings(self, new: Config, web: WebConfig | None) -> Config:
        """Keep the running values of settings that only a restart changes; log them."""
        old = self.config
        changed = []
        if new.web.listen_address != old.web.listen_address:
            changed.append("web.listen_address")
        if new.web.config_file != old.web.config_file or web_fingerprint(web) != self._web:
            changed.append("web.config_file (TLS files, users, headers)")
        if new.state.path != old.state.path:
            changed.append("state.path")
        if not changed:
            return new
        log.warning(
            "changed settings need a restart; they keep their running values",
            extra={"settings": "; ".join(changed)},
        )
        web_section = new.web.model_copy(
            update={"listen_address": old.web.listen_address, "config_file": old.web.config_file}
        )
        return new.model_copy(update={"web": web_section, "state": old.state})
