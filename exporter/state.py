"""Counter accounting and its persistence across restarts.

``scaleengine_vse_bytes_total`` counts the growth of each app's day totals: for every day the
exporter keeps the largest total it has seen (the baseline) and adds what a new poll shows beyond
it. A day first seen after the exporter started counts from zero; a day already under way when a
fresh exporter starts (today, or yesterday inside the late-data window) only sets a baseline,
because what happened before the start cannot be told apart from what was counted by a previous
run. With a state file the counters and baselines survive a restart, so nothing is reset and
nothing is counted twice.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from dataclasses import dataclass, field

log = logging.getLogger(__name__)

STATE_VERSION = 1


@dataclass
class AppCounters:
    """Counter values and per-day baselines (ISO date -> (bytes, requests)) of one app."""

    bytes_total: int = 0
    requests_total: int = 0
    baselines: dict[str, tuple[int, int]] = field(default_factory=dict)
    # days that were already under way when this exporter started with no usable state
    origin_days: set[str] = field(default_factory=set)

    def observe(self, day: str, day_bytes: int, day_requests: int) -> tuple[int, int]:
        """Account a day's totals; return the (bytes, requests) added to the counters."""
        base = self.baselines.get(day)
        if base is None:
            if day in self.origin_days:
                self.baselines[day] = (day_bytes, day_requests)
                return 0, 0
            base = (0, 0)
        add_b = max(0, day_bytes - base[0])
        add_r = max(0, day_requests - base[1])
        self.bytes_total += add_b
        self.requests_total += add_r
        self.baselines[day] = (max(base[0], day_bytes), max(base[1], day_requests))
        return add_b, add_r

    def prune(self, keep: set[str]) -> None:
        for day in list(self.baselines):
            if day not in keep:
                del self.baselines[day]


class StateFile:
    """Atomic JSON state file (temp file, fsync, rename; mode 0600)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()

    def save(self, day: str, counters: dict[str, AppCounters]) -> None:
        data = {
            "version": STATE_VERSION,
            "day": day,
            "apps": {
                app: {
                    "bytes_total": c.bytes_total,
                    "requests_total": c.requests_total,
                    "baselines": {d: list(v) for d, v in sorted(c.baselines.items())},
                }
                for app, c in sorted(counters.items())
            },
        }
        payload = json.dumps(data, separators=(",", ":")).encode()
        directory = os.path.dirname(os.path.abspath(self.path))
        with self._lock:
            fd, tmp = tempfile.mkstemp(prefix=".state-", dir=directory)
            try:
                os.fchmod(fd, 0o600)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(payload)
                    fh.flush()
                    os.fsync(fh.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
            try:
                dfd = os.open(directory, os.O_RDONLY)
                try:
                    os.fsync(dfd)
                finally:
                    os.close(dfd)
            except OSError:
                pass

    def load(self) -> tuple[str, dict[str, AppCounters]] | None:
        """(saved day, counters by app), or None with one warning if missing or unusable."""
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read()
        except FileNotFoundError:
            log.info("no state file yet, starting fresh", extra={"path": self.path})
            return None
        except OSError as err:
            log.warning(
                "state file unreadable, starting fresh",
                extra={"path": self.path, "err": err.strerror or str(err)},
            )
            return None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict) or data.get("version") != STATE_VERSION:
                raise ValueError("unknown state format")
            day = data["day"]
            if not isinstance(day, str):
                raise ValueError("bad day")
            apps: dict[str, AppCounters] = {}
            for app, entry in data["apps"].items():
                baselines = {}
                for d, pair in entry["baselines"].items():
                    b, r = pair
                    baselines[str(d)] = (_count(b), _count(r))
                apps[str(app)] = AppCounters(
                    bytes_total=_count(entry["bytes_total"]),
                    requests_total=_count(entry["requests_total"]),
                    baselines=baselines,
                )
            return day, apps
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            log.warning(
                "state file corrupt, starting fresh", extra={"path": self.path, "err": str(err)}
            )
            return None


def _count(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"bad counter value {value!r}")
    return value
