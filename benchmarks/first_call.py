"""A document's first LLM call after its upload, with a remote embedding provider (issue 27 item 3):
``python -m benchmarks.first_call``.

One small document at a time (a fresh one each, after one uncounted warm-up), through the service
with the mock LLM (0.5 s per call) and the mock embedding endpoint answering after
``--embedding-latency`` seconds, as a remote provider does. Per document: seconds from the upload
to the start of its first chat call at the mock, and to ``completed``. Medians over ``--docs``.
The chunk vectors are written while the chunks are extracted, so the first call should not wait for
an embedding round trip. Writes its own marked block of docs/benchmarks.md (``--no-doc``: print only).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, RedisServer, machine_info
from benchmarks.doc_blocks import splice_block
from benchmarks.ingest_scenarios import _ours, upload, wait_task
from benchmarks.loadgen import doc_text_distinct
from benchmarks.scenarios import Ctx, Params

BEGIN, END = "<!-- first-call:begin -->", "<!-- first-call:end -->"
LLM_LATENCY = 0.5


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def measure(docs: int, embedding_latency: float) -> dict[str, list[float]]:
    workdir = Path(tempfile.mkdtemp(prefix="first-call-"))
    redis = RedisServer(workdir / "redis").start()
    ctx = Ctx(Params.make(True), workdir, redis, None, log)
    mock = ctx.mock(latency=LLM_LATENCY)
    firsts: list[float] = []
    completions: list[float] = []
    try:
        service = _ours(ctx, mock, "first-call", 8, 8)
        try:
            for i in range(docs + 1):
                mock.reset()
                mock.config(latency=LLM_LATENCY, embedding_latency=embedding_latency)
                t0 = time.monotonic()
                wait_task(service.base, upload(service.base, f"doc{i}.txt", doc_text_distinct(i, 3000)))
                completed = time.monotonic() - t0
                stats_url = f"{mock.base}/_mock/stats"
                stats = httpx.get(stats_url, params={"include_calls": "true"}, timeout=30).json()
                chats = [c["at"] - c["latency_s"] for c in stats["calls_detail"] if c["endpoint"] == "chat"]
                if i and chats:  # the first document warms the service up
                    firsts.append(min(chats))
                    completions.append(completed)
        finally:
            service.stop()
    finally:
        mock.stop()
        redis.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return {"first_call_s": firsts, "completed_s": completions}


def markdown(result: dict[str, list[float]], args: argparse.Namespace) -> str:
    info = machine_info()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    first, done = result["first_call_s"], result["completed_s"]
    return "\n".join(
        [
            "## A document's first LLM call, with a remote embedding provider (issue 27 item 3)",
            "",
            f"`python -m benchmarks.first_call` on {info.get('cpu', '?')}, {info.get('cores', '?')} cores, "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, commit {info.get('commit', '?')}; load "
            f"average at the end {load}. One small document at a time ({len(first)} after a warm-up), mock "
            f"LLM {LLM_LATENCY:g} s per call, mock embeddings {args.embedding_latency:g} s per call.",
            "",
            "| measure | median | range |",
            "|---|---|---|",
            f"| upload → first LLM call starts, s | **{statistics.median(first):.3f}** | "
            f"{min(first):.3f}–{max(first):.3f} |",
            f"| upload → `completed`, s | **{statistics.median(done):.3f}** | "
            f"{min(done):.3f}–{max(done):.3f} |",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.first_call")
    ap.add_argument("--docs", type=int, default=6)
    ap.add_argument("--embedding-latency", type=float, default=0.3)
    ap.add_argument("--quick", action="store_true", help="3 documents")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks.md")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    result = measure(3 if args.quick else args.docs, args.embedding_latency)
    block = markdown(result, args)
    print(block)
    if not args.no_doc:
        splice_block(Path(args.out), f"{BEGIN}\n{block}\n{END}", BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
