"""Running the tests beside each other (scripts/test.sh runs pytest-xdist workers).

tests/conftest.py imports these hooks; a test written in the usual style needs nothing from
here (its ports come from helpers.free_port, its files from tmp_path). Two markers:

- ``@pytest.mark.alone``: a test that measures latency or a timing ratio, which a neighbour's
  CPU load would disturb. scripts/test.sh runs these after the others, in one process
  (``-m alone``); in a parallel run that has them too, one waits for the running tests to
  end, and none starts until it is done.
- ``@pytest.mark.serial("name")``: tests of the same name never run at the same time (e.g.
  floods of connections, each with a scraper's deadline), while other tests run beside them.

Every test holds a shared lock on a file while it runs (setup, module fixtures, call,
teardown); ``alone`` holds it exclusively, and a turnstile keeps newly starting tests from
starving a waiting ``alone`` one. Without xdist the locks are uncontended.

Under ``--dist loadgroup`` each test goes to the next free worker, except that the tests of a
file that share a fixture wider than one test (module, class or package scope: a daemon, a
Prometheus, a built wheel) stay on one worker, so the fixture starts once; a ``serial`` name
is such a group too, so its tests queue on one worker instead of holding several.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import pytest

_LOCK_DIR = "PYTEST_ALONE_LOCK_DIR"  # made by the controller, inherited by the xdist workers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "alone: no other test runs beside it (timing)")
    config.addinivalue_line("markers", "serial(name): tests of one name never run together")
    if _LOCK_DIR not in os.environ:  # the controller, or a run without xdist
        os.environ[_LOCK_DIR] = config._alone_lock_dir = tempfile.mkdtemp(prefix="tests-lock-")


def pytest_unconfigure(config: pytest.Config) -> None:
    lock_dir = getattr(config, "_alone_lock_dir", None)
    if lock_dir:
        shutil.rmtree(lock_dir, ignore_errors=True)
        del os.environ[_LOCK_DIR]


def _lock(stack: ExitStack, name: str, how: int) -> object:
    fh = stack.enter_context(open(f"{os.environ[_LOCK_DIR]}/{name}", "a"))
    fcntl.flock(fh, how)
    stack.callback(fcntl.flock, fh, fcntl.LOCK_UN)
    return fh


@contextmanager
def _beside_neighbours(alone: bool, serial: str | None) -> Iterator[None]:
    with ExitStack() as stack:
        if serial:
            _lock(stack, f"serial-{serial}", fcntl.LOCK_EX)
        turnstile = _lock(stack, "turnstile", fcntl.LOCK_EX)
        _lock(stack, "running", fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        if not alone:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
        yield


def _group(item: pytest.Item) -> str | None:
    serial = item.get_closest_marker("serial")
    if serial:
        return f"serial-{serial.args[0]}"
    info = getattr(item, "_fixtureinfo", None)
    defs = info.name2fixturedefs.values() if info else ()
    if any(d.scope in ("module", "class", "package") for ds in defs for d in ds):
        return item.nodeid.split("::", 1)[0]
    return None


def _set_group(item: pytest.Item, group: str) -> None:
    """What xdist does for an ``xdist_group`` mark: the group after an @ in the node id, which
    its loadgroup scheduler reads. (xdist 3.8 sets ``_nodeid``, which pytest 9 no longer
    reads: its node id comes from ``_id``.)"""
    nodeid = f"{item.nodeid}@{group}"
    try:
        if hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id

            item._id = coerce_node_id(nodeid)
        else:
            item._nodeid = nodeid
    except (ImportError, AttributeError, TypeError, ValueError):
        pass  # another pytest: no group, so a shared fixture may start once per worker


@pytest.hookimpl(trylast=True)  # after xdist's own: see _set_group
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not getattr(config.option, "loadgroup", False):
        return
    for item in items:
        group = _group(item)
        if group and "@" not in item.nodeid.rsplit("]", 1)[-1]:
            _set_group(item, group)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    serial = item.get_closest_marker("serial")
    alone = item.get_closest_marker("alone") is not None
    with _beside_neighbours(alone, serial.args[0] if serial else None):
        return (yield)
