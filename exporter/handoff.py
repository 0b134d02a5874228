"""Handing validated settings to the daemon's lean processes, across exec and from a child.

pydantic validates the config in short-lived processes only (config/plain.py says why). Two
hand-overs carry the result, pickled (both ends are this exporter, started by itself):

* :func:`exec_serving`: the command line, once the config is valid and the state file locked,
  becomes the serving process by ``os.execve`` (the PID stays, so Docker's and systemd's
  signals still reach it). The settings travel in an inherited in-memory file (memfd), the
  state lock's descriptor is inherited too; ``python -m exporter.serving FD`` reads them.
* :func:`run_child`: each reload validates in ``python -m exporter.serving --load``, a child
  that reads the request on stdin and writes the plain settings (or the error) on stdout.
"""

from __future__ import annotations

import logging
import os
import pickle
import subprocess
import sys
import tempfile
from typing import Any, NoReturn

SERVING_MODULE = "exporter.serving"
CHILD_TIMEOUT = 30.0  # a reload's validation child that takes longer fails the reload


def package_env() -> dict[str, str]:
    """The environment for our own child processes: this package importable whatever the
    current directory (as the poll worker is started)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return env


def write_payload(obj: object) -> int:
    """An unlinked in-memory file holding ``obj`` pickled, at offset 0; its descriptor is
    inheritable (it survives exec). A memfd needs no writable file system (a read-only root
    in Kubernetes); an unlinked temporary file where memfd is missing."""
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    try:
        fd = os.memfd_create("scaleengine-exporter-settings", 0)
    except (AttributeError, OSError):
        fh = tempfile.TemporaryFile()  # noqa: SIM115 - only its descriptor lives on
        fd = os.dup(fh.fileno())
        fh.close()
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.lseek(fd, 0, os.SEEK_SET)
    os.set_inheritable(fd, True)
    return fd


def read_payload(fd: int) -> Any:
    """What :func:`write_payload` wrote; the descriptor is closed."""
    with os.fdopen(fd, "rb") as fh:
        return pickle.load(fh)  # noqa: S301 - written by this exporter before its exec


def exec_serving(payload: object, keep_fds: list[int]) -> NoReturn:
    """Become ``python -m exporter.serving`` with ``payload`` (same PID, same stdio);
    ``keep_fds`` (the state lock) stay open across the exec."""
    fd = write_payload(payload)
    for kept in keep_fds:
        os.set_inheritable(kept, True)
    logging.shutdown()  # flush what the command line logged
    sys.stdout.flush()
    sys.stderr.flush()
    # the command line's own arguments follow, unread, so ps still shows how it was started
    argv = [sys.executable, "-m", SERVING_MODULE, str(fd), "--", *sys.argv[1:]]
    os.execve(sys.executable, argv, package_env())


def run_child(request: object, timeout: float = CHILD_TIMEOUT) -> Any:
    """Run ``python -m exporter.serving --load`` with ``request`` on its stdin; what it
    wrote on stdout, unpickled. Its log lines go to our stderr. Raises RuntimeError when it
    fails, gives nothing or takes longer than ``timeout`` seconds."""
    try:
        done = subprocess.run(
            [sys.executable, "-m", SERVING_MODULE, "--load"],
            input=pickle.dumps(request, protocol=pickle.HIGHEST_PROTOCOL),
            stdout=subprocess.PIPE,
            env=package_env(),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"validating the config took longer than {timeout:g}s") from None
    if done.returncode != 0 or not done.stdout:
        raise RuntimeError(f"validating the config failed (exit code {done.returncode})")
    return pickle.loads(done.stdout)  # noqa: S301 - our own child's answer
