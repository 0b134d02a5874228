"""Shared fixtures. Others may append fixtures below."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from parallel import (  # noqa: F401  (hooks: tests beside each other under xdist)
    pytest_collection_modifyitems,
    pytest_configure,
    pytest_runtest_protocol,
    pytest_unconfigure,
)

from exporter.simulator import SimClock, Simulator


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
