#!/usr/bin/env bash
# One command for the benchmarks: set up ./.venv with the bench extras, then run the harness
# and the soak (writes docs/benchmarks.md and docs/img/*.png). Pass --quick for the short version.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test,bench
# The hot-path scenario drives GET /task/{id} with wrk (Debian package `wrk`); without it that
# scenario is skipped with a note in the report.
command -v wrk >/dev/null || echo "note: wrk not installed (apt-get install wrk); the hotpath scenario will be skipped" >&2
.venv/bin/python -m benchmarks "$@"
# Multimodal documents (issue 24): offline OCR speed and a 30-page scanned PDF end to end; own section.
skip_mm=0
for a in "$@"; do case "$a" in --only|--only=*) skip_mm=1 ;; esac; done
if [ "$skip_mm" = 0 ]; then
  mm_args=()
  for a in "$@"; do [ "$a" = --quick ] && mm_args+=(--quick); done
  .venv/bin/python -m benchmarks.multimodal "${mm_args[@]}"
  # The poll hot path (issue 25 item 12): GET /task/{id} against a bare Starlette endpoint; own section.
  .venv/bin/python -m benchmarks.poll "${mm_args[@]}"
  # Mixed traffic (uploads, polls, queries, SSE) at 1,000 req/s for 5 minutes with locust (issue 25 item 12).
  .venv/bin/python -m benchmarks.mixed_load "${mm_args[@]}"
  # One workspace on 1, 2 and 3 instances (issue 27 item 1): extraction ahead; own section.
  .venv/bin/python -m benchmarks.scale_out "${mm_args[@]}"
  # 300 running documents cancelled beside a one-line upload (issue 25 item 5); own section.
  .venv/bin/python -m benchmarks.cancel_storm "${mm_args[@]}"
  # A 99 MB text file beside one-line documents, then cancelled (issue 25 item 8); own section.
  .venv/bin/python -m benchmarks.big_document "${mm_args[@]}"
  # A document's first LLM call with a remote embedding provider (issue 27 item 3); own section.
  .venv/bin/python -m benchmarks.first_call "${mm_args[@]}"
fi
# The soak (issue 16) writes its own section of docs/benchmarks.md: 30 minutes per storage set, 3 with --quick.
# Skipped when --only picks scenarios of the harness.
soak_args=()
for a in "$@"; do
  case "$a" in
    --quick) soak_args+=(--quick) ;;
    --only|--only=*) exit 0 ;;
  esac
done
exec .venv/bin/python -m benchmarks.soak "${soak_args[@]}"
