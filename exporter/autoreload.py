"""--config.auto-reload-interval: reload the config when its files' content changes.

Prometheus' flag of the same name, for the same reason: a Kubernetes ConfigMap update swaps
the mounted folder's ``..data`` symlink rather than writing the file, and no signal reaches
the process. So the files are compared by content (a hash of what is read through the path
as it resolves now), never by mtime or inode: a swapped symlink, a rewritten file and an
editor's rename all count, and a file rewritten with the same bytes does not.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
import threading
from collections.abc import Callable, Iterable

log = logging.getLogger("exporter.autoreload")

# the config file's own limit (config.py reads at most this much too)
_MAX_READ = 4 * 1024 * 1024


def file_fingerprint(path: str) -> str:
    """A hash of one file's content; a file that cannot be read counts as its error.

    The file is opened non-blocking and read only if it is a regular file (a FIFO or a
    device in its place must not hang the watcher), at most ``_MAX_READ`` bytes."""
    h = hashlib.sha256()
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as err:
        return f"error {err.errno}"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return "not a regular file"
        h.update(os.read(fd, _MAX_READ + 1))
    except OSError as err:
        return f"error {err.errno}"
    finally:
        os.close(fd)
    return h.hexdigest()


def fingerprints(paths: Iterable[str]) -> dict[str, str]:
    """Each file's :func:`file_fingerprint`, by path."""
    return {path: file_fingerprint(path) for path in paths}


def fingerprint(paths: Iterable[str]) -> str:
    """One hash of the files' content (their paths included)."""
    h = hashlib.sha256()
    for path, value in fingerprints(paths).items():
        h.update(path.encode("utf-8", "surrogatepass") + b"\0" + value.encode() + b"\0")
    return h.hexdigest()


class ConfigWatcher:
    """Calls ``reload`` when the content of ``paths()`` changes; checks every ``interval``.

    A change is reloaded once: a reload that fails (a broken file) is not tried again until
    the content changes again, as a SIGHUP would not be repeated either."""

    def __init__(
        self, paths: Callable[[], list[str]], interval: float, reload: Callable[[], object]
    ) -> None:
        self._paths = paths
        self.interval = interval
        self._reload = reload
        self._stop = threading.Event()
        self._last = fingerprints(paths())
        self._thread = threading.Thread(target=self._run, name="config-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def check(self) -> bool:
        """Reload if the content changed since the last check; True when it did."""
        paths = self._paths()
        now = fingerprints(paths)
        if now == self._last:
            return False
        changed = [p for p in {**self._last, **now} if self._last.get(p) != now.get(p)]
        self._last = now
        log.info("config file changed, reloading", extra={"files": ", ".join(changed)})
        self._reload()
        # the reload may name other files (a new api_key_file): take them in
        after = self._paths()
        if after != paths:
            self._last = fingerprints(after)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.check()
            except Exception as err:  # never let the watcher die silently
                log.error("config auto-reload check failed", extra={"err": str(err)})
