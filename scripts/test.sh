#!/usr/bin/env bash
# Runs the whole test suite on a fresh Debian/Ubuntu machine with Python 3.11+:
# installs what the tests need (Debian's prometheus for prometheus + promtool, php-cli to check
# our PHP json_encode against real PHP, curl for a multipart request; a venv with the
# package and its test extras; chromium for the landing page), then ruff (lint + format check) and pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_debian_packages prometheus:promtool prometheus:prometheus php-cli:php curl:curl \
  chromium:chromium
ensure_venv '.[test]'

echo "== ruff check" && .venv/bin/ruff check .
echo "== ruff format --check" && .venv/bin/ruff format --check .
echo "== pytest"
# Most tests wait on subprocesses and deadlines, not the CPU: 4 workers, each test to the
# next free one (tests/parallel.py). Then the tests marked `alone` (they measure timing),
# with nothing beside them. Arguments go to both runs; later flags win, so
# `./scripts/test.sh -n 0 tests/test_web.py` runs a file in one process. A run that selects
# no test (exit 5) counts as passed when the other one ran tests.
parallel=0 alone=0
.venv/bin/python -m pytest -n 4 --dist loadgroup -m "not alone" "$@" || parallel=$?
echo "== pytest: the tests marked alone"
.venv/bin/python -m pytest -m alone "$@" || alone=$?
if [ "$parallel" = 5 ] && [ "$alone" = 5 ]; then exit 5; fi
[ "$parallel" = 5 ] && parallel=0
[ "$alone" = 5 ] && alone=0
[ "$parallel" = 0 ] || exit "$parallel"
exit "$alone"
