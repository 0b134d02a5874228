#!/usr/bin/env bash
# Starts the exporter in demo mode against the built-in ScaleEngine simulator
# (makes .venv and installs the package first). Extra arguments go to the exporter.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh

ensure_venv .
exec .venv/bin/scaleengine-exporter --demo "$@"
