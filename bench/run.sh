#!/usr/bin/env bash
# The benchmark in one command: bench/run.sh [--quick] [--sizes 1000,10000,100000] [...]
# Installs nginx-light (as root, when missing) and the venv (scripts/lib.sh's ensure_venv) if
# needed, then runs bench/run.py, which prints a table and writes bench/RESULTS.md.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/lib.sh
ensure_debian_packages nginx-light:nginx
if [ ! -x .venv/bin/python ] || ! .venv/bin/python -c 'import exporter, prometheus_client' 2>/dev/null; then
  ensure_venv .
fi
# a --quick smoke run must not overwrite the committed RESULTS.md: it writes beside it
args=("$@")
case " $* " in
  *" --quick "*) case " $* " in *" --output"*) ;; *) args+=(--output bench/RESULTS-quick.md) ;; esac ;;
esac
exec .venv/bin/python bench/run.py "${args[@]}"
