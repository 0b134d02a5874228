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

import errno
import fcntl
import json
import logging
import os
import stat
import tempfile
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

from .appkey import AppKey

log = logging.getLogger(__name__)

# version 2: counters by account, then app; version 1 (before several accounts): by app only,
# still loaded (into the first account)
STATE_VERSION = 2
LEGACY_STATE_VERSION = 1
# a real state file is a few kilobytes; anything near this is not ours
MAX_STATE_BYTES = 64 * 2**20
# every counter and baseline in the state file is a whole number in 0..2^63-1
MAX_STATE_NUMBER = 2**63 - 1


class FileReadError(OSError):
    """A file the exporter reads is not a regular file, or is larger than its cap."""

    def __init__(self, reason: str) -> None:
        super().__init__(errno.EINVAL, reason)


def read_regular_file(path: str, max_bytes: int) -> bytes:
    """The bytes of the regular file ``path``, at most ``max_bytes`` of them; never blocks.

    Every file the exporter reads (config, web config, secrets, TLS files, state, backfill
    output) goes through here: a FIFO, a device (``/dev/zero``), a folder or a file larger than
    ``max_bytes`` raises :class:`FileReadError` (``strerror`` says which) instead of hanging or
    reading without end; other failures raise the ``OSError`` of ``open``/``read``.
    """
    # O_NONBLOCK: a FIFO without a writer must not hang the open; O_NOCTTY: a terminal stays
    # nobody's controlling terminal
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            folder = stat.S_ISDIR(info.st_mode)
            raise FileReadError(("a folder, " if folder else "") + "not a regular file")
        if info.st_size > max_bytes:
            raise FileReadError(f"larger than {max_bytes} bytes")
        chunks = []
        left = max_bytes + 1  # a file growing while read is caught too
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > max_bytes:
        raise FileReadError(f"larger than {max_bytes} bytes")
    return raw


class StateLockedError(Exception):
    """Another exporter holds the state file's lock."""


def check_state_path(path: str) -> str | None:
    """Why ``path`` cannot hold the state file (its folder missing or not writable), or None.

    Checked at start-up and by --check-config: a state that can never be saved is a config
    error, not a log line after every poll. ``os.access`` also reports a read-only file
    system, which stops root too.
    """
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"{path} is a folder, not a file"
    if not os.path.isdir(folder):
        what = "is not a folder" if os.path.exists(folder) else "does not exist"
        return f"the folder {folder} of {path} {what}"
    if not os.access(folder, os.W_OK | os.X_OK):
        return f"the folder {folder} of {path} is not writable"
    return None


def open_state_file(path: str | None, lock_fd: int | None = None) -> StateFile | None:
    """The exporter's state file (None without ``state.path``): every process builds it here.

    The command line opens it once and takes its lock (:meth:`StateFile.acquire`); ``--once``
    uses that object, and the daemon's poll worker process, which inherits the lock's
    descriptor, builds its own from :meth:`StateFile.handoff` with ``lock_fd`` set, so the
    lock is neither taken again nor let go while the worker lives.
    """
    if not path:
        return None
    return StateFile(path, lock_fd=lock_fd)


@dataclass
class AppCounters:
    """Counter values and per-day baselines (ISO date -> (bytes, requests)) of one app.

    A day's growth is counted only once two reads in a row show it: what is counted is the
    smaller of the last two reads of the day (its confirmed total) beyond the baseline. One
    outlier read (a row of 2^63, a row listed twice in one answer) is outvoted by the next
    read and never counted; true growth shows up one poll later.
    """

    bytes_total: int = 0
    requests_total: int = 0
    baselines: dict[str, tuple[int, int]] = field(default_factory=dict)
    # days that were already under way when this exporter started with no usable state
    origin_days: set[str] = field(default_factory=set)
    # the last read of each day, not yet confirmed (not saved: a restart reads again)
    reads: dict[str, tuple[int, int]] = field(default_factory=dict)
    # days a saved state had counted (perhaps less than was exported before the restart, if
    # the last saves failed): the counters are withheld until each was read twice again
    pending: set[str] = field(default_factory=set)

    @property
    def exportable(self) -> bool:
        """False while a loaded counter may still be below what was exported before."""
        return not self.pending

    def observe(self, day: str, day_bytes: int, day_requests: int) -> tuple[int, int]:
        """Account a read of a day's totals; return the (bytes, requests) added to the counters."""
        previous = self.reads.get(day)
        self.reads[day] = (day_bytes, day_requests)
        if previous is None and len(self.reads) > 3:  # a long run: only the last days matter
            for old in sorted(self.reads)[:-3]:
                del self.reads[old]
        base = self.baselines.get(day)
        if base is None and day in self.origin_days:
            # under way at start: the first read is the baseline (an outlier there can only
            # make the counter miss growth, never count any that was not there)
            self.baselines[day] = (day_bytes, day_requests)
            return 0, 0
        if previous is None:
            return 0, 0  # unconfirmed: the next read says whether it was an outlier
        confirmed = (min(previous[0], day_bytes), min(previous[1], day_requests))
        self.pending.discard(day)
        if base is None:
            base = (0, 0)
        add_b = max(0, confirmed[0] - base[0])
        add_r = max(0, confirmed[1] - base[1])
        self.bytes_total += add_b
        self.requests_total += add_r
        self.baselines[day] = (max(base[0], confirmed[0]), max(base[1], confirmed[1]))
        return add_b, add_r

    def prune(self, keep: set[str]) -> None:
        for days in (self.baselines, self.reads):
            for day in list(days):
                if day not in keep:
                    del days[day]
        self.pending &= keep


def atomic_write(path: str, chunks: Iterable[bytes], prefix: str = ".tmp-") -> None:
    """Replace ``path`` whole or not at all: a temp file beside it (mode 0600), fsync, rename,
    fsync of the folder. Readers see the old file or the new one, never a part."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        os.fchmod(fd, 0o600)
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(chunks)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
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


class StateFile:
    """Atomic JSON state file (temp file, fsync, rename; mode 0600)."""

    def __init__(
        self, path: str, max_bytes: int = MAX_STATE_BYTES, lock_fd: int | None = None
    ) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        # with lock_fd: the lock is already held through that descriptor (inherited)
        self._lock_fd: int | None = lock_fd

    @property
    def lock_fd(self) -> int | None:
        """The descriptor through which this process holds the lock, or None."""
        return self._lock_fd

    def handoff(self) -> tuple[str, int | None]:
        """What another process needs to use this state file: :func:`open_state_file`'s
        arguments (the lock's descriptor is passed to it as well)."""
        return self.path, self._lock_fd

    @property
    def lock_path(self) -> str:
        return self.path + ".lock"

    def acquire(self) -> int:
        """Take the exclusive lock (``<path>.lock``) for this process's life; its descriptor.

        Two exporters saving one state file would overwrite each other's counters; the second
        one gets :class:`StateLockedError`. The lock goes with the last descriptor of it (a
        child given the descriptor keeps it held), also when the process is killed.
        """
        if self._lock_fd is not None:
            return self._lock_fd
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise StateLockedError(
                    f"state file {self.path} is in use by another exporter"
                    f" (lock {self.lock_path} held)"
                ) from None
            raise
        self._lock_fd = fd
        return fd

    def release(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def save(self, day: str, counters: dict[AppKey, AppCounters]) -> None:
        accounts: dict[str, dict[str, object]] = {}
        for key, c in sorted(counters.items()):
            accounts.setdefault(key.account, {})[key.app] = {
                "bytes_total": c.bytes_total,
                "requests_total": c.requests_total,
                "baselines": {d: list(v) for d, v in sorted(c.baselines.items())},
            }
        data = {"version": STATE_VERSION, "day": day, "accounts": accounts}
        payload = json.dumps(data, separators=(",", ":")).encode()
        with self._lock:
            atomic_write(self.path, [payload], prefix=".state-")

    def _read(self) -> bytes | None:
        """The file's bytes, or None with one warning: never blocks, never reads past the cap."""
        try:
            return read_regular_file(self.path, self.max_bytes)
        except FileNotFoundError:
            log.warning("no state file yet, starting fresh", extra={"path": self.path})
            return None
        except OSError as err:
            log.warning(
                "state file unusable, starting fresh",
                extra={"path": self.path, "err": err.strerror or str(err)},
            )
            return None

    def load(self, legacy_account: str = "") -> tuple[str, dict[AppKey, AppCounters], bool] | None:
        """(saved day, counters by (account, app), whether the file is of the earlier format),
        or None with one warning if missing or unusable. A file of the earlier format (by app
        only) loads into ``legacy_account``."""
        raw = self._read()
        if raw is None:
            return None
        try:
            data = json.loads(raw)
            version = data.get("version") if isinstance(data, dict) else None
            if version not in (STATE_VERSION, LEGACY_STATE_VERSION):
                raise ValueError("unknown state format")
            day = data["day"]
            if not isinstance(day, str):
                raise ValueError("bad day")
            if version == LEGACY_STATE_VERSION:
                by_account = {legacy_account: data["apps"]}
            else:
                by_account = data["accounts"]
            apps: dict[AppKey, AppCounters] = {}
            for account, entries in by_account.items():
                for app, entry in entries.items():
                    apps[AppKey(str(account), str(app))] = _entry(entry)
            return day, apps, version == LEGACY_STATE_VERSION
        except Exception as err:  # noqa: BLE001 - nesting, garbage, memory: all a fresh start
            log.warning(
                "state file corrupt, starting fresh",
                extra={"path": self.path, "err": f"{type(err).__name__}: {str(err)[:200]}"},
            )
            return None


def _entry(entry: dict[str, object]) -> AppCounters:
    """One app's counters and baselines from the state file."""
    baselines = {}
    for d, pair in entry["baselines"].items():  # type: ignore[attr-defined]
        b, r = pair
        baselines[str(d)] = (_count(b), _count(r))
    return AppCounters(
        bytes_total=_count(entry["bytes_total"]),
        requests_total=_count(entry["requests_total"]),
        baselines=baselines,
    )


def _count(value: object) -> int:
    """A counter or baseline from the state file: a whole number in 0..MAX_STATE_NUMBER."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_STATE_NUMBER:
        shown = repr(value) if not isinstance(value, int) or value < 10**30 else "a huge number"
        raise ValueError(f"bad counter value {shown[:60]} (a whole number 0..2^63-1 expected)")
    return value
