#!/usr/bin/env bash
# One command for the benchmarks: set up ./.venv with the bench extras, then run the harness
# (writes docs/benchmarks.md and docs/img/*.png). Pass --quick for the 3-minute version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test,bench
exec .venv/bin/python -m benchmarks "$@"
