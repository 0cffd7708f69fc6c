"""Benchmark harness: ``python -m benchmarks [--quick] [--only ack,throughput,...]``.

Runs real processes on 127.0.0.1 (the service, LightRAG Server in its own venv, the mock LLM,
a private redis-server, load generators), then writes docs/benchmarks.md and docs/img/*.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from pathlib import Path

from benchmarks.common import ROOT, RedisServer, machine_info
from benchmarks.hotpath import SCENARIOS as HOTPATH_SCENARIOS
from benchmarks.ingest_scenarios import SCENARIOS as INGEST_SCENARIOS
from benchmarks.lrs import ensure_venv
from benchmarks.report import write_report
from benchmarks.report_engine import write_engine_section
from benchmarks.scenarios import SCENARIOS as BASE_SCENARIOS
from benchmarks.scenarios import Ctx, Params

#: Scenarios of the ingestion-engine / hot-path round: reported in their own section of
#: docs/benchmarks.md (results kept in docs/benchmarks-engine.json, merged run over run). The soak
#: (issue 16) is its own program, ``python -m benchmarks.soak``, with its own section.
ENGINE_SCENARIOS = {**INGEST_SCENARIOS, **HOTPATH_SCENARIOS}
SCENARIOS = {**BASE_SCENARIOS, **ENGINE_SCENARIOS}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def log_load() -> str:
    """The machine is shared: the load average at the end of the run goes into the report."""
    try:
        return " / ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks")
    ap.add_argument(
        "--quick",
        action="store_true",
        help="smaller sizes, one repeat (the original seven ~3 min; the engine and hot-path ones ~20 min)",
    )
    ap.add_argument("--only", default="", help=f"comma list of scenarios: {','.join(SCENARIOS)}")
    ap.add_argument("--no-lrs", action="store_true", help="skip the LightRAG Server comparison")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--keep", action="store_true", help="keep the temporary work dir (logs, data)")
    ap.add_argument("--results", default="", help="also save raw results (JSON) to this file")
    ap.add_argument("--report-only", default="", help="rewrite the report from a saved results JSON")
    args = ap.parse_args(argv)

    out = Path(args.out)
    if args.report_only:
        saved = json.loads(Path(args.report_only).read_text())
        write_report(out, saved["results"], saved["errors"], saved["info"], Params.make(saved["quick"]),
                     saved["lrs_note"], saved["runtime"])  # fmt: skip
        log(f"rewrote {out} from {args.report_only}")
        return 0
    params = Params.make(args.quick)
    wanted = [s for s in args.only.split(",") if s] or list(SCENARIOS)
    started = time.monotonic()
    info = machine_info()
    load_start = log_load()
    log(f"machine: {info}")
    lrs_exe, lrs_note = (None, "LightRAG Server comparison disabled (--no-lrs)")
    with_lrs = {"ack", "throughput", "ideal", "ideal_distinct", "embed", "bulk", "hotpath"}
    if not args.no_lrs and with_lrs & set(wanted):
        lrs_exe, lrs_note = ensure_venv(log)
    log(lrs_note)

    workdir = Path(tempfile.mkdtemp(prefix="rag-bench-"))
    redis = RedisServer(workdir / "redis").start()
    ctx = Ctx(params, workdir, redis, lrs_exe, log)
    results: dict = {}
    errors: dict[str, str] = {}
    try:
        for name in wanted:
            log(f"scenario {name} ...")
            t0 = time.monotonic()
            try:
                results[name] = SCENARIOS[name](ctx)
            except Exception as exc:  # keep going: the report says which scenario failed and why
                errors[name] = f"{type(exc).__name__}: {exc}"
                log(f"scenario {name} FAILED: {errors[name]}\n{traceback.format_exc()}")
            log(f"scenario {name} took {time.monotonic() - t0:.1f}s")
    finally:
        redis.stop()
        if args.keep or errors:
            log(f"work dir kept: {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)
    runtime = time.monotonic() - started
    (out.parent / "img").mkdir(parents=True, exist_ok=True)
    saved = {"results": results, "errors": errors, "info": info, "quick": args.quick, "lrs_note": lrs_note,
             "runtime": runtime}  # fmt: skip
    if args.results:
        Path(args.results).write_text(json.dumps(saved, default=str))
    base_results = {k: v for k, v in results.items() if k in BASE_SCENARIOS}
    base_errors = {k: v for k, v in errors.items() if k in BASE_SCENARIOS}
    if base_results or base_errors or not out.exists():
        write_report(out, base_results, base_errors, info, params, lrs_note, runtime)
    engine_results = {k: v for k, v in results.items() if k in ENGINE_SCENARIOS}
    engine_errors = {k: v for k, v in errors.items() if k in ENGINE_SCENARIOS}
    if engine_results or engine_errors:
        write_engine_section(out, engine_results, engine_errors, info, args.quick, lrs_note,
                             f"{load_start} at start, {log_load()} at end")  # fmt: skip
    log(f"wrote {out} in {runtime:.0f}s total")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
