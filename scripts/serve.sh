#!/usr/bin/env bash
# One command from a fresh clone to a running service on embedded defaults:
# embedded Redis, LightRAG file storage, offline tokenizer/embeddings and the offline LLM stand-in,
# all under ./data. Configure with environment variables (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh
exec .venv/bin/python main.py "$@"
