"""A stand-in for ScaleEngine's usage.vse API, for the demo, the tests and the benchmark.

It is at least as strict as the real API is known to be (see docs/API.md): a
request it accepts is one the real API accepts. Usage data is synthetic and deterministic;
traffic grows along a smooth diurnal curve, so values only grow during a day.

It also answers ``app.list`` (the account's apps), checked as strictly (exactly the fields
command, api_key, timestamp, cdn in that order, then the signature). The real answer's shape
is not published; the simulator's choice is ``{"status":"success","message":"Found 3
applications","data":[{"name":"demo-origin","type":"origin"},...]}`` (its apps, sorted);
``app_list_override`` serves another body instead, and its faults are set for the app name
``"app.list"`` (``set_fault("app.list", "failure_0005")``).

Run standalone: ``python -m exporter.simulator --port 8099``.

The modules, the demo's path first (data, checks, answers, server), then what only tests use:

- ``data``: the deterministic usage data (seed, app, video, date), the diurnal curve
  (:func:`day_fraction`), :class:`SimClock`, ``add_traffic``, and the truths tests compare
  with (``delivered``, ``reported``, ``reported_videos``); the demo credentials and apps.
- ``checks``: request validation as strict as the real API (the form's ``json`` field, the
  fields, their order and types, the timestamp window, the signature) and the failure codes.
- ``answers``: success pages, the API's failure JSON, the empty-day shapes, the request log;
  the fault hooks there answer no fault.
- ``server``: the ThreadingHTTPServer, its handler, start/stop, HTTPS, gzip.
- ``faults``: the fault modes (:data:`FAULT_MODES`), only tests set them: per app or day,
  early answers (API failures, HTTP errors, bodies that are not JSON) and pages changed on
  their way out (bad rows, hostile labels, moving pages, odd empty days); plugged in through
  the fault hooks of ``answers`` and ``server``.
- ``hostile``: the answers the handler sends itself for the HTTP fault modes: resets, late
  answers, drips, a gzip bomb, a 200 MB body, endless bodies, a 429, a huge reason phrase.
- ``core``: :class:`Simulator`, all of the above in one class.
- ``cli`` and ``__main__``: the standalone ``python -m exporter.simulator``.

Imports go one way (no circle): data and checks import no other module here; answers and
server import those two; hostile and faults import from those; core imports faults and
server; cli imports core. data, checks, answers and server never import faults or hostile.
"""

from __future__ import annotations

from .checks import COMMAND as COMMAND
from .checks import FAILURE_MESSAGES as FAILURE_MESSAGES
from .checks import INT_FIELDS as INT_FIELDS
from .checks import KEY_ORDER as KEY_ORDER
from .checks import REQUIRED as REQUIRED
from .cli import build_parser as build_parser
from .cli import main as main
from .core import Simulator
from .data import DEMO_API_KEY, DEMO_API_SECRET, DEMO_APPS, DEMO_CDN_ID, SimClock
from .data import day_fraction as day_fraction
from .faults import EMPTY_FAULTS as EMPTY_FAULTS
from .faults import FAULT_MODES
from .faults import HTTP_FAULTS as HTTP_FAULTS
from .faults import LABEL_FAULTS as LABEL_FAULTS
from .faults import ROW_FAULTS as ROW_FAULTS
from .faults import SHIFT_FAULTS as SHIFT_FAULTS
from .hostile import BOMB_SIZE as BOMB_SIZE
from .hostile import HUGE_BODY_SIZE as HUGE_BODY_SIZE
from .hostile import gzip_bomb as gzip_bomb
from .server import Handler as _Handler  # noqa: F401  # tests subclass it
from .server import Server as _Server  # noqa: F401

__all__ = [
    "DEMO_API_KEY",
    "DEMO_API_SECRET",
    "DEMO_APPS",
    "DEMO_CDN_ID",
    "FAULT_MODES",
    "SimClock",
    "Simulator",
]
