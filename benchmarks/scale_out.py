"""Throughput of ONE workspace on 1, 2 and 3 instances: the LLM concurrency capped per instance
(LLM_MAX_ASYNC), the mock LLM answering each call after a fixed latency, PostgreSQL storages and
one Redis. Documents share entities (the same people and places), so the merges are real work.
By default (extraction ahead, src/ingestion/prefetch.py) the instances that do not own the workspace
extract its waiting documents into the shared LLM cache and the owner merges them; ``--guests`` has
them index documents whole, merges included (INDEX_ANYWHERE, src/tasks/runner.py +
src/ingestion/graph_locks.py); ``--distinct`` gives every document entities of its own.

    python -m benchmarks.scale_out [--runs 3] [--docs 40] [--latency 0.5] [--llm-max-async 4]

Wall time from the first upload to the last completion, medians of ``--runs``, the instance counts
side by side in each run; the speed-up against one instance and the LLM calls made (exactly one
extraction per chunk is checked on every run). Writes its own marked block of docs/benchmarks.md
(``--out``) with a plot of throughput against instances (docs/img/scale_out.png) and prints it;
also run by ``bash scripts/bench.sh``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import httpx


def run_once(
    root: Path, redis_url: str, pg: dict[str, str], instances: int, args: argparse.Namespace
) -> dict:
    from tests.procs import start_mock_llm, stop_process
    from tests.test_scale_instances import Fleet, fresh_database, make_tenant, mock_kinds, upload, wait_final

    mock = start_mock_llm(args.latency)
    fleet = Fleet(
        root,
        redis_url,
        fresh_database(pg),
        mock,
        LLM_MAX_ASYNC=str(args.llm_max_async),
        MAX_CONCURRENT_TASKS=str(args.llm_max_async),
        ENTITY_EXTRACT_MAX_GLEANING="1",
        INDEX_ANYWHERE="true" if args.guests else "false",
        EXTRACT_AHEAD="true",
    )
    try:
        fleet.start(instances)
        base = fleet.any_base()
        headers = make_tenant(base, "acme")
        tag = uuid.uuid4().hex[:4]
        started = time.monotonic()
        tasks = [
            upload(base, headers, f"doc{i}.txt", document(i, tag, distinct=args.distinct))
            for i in range(args.docs)
        ]
        views = wait_final(fleet, [(headers, t["task_id"]) for t in tasks], timeout=1800)
        wall = time.monotonic() - started
        statuses = [v["status"] for v in views.values()]
        assert statuses == ["completed"] * len(tasks), statuses
        chunks = sum(
            int(
                httpx.get(f"{base}/documents/{t['doc_id']}", headers=headers, timeout=30).json()[
                    "chunks_count"
                ]
            )
            for t in tasks
        )
        kinds = mock_kinds(mock)
        assert kinds["extract"] == chunks, f"{kinds['extract']} extraction calls for {chunks} chunks"
        logs = [(root / f"{name}.log").read_text(errors="replace") for name in fleet.procs]
        helped = sum(log.count("ahead of its owner") for log in logs)
        done = [line for log in logs for line in log.splitlines() if " completed in " in line]
        guests = sum("as a guest" in line for line in done)
        calls = sum(int(v) for v in kinds.values())
        out = {"wall": wall, "calls": calls, "helped": helped, "guests": guests, "kinds": dict(kinds)}
        return {**out, "docs": args.docs}
    finally:
        fleet.stop()
        stop_process(mock)


#: The proper names of tests.docs_factory.story: shared by every document unless --distinct.
STORY_NAMES = (
    "Maria Costa", "Daniel Weber", "Northwind Institute", "University of Coimbra", "Lisbon", "Porto",
    "Portugal", "Researchers", "Observation",
)  # fmt: skip


def document(i: int, tag: str, *, distinct: bool) -> str:
    """Document ``i``: the same people and places as every other one, or (``distinct``) its own."""
    from tests.docs_factory import story

    text = story(f"topic {i}", f"Scaleout{i}x{tag}", 8)
    if distinct:
        # The suffix starts with a capital letter: the mock's extraction takes capitalised word runs,
        # so a suffix led by a digit (the hex tag often is) was dropped and the names were shared.
        for name in STORY_NAMES:
            text = text.replace(name, f"{name} D{tag.upper()}{i}")
    return text


def main() -> None:
    from tests.conftest import start_redis_server
    from tests.pg import acquire_server, release_server
    from tests.procs import stop_process

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--latency", type=float, default=0.5)
    parser.add_argument("--llm-max-async", type=int, default=4)
    parser.add_argument("--instances", default="1,2,3")
    parser.add_argument("--guests", action="store_true", help="INDEX_ANYWHERE=true (prints only)")
    parser.add_argument("--quick", action="store_true", help="1 run of 24 documents")
    parser.add_argument(
        "--distinct", action="store_true", help="documents name entities of their own (prints only)"
    )
    parser.add_argument(
        "--out", default=str(Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md")
    )
    args = parser.parse_args()
    if args.quick:
        args.runs, args.docs = 1, 24
    counts = [int(n) for n in args.instances.split(",")]
    root = Path(tempfile.mkdtemp(prefix="scale-out-"))
    (root / "redis").mkdir()
    redis_proc, redis_url = start_redis_server(root / "redis")
    pg = acquire_server()
    results: dict[int, list[dict]] = {n: [] for n in counts}
    try:
        for run in range(args.runs):
            for n in counts:  # side by side in each run: the machine's noise hits every count alike
                workdir = root / f"run{run}-n{n}"
                workdir.mkdir()
                out = run_once(workdir, redis_url, pg, n, args)
                results[n].append(out)
                print(
                    f"run {run + 1}, {n} instance(s): {out['wall']:.1f} s, {out['calls']} LLM calls, "
                    f"{out['guests']} document(s) indexed by guests, {out['helped']} extracted ahead",
                    flush=True,
                )
    finally:
        release_server()
        stop_process(redis_proc)
    block = markdown(results, counts, args)
    print(block)
    if not args.guests and not args.distinct:  # the reference configuration; other runs only print
        from benchmarks.doc_blocks import splice_block

        plot(results, counts, Path(args.out).parent / "img" / "scale_out.png")
        splice_block(Path(args.out), f"{BEGIN}\n{block}\n{END}", BEGIN, END)


def plot(results: dict[int, list[dict]], counts: list[int], path: Path) -> None:
    """Documents per minute against instances (medians), beside linear scaling from one instance."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    docs = statistics.median(r.get("docs", 0) or 0 for r in results[counts[0]]) or None
    rate = [60.0 * (docs or 1) / statistics.median(r["wall"] for r in results[n]) for n in counts]
    fig, ax = plt.subplots(figsize=(5.5, 3.6))
    ax.plot(counts, rate, marker="o", label="measured (median)")
    ax.plot(counts, [rate[0] * n / counts[0] for n in counts], linestyle="--", color="grey", label="linear")
    for n, r in zip(counts, rate, strict=True):
        ax.annotate(f"{r / rate[0]:.2f}x", (n, r), textcoords="offset points", xytext=(6, -12), fontsize=8)
    ax.set_xticks(counts)
    ax.set_xlabel("instances (LLM_MAX_ASYNC=4 each)")
    ax.set_ylabel("documents per minute")
    ax.set_title("One workspace on several instances")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


BEGIN, END = "<!-- scale-out:begin -->", "<!-- scale-out:end -->"


def markdown(results: dict[int, list[dict]], counts: list[int], args: argparse.Namespace) -> str:
    from benchmarks.common import machine_info

    info = machine_info()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    base = statistics.median(r["wall"] for r in results[counts[0]])
    lines = [
        "## One workspace on several instances (issue 27 item 1)",
        "",
        f"`python -m benchmarks.scale_out` (also run by `bash scripts/bench.sh`) on {info.get('cpu', '?')}, "
        f"{info.get('cores', os.cpu_count())} cores, {info.get('date', '')}, "
        f"commit {info.get('commit', '?')}; "
        f"load average at the end {load}. One tenant (one workspace), {args.docs} one-chunk documents "
        + (
            "that name entities of their own"
            if args.distinct
            else "that share entities (the same people and places)"
        )
        + ", uploaded to one instance; PostgreSQL 18 + "
        "pgvector storages, one Redis; the mock LLM answers each call after "
        f"{args.latency} s; `LLM_MAX_ASYNC={args.llm_max_async}` and `MAX_CONCURRENT_TASKS="
        f"{args.llm_max_async}` per instance, gleaning on. Wall time from the first upload to the last "
        f"completion; {args.runs} run(s), the instance counts side by side in each run, medians. Every run "
        "checks one extraction call per chunk at the mock. "
        + (
            "Guests: every instance indexes documents whole (`INDEX_ANYWHERE=true`)."
            if args.guests
            else "Extraction ahead (the default): the owner merges every document."
        ),
        "",
        "| instances | wall (median; runs) | speed-up vs 1 | LLM calls | LLM-bound ideal | ratio to ideal | "
        f"documents {'indexed by guests' if args.guests else 'extracted ahead'} |",
        "|---|---|---|---|---|---|---|",
    ]
    for n in counts:
        walls = [r["wall"] for r in results[n]]
        wall = statistics.median(walls)
        calls = statistics.median(r["calls"] for r in results[n])
        ideal = calls * args.latency / (args.llm_max_async * n)
        helped = statistics.median(r["guests"] if args.guests else r["helped"] for r in results[n])
        shown = ", ".join(f"{w:.1f}" for w in walls)
        lines.append(
            f"| {n} | {wall:.1f} s ({shown}) | **{base / wall:.2f}x** | {calls:.0f} | "
            f"{ideal:.1f} s | {ideal / wall:.2f} | {helped:.0f} |"
        )
    lines += ["", "![throughput against instances](img/scale_out.png)", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
