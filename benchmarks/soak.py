"""Soak benchmark: steady mixed load for N minutes while the knowledge base grows.

``python -m benchmarks.soak [--minutes 30] [--quick] [--storages embedded,lightrag]``

Load (defaults follow issue 16): 2 uploads of 5 KB per second on a fixed schedule, 5 pollers at
10 GET /task per second each, one offline /query (naive, context only) per second, against a mock
OpenAI-compatible LLM at 0.05 s per call. Every ``--sample`` seconds it records, for the window
since the previous sample: upload ack p50/p99, GET /task p99, query p50, the service's own
event-loop lag p99 (from its /metrics histogram), RSS, backlog (pending + running tasks) and the
number of documents in the knowledge base. Writes a PNG under docs/img and a section of
docs/benchmarks.md (between ``<!-- soak:begin -->`` and ``<!-- soak:end -->``).

``embedded`` = the service's defaults (SQLite storages, group commit); ``lightrag`` = the same
service on LightRAG Server's file storages (LIGHTRAG_*_STORAGE=Json/NanoVectorDB/NetworkX).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import shutil
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import ADMIN_HEADERS, ROOT, Mock, RedisServer, Service, machine_info, pct
from benchmarks.doc_blocks import splice_block
from benchmarks.loadgen import doc_text

LIGHTRAG_FILE_STORAGES = {
    "LIGHTRAG_KV_STORAGE": "JsonKVStorage",
    "LIGHTRAG_VECTOR_STORAGE": "NanoVectorDBStorage",
    "LIGHTRAG_GRAPH_STORAGE": "NetworkXStorage",
    "LIGHTRAG_DOC_STATUS_STORAGE": "JsonDocStatusStorage",
}
LAG_METRIC = "ragsvc_event_loop_lag_seconds_bucket"


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _lag_buckets(text: str) -> dict[float, float]:
    out: dict[float, float] = {}
    for m in re.finditer(rf'^{LAG_METRIC}{{[^}}]*le="([^"]+)"[^}}]*}} ([0-9.e+]+)$', text, re.M):
        le = float("inf") if m.group(1) == "+Inf" else float(m.group(1))
        out[le] = out.get(le, 0.0) + float(m.group(2))
    return out


def _hist_pct(before: dict[float, float], after: dict[float, float], p: float) -> float | None:
    """Upper bound (s) of the bucket holding the p-th percentile of observations in the window."""
    edges = sorted(after)
    deltas = [after[e] - before.get(e, 0.0) for e in edges]
    total = deltas[-1] if deltas else 0.0
    if total <= 0:
        return None
    for e, cum in zip(edges, deltas, strict=True):
        if cum >= total * p / 100:
            return e
    return edges[-1]


def _ms(values: list[float], p: float) -> float | None:
    return round(pct(values, p) * 1000, 1) if values else None


async def run_load(
    base: str, pid: int, minutes: float, sample_s: float, rate: float, size: int
) -> list[dict]:
    """Drive the mixed load and return one sample per window."""
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    acks: list[float] = []
    task_gets: list[float] = []
    queries: list[float] = []
    errors = {"upload": 0, "task": 0, "query": 0}
    task_ids: list[str] = []
    samples: list[dict] = []
    end = time.monotonic() + minutes * 60
    proc = psutil.Process(pid)

    async with httpx.AsyncClient(base_url=base, timeout=60, limits=limits) as client:

        async def upload_one(i: int) -> None:
            body = doc_text(f"soak{i}", size)
            t0 = time.perf_counter()
            try:
                r = await client.post("/insert", files={"file": (f"soak{i}.txt", body, "text/plain")})
                acks.append(time.perf_counter() - t0)
                if r.status_code == 202:
                    task_ids.append(r.json()["task_id"])
                else:
                    errors["upload"] += 1
            except httpx.HTTPError:
                errors["upload"] += 1

        async def uploader() -> None:
            start, i, inflight = time.monotonic(), 0, set()
            while time.monotonic() < end:
                due = start + i / rate
                await asyncio.sleep(max(0.0, due - time.monotonic()))
                t = asyncio.create_task(upload_one(i))  # fixed schedule: a slow ack does not slow the rate
                inflight.add(t)
                t.add_done_callback(inflight.discard)
                i += 1
            await asyncio.gather(*inflight)

        async def poller(seed: int) -> None:
            rnd = random.Random(seed)
            while time.monotonic() < end:
                await asyncio.sleep(0.1)
                if not task_ids:
                    continue
                tid = task_ids[-1 - min(len(task_ids) - 1, int(rnd.expovariate(1 / 20)))]
                t0 = time.perf_counter()
                try:
                    r = await client.get(f"/task/{tid}")
                    task_gets.append(time.perf_counter() - t0)
                    errors["task"] += r.status_code != 200
                except httpx.HTTPError:
                    errors["task"] += 1

        async def querier() -> None:
            words = ["hydrogen turbine", "Lisbon storage grid", "Maria Costa report", "solar survey"]
            while time.monotonic() < end:
                await asyncio.sleep(1.0)
                t0 = time.perf_counter()
                try:
                    r = await client.post(
                        "/query",
                        json={"query": random.choice(words), "mode": "naive", "only_need_context": True},
                    )
                    queries.append(time.perf_counter() - t0)
                    errors["query"] += r.status_code != 200
                except httpx.HTTPError:
                    errors["query"] += 1

        async def sampler() -> None:
            lag_before = _lag_buckets((await client.get("/metrics", headers=ADMIN_HEADERS)).text)
            t_start = time.monotonic()
            while time.monotonic() < end:
                await asyncio.sleep(sample_s)
                window = (acks[:], task_gets[:], queries[:])
                acks.clear(), task_gets.clear(), queries.clear()
                lag_after = _lag_buckets((await client.get("/metrics", headers=ADMIN_HEADERS)).text)
                stats = (await client.get("/api/queue/stats")).json()
                lag = _hist_pct(lag_before, lag_after, 99)
                lag_before = lag_after
                counts = stats.get("counts", {})
                sample = {
                    "t_s": round(time.monotonic() - t_start, 1),
                    "uploaded": len(task_ids),
                    "docs": int(counts.get("completed", 0)),
                    "backlog": int(stats.get("pending", 0)) + int(stats.get("running", 0)),
                    "ack_p50_ms": _ms(window[0], 50),
                    "ack_p99_ms": _ms(window[0], 99),
                    "task_p99_ms": _ms(window[1], 99),
                    "query_p50_ms": _ms(window[2], 50),
                    "lag_p99_ms": None if lag is None else round(lag * 1000, 1),
                    "rss_mb": round(proc.memory_info().rss / 2**20, 1),
                    "load1": round(os.getloadavg()[0], 1),  # a busy machine explains outliers
                    "errors": dict(errors),
                }
                samples.append(sample)
                log(json.dumps(sample))

        await asyncio.gather(uploader(), querier(), sampler(), *(poller(i) for i in range(5)))
    return samples


def run_one(storages: str, args: argparse.Namespace) -> list[dict]:
    workdir = Path(tempfile.mkdtemp(prefix=f"rag-soak-{storages}-"))
    redis = RedisServer(workdir / "redis").start()
    mock = Mock(workdir, latency=args.llm_latency).start()
    env = {"MAX_CONCURRENT_TASKS": str(args.max_concurrent_tasks), "MAX_PENDING_TASKS": "100000"}
    if storages == "lightrag":
        env.update(LIGHTRAG_FILE_STORAGES)
    service = Service(workdir / "svc", redis.url, mock, env_extra=env).start()
    minutes = args.lightrag_minutes if storages == "lightrag" and args.lightrag_minutes else args.minutes
    try:
        log(f"soak [{storages}] for {minutes} min at {service.base}")
        return asyncio.run(
            run_load(service.base, service.proc.pid, minutes, args.sample, args.rate, args.size)
        )
    finally:
        service.stop()
        mock.stop()
        redis.stop()
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)


def plot(results: dict[str, list[dict]], png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [
        ("ack_p99_ms", "upload ack p99 (ms)"),
        ("task_p99_ms", "GET /task p99 (ms)"),
        ("query_p50_ms", "query p50 (ms)"),
        ("lag_p99_ms", "event-loop lag p99 (ms, bucket bound)"),
        ("rss_mb", "RSS (MB)"),
        ("backlog", "backlog (tasks)"),
    ]
    fig, axes = plt.subplots(2, 3, figsize=(13, 7))
    for ax, (key, title) in zip(axes.flat, keys, strict=True):
        for name, samples in results.items():
            pts = [(s["docs"], s[key]) for s in samples if s.get(key) is not None]
            if pts:
                ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=name)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("documents in the KB")
        ax.grid(alpha=0.3)
    axes.flat[0].legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=90)
    plt.close(fig)


def markdown(
    results: dict[str, list[dict]], args: argparse.Namespace, png: Path, out: Path, machine: dict[str, str]
) -> str:
    rel = png.relative_to(out.parent) if png.is_relative_to(out.parent) else png
    minutes = f"{args.minutes:g} min"
    if args.lightrag_minutes and "lightrag" in results:
        minutes += f" (`lightrag`: {args.lightrag_minutes:g} min)"
    lines = [
        "## Soak: latency while the knowledge base grows",
        "",
        f"*{machine['date']}, commit `{machine['commit']}`, {machine['cpu']} × {machine['cores']} cores, "
        f"{machine['ram_gib']} GiB, Python {machine['python']}, Redis {machine['redis']}.*",
        "",
        f"`{' '.join(['python -m benchmarks.soak', *args.argv])}`: {minutes}, "
        f"{args.rate:g} uploads/s of {args.size // 1000} KB, 5 pollers × 10 GET /task/s, 1 offline query/s "
        f"(naive, context only), mock LLM {args.llm_latency:g} s/call, "
        f"MAX_CONCURRENT_TASKS={args.max_concurrent_tasks}. `embedded` = SQLite storages with group commit "
        "(the default); `lightrag` = LightRAG Server's JSON/NanoVectorDB/NetworkX files.",
        "",
        f"![soak]({rel})",
        "",
    ]
    for name, samples in results.items():
        lines += [
            f"**{name}**",
            "",
            "| t (s) | docs in KB | backlog | ack p50 / p99 (ms) | GET /task p99 | query p50 "
            "| loop lag p99 | RSS MB | load avg |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        step = max(1, len(samples) // 12)
        for s in samples[::step] + ([samples[-1]] if samples and (len(samples) - 1) % step else []):
            lines.append(
                f"| {s['t_s']:g} | {s['docs']} | {s['backlog']} | {s['ack_p50_ms']} / {s['ack_p99_ms']} | "
                f"{s['task_p99_ms']} | {s['query_p50_ms']} | ≤ {s['lag_p99_ms']} | {s['rss_mb']} "
                f"| {s.get('load1')} |"
            )
        if len(samples) >= 2 and samples[-1]["docs"] > samples[0]["docs"]:
            per_k = (
                (samples[-1]["rss_mb"] - samples[0]["rss_mb"])
                / (samples[-1]["docs"] - samples[0]["docs"])
                * 1000
            )
            lines += [
                "",
                f"RSS growth ≈ {per_k:.0f} MB per 1,000 documents; errors: {samples[-1]['errors']}.",
            ]
        lines.append("")
    return "\n".join(lines)


def write_section(out: Path, section: str) -> None:
    begin, end = "<!-- soak:begin -->", "<!-- soak:end -->"
    splice_block(out, f"{begin}\n{section}\n{end}", begin, end)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    ap.add_argument("--minutes", type=float, default=30.0)
    ap.add_argument("--quick", action="store_true", help="3 minutes, a sample every 15 s")
    ap.add_argument("--sample", type=float, default=30.0, help="seconds per sample window")
    ap.add_argument("--rate", type=float, default=2.0, help="uploads per second")
    ap.add_argument("--size", type=int, default=5000, help="bytes per document")
    ap.add_argument("--llm-latency", type=float, default=0.05)
    ap.add_argument("--max-concurrent-tasks", type=int, default=8)
    ap.add_argument(
        "--lightrag-minutes",
        type=float,
        default=0.0,
        help="a shorter run for the LightRAG-file-storages comparison (default: --minutes)",
    )
    ap.add_argument("--storages", default="embedded,lightrag", help="comma list: embedded, lightrag")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--png", default=str(ROOT / "docs" / "img" / "soak.png"))
    ap.add_argument("--results", default="", help="also save raw samples (JSON) here")
    ap.add_argument("--keep", action="store_true", help="keep the work dirs")
    args = ap.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    machine = machine_info()
    if args.quick:
        args.minutes, args.sample = 3.0, 15.0
    results = {name: run_one(name, args) for name in args.storages.split(",") if name}
    if args.results:
        Path(args.results).write_text(json.dumps(results, indent=1))
    out, png = Path(args.out), Path(args.png)
    plot(results, png)
    write_section(out, markdown(results, args, png, out, machine))
    log(f"wrote {png} and the soak section of {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
