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
# next free one (a file whose tests share a daemon stays together; tests/conftest.py). Tests
# marked `alone` run with no neighbour. Later flags win: `./scripts/test.sh -n 0
# tests/test_web.py` runs one file in one process.
.venv/bin/python -m pytest -n 4 --dist loadgroup "$@"
