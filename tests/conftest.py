"""Shared fixtures. Others may append fixtures below."""

from __future__ import annotations

import fcntl
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from exporter.simulator import SimClock, Simulator

# -- tests beside neighbours (scripts/test.sh runs pytest-xdist workers) ----------------------
# Every test runs holding a shared lock; a test marked ``alone`` (it measures latency or a
# time ratio, which a neighbour's CPU load would disturb) holds it exclusively: it waits for
# the running tests to end and no other starts until it is done. A turnstile keeps new tests
# from starving a waiting ``alone`` one. Without xdist the locks are uncontended.
_LOCK_DIR = "PYTEST_ALONE_LOCK_DIR"  # inherited by the xdist workers


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "alone: runs with no other test beside it (latency or timing ratios)"
    )
    if _LOCK_DIR not in os.environ:  # the controller, or a run without xdist; workers inherit
        os.environ[_LOCK_DIR] = config._alone_lock_dir = tempfile.mkdtemp(prefix="tests-lock-")


def pytest_unconfigure(config: pytest.Config) -> None:
    lock_dir = getattr(config, "_alone_lock_dir", None)
    if lock_dir:
        shutil.rmtree(lock_dir, ignore_errors=True)
        del os.environ[_LOCK_DIR]


@contextmanager
def _beside_neighbours(alone: bool) -> Iterator[None]:
    lock_dir = os.environ[_LOCK_DIR]
    with open(f"{lock_dir}/turnstile", "a") as turnstile, open(f"{lock_dir}/running", "a") as run:
        fcntl.flock(turnstile, fcntl.LOCK_EX)
        try:
            fcntl.flock(run, fcntl.LOCK_EX if alone else fcntl.LOCK_SH)
        finally:
            if not alone:
                fcntl.flock(turnstile, fcntl.LOCK_UN)
        try:
            yield
        finally:
            fcntl.flock(run, fcntl.LOCK_UN)
            fcntl.flock(turnstile, fcntl.LOCK_UN)


@pytest.hookimpl(tryfirst=True)  # before xdist reads the groups
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``--dist loadgroup`` each test goes to whichever worker is free, except that a test
    using a fixture shared wider than one test (module, class or package scope: a daemon, a
    Prometheus, a built wheel) goes with the others of its file, so the fixture starts once."""
    for item in items:
        if item.get_closest_marker("xdist_group"):
            continue
        info = getattr(item, "_fixtureinfo", None)
        defs = info.name2fixturedefs.values() if info else ()
        if any(d.scope in ("module", "class", "package") for ds in defs for d in ds):
            item.add_marker(pytest.mark.xdist_group(item.nodeid.split("::", 1)[0]))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    """Setup (module fixtures too), call and teardown of each test, under the lock above."""
    with _beside_neighbours(item.get_closest_marker("alone") is not None):
        return (yield)


@pytest.fixture
def sim_clock() -> SimClock:
    """A simulated clock frozen at the current second (advance it with .advance/.set)."""
    return SimClock(start=float(int(time.time())))


@pytest.fixture
def simulator(sim_clock: SimClock) -> Iterator[Simulator]:
    """A started Simulator (demo credentials and apps) on loopback, driven by ``sim_clock``.

    ``fault_delay`` is 1 s so "timeout" faults stay fast; clients should use timeouts < 1 s.
    """
    sim = Simulator(clock=sim_clock)
    sim.fault_delay = 1.0
    sim.start()
    try:
        yield sim
    finally:
        sim.stop()
