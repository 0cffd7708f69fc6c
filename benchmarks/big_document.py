"""One big text file beside small documents (issue 25 item 8): ``python -m benchmarks.big_document``.

The service runs on its offline defaults (e5 embeddings, the extractive LLM stand-in; ``--mock``
uses the mock LLM/embedding server instead). Per run:

1. alone: 16 one-line documents uploaded at once; seconds from upload to ``completed`` each.
2. beside: a generated text file of ``--mb`` MB (default 99; every line numbered, so no two
   chunks are alike) is uploaded; once its task runs, waves of the same 16 one-line documents
   for ``--window`` seconds (through its reading, chunking, embedding and extraction).
   Meanwhile ``/health`` is asked every 100 ms (latency p50/p99/max), the service's own loop-lag
   sampler is read (``ragsvc_event_loop_lag_seconds``, p99) and its RSS sampled (peak).
3. cancel: the big task is cancelled once the waves are done; seconds until it reports ``cancelled``,
   16 more one-line documents uploaded at the cancel (their seconds), RSS a few seconds after.

Medians over ``--runs``. Writes its own marked block of docs/benchmarks.md (``--out``) and prints it;
also run by ``bash scripts/bench.sh``. ``--mb 20 --runs 1`` for quick iteration (``--no-doc``:
print only).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import ROOT, Mock, RedisServer, RssSampler, Service, machine_info, pct
from benchmarks.doc_blocks import splice_block
from benchmarks.metrics_scrape import loop_lag_p99_ms, scrape
from src.client.transport import KEEPALIVE_EXPIRY_SECONDS

BEGIN, END = "<!-- big-document:begin -->", "<!-- big-document:end -->"
SMALL_DOCS = 16
FINAL = ("completed", "failed", "cancelled")
WORDS = (
    "Donghu Street inspector Wang Fang checked hydrant drainage pipe at Xingfu residential area "
    "while Li Ming of the Wuhan water bureau reviewed the report on flooding near Qingshan Park"
).split()


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def write_big_text(path: Path, megabytes: float) -> int:
    """A text file of about ``megabytes`` MB: numbered lines of varied words (no two chunks alike)."""
    target = int(megabytes * 1_000_000)
    n = len(WORDS)
    written = 0
    line_no = 0
    with path.open("w", encoding="utf-8") as out:
        while written < target:
            lines = []
            for _ in range(1000):
                line_no += 1
                k = line_no % n
                words = " ".join(WORDS[(k + j * 7) % n] for j in range(12))
                lines.append(f"Record {line_no}: {words}.\n")
            block = "".join(lines)
            out.write(block)
            written += len(block)
    return path.stat().st_size


class HealthProbe:
    """Asks ``/health`` every ``interval`` s and keeps each answer's latency."""

    def __init__(self, client: httpx.AsyncClient, interval: float = 0.1) -> None:
        self.client = client
        self.interval = interval
        self.latencies: list[float] = []
        self.errors = 0
        self._task: asyncio.Task | None = None

    async def _run(self) -> None:
        while True:
            t = time.perf_counter()
            try:
                r = await self.client.get("/health", timeout=30)
                if r.status_code >= 500:
                    self.errors += 1
            except httpx.HTTPError:
                self.errors += 1
            elapsed = time.perf_counter() - t
            self.latencies.append(elapsed)
            await asyncio.sleep(max(0.0, self.interval - elapsed))

    def start(self) -> HealthProbe:
        self.latencies, self.errors = [], 0
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> dict:
        assert self._task is not None
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        ms = [x * 1000 for x in self.latencies]
        return {
            "n": len(ms),
            "p50": pct(ms, 50),
            "p99": pct(ms, 99),
            "max": max(ms, default=float("nan")),
            "errors": self.errors,
        }


def wave_code(tag: str) -> str:
    """A capitalised word of the wave's own (its tag's digits as letters): the names of its people,
    hydrants and street, so no two waves merge into the same entities."""
    return "".join(chr(ord("a") + int(d)) for d in tag if d.isdigit())[-6:].capitalize() or "Solo"


async def small_wave(client: httpx.AsyncClient, tag: str, limit: float) -> dict:
    """16 one-line documents uploaded at once; seconds from each upload to its final status.

    Every wave names its own people, hydrants and street, so a wave is the same work whenever it
    runs. Waves sharing names (as before) merged into ever longer descriptions of the same
    entities, each merge re-embedding them: without any big file, the eighth wave of the same 16
    documents took 3-4x the first, and the ratio below measured that growth, not the big file."""
    started: dict[str, float] = {}
    codes: list[int] = []
    code = wave_code(tag)

    async def upload(n: int) -> None:
        text = f"Note {tag}-{n}: inspector Zhao {code}{n} checked hydrant {code}{n} at {code} Street.\n"
        t = time.perf_counter()
        r = await client.post("/insert", files={"file": (f"note-{tag}-{n}.txt", text.encode())})
        codes.append(r.status_code)
        if r.status_code == 202:
            started[r.json()["task_id"]] = t

    await asyncio.gather(*(upload(n) for n in range(SMALL_DOCS)))
    done: dict[str, float] = {}
    statuses: dict[str, str] = {}
    #: stage -> seconds after the upload when a poll first saw a task in it (median over tasks)
    seen: dict[str, dict[str, float]] = {}
    deadline = time.perf_counter() + limit
    while len(done) < len(started) and time.perf_counter() < deadline:
        for task_id in [t for t in started if t not in done]:
            view = (await client.get(f"/task/{task_id}")).json()
            stage = f"{view.get('status')}/{view.get('stage')}"
            seen.setdefault(task_id, {}).setdefault(stage, time.perf_counter() - started[task_id])
            if view.get("status") in FINAL:
                done[task_id] = time.perf_counter() - started[task_id]
                statuses[task_id] = view["status"]
        await asyncio.sleep(0.1)
    # A document still unfinished at the deadline counts with the deadline (a lower bound).
    seconds = sorted([*done.values(), *[limit] * (len(started) - len(done))])
    stages: dict[str, list[float]] = {}
    for firsts in seen.values():
        for stage, at in firsts.items():
            stages.setdefault(stage, []).append(at)
    return {
        "stages": {
            k: round(statistics.median(v), 1) for k, v in sorted(stages.items(), key=lambda kv: min(kv[1]))
        },
        "codes": sorted(set(codes)),
        "accepted": len(started),
        "completed": sum(1 for s in statuses.values() if s == "completed"),
        "unfinished": len(started) - len(done),
        "seconds": seconds,
        "median_s": statistics.median(seconds) if seconds else float("nan"),
        "max_s": max(seconds, default=float("nan")),
    }


async def wait_status(client: httpx.AsyncClient, task_id: str, wanted: tuple[str, ...], limit: float) -> dict:
    deadline = time.perf_counter() + limit
    while True:
        view = (await client.get(f"/task/{task_id}")).json()
        if view.get("status") in wanted or time.perf_counter() > deadline:
            return view
        await asyncio.sleep(0.05)


def upload_big(base: str, path: Path) -> dict:
    with httpx.Client(base_url=base, timeout=300) as client, path.open("rb") as fh:
        r = client.post("/insert", files={"file": ("big.txt", fh, "text/plain")})
        r.raise_for_status()
        return r.json()


def _merge_waves(waves: list[dict]) -> dict:
    """Several waves as one: the median over all their documents, the worst max, the counts."""
    return {
        "waves": len(waves),
        "median_s": statistics.median(x for w in waves for x in w["seconds"]),
        "max_s": max(w["max_s"] for w in waves),
        "accepted": sum(w["accepted"] for w in waves),
        "completed": sum(w["completed"] for w in waves),
        "unfinished": sum(w["unfinished"] for w in waves),
        "codes": sorted({c for w in waves for c in w["codes"]}),
        "stages": waves[len(waves) // 2]["stages"],
    }


async def run_once(service: Service, big: Path, limit: float, window: float) -> dict:
    out: dict = {}
    # Idle connections dropped before the server's 5 s keep-alive closes them (src/client/transport.py).
    limits = httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS)
    async with httpx.AsyncClient(base_url=service.base, timeout=60, limits=limits) as client:
        # 1. alone
        probe = HealthProbe(client).start()
        before = scrape(service.base)
        out["alone"] = await small_wave(client, f"alone{time.monotonic_ns() % 10**6}", limit)
        out["alone_health"] = await probe.stop()
        out["alone_lag_p99_ms"], _ = loop_lag_p99_ms(before, scrape(service.base))
        log(f"alone: {out['alone']}")

        # 2. beside the big file
        idle_rss = service.rss()
        with RssSampler(service.proc.pid, interval=0.1) as rss:
            probe = HealthProbe(client).start()
            before = scrape(service.base)
            t0 = time.perf_counter()
            accepted = await asyncio.to_thread(upload_big, service.base, big)
            out["big_upload_s"] = time.perf_counter() - t0
            big_id = accepted["task_id"]
            await wait_status(client, big_id, ("processing", *FINAL), 120)
            # Waves of 16, one after the other, for `window` seconds: through the big task's reading,
            # chunking, embedding and extraction alike.
            window_end = time.perf_counter() + window
            waves = []
            while time.perf_counter() < window_end or not waves:
                waves.append(await small_wave(client, f"beside{time.monotonic_ns() % 10**6}", limit))
                view = (await client.get(f"/task/{big_id}")).json()
                log(f"wave {len(waves)}: {waves[-1]} big {view.get('stage')}")
                if view.get("status") in FINAL:
                    break
            out["beside"] = _merge_waves(waves)
            out["big_stage_after"] = f"{view.get('status')}/{view.get('stage')} {view.get('progress')}%"
            out["beside_health"] = await probe.stop()
            out["beside_lag_p99_ms"], out["beside_lag_samples"] = loop_lag_p99_ms(
                before, scrape(service.base)
            )
            log(f"beside: {out['beside']} big {out['big_stage_after']} health {out['beside_health']}")

            # 3. cancel it
            probe = HealthProbe(client).start()
            t0 = time.perf_counter()
            r = await client.delete(f"/task/{big_id}")
            out["cancel_code"] = r.status_code
            wave = asyncio.create_task(small_wave(client, f"after{time.monotonic_ns() % 10**6}", limit))
            view = await wait_status(client, big_id, FINAL, 120)
            out["cancel_s"] = time.perf_counter() - t0
            out["cancel_status"] = view.get("status")
            out["after"] = await wave
            out["after_health"] = await probe.stop()
        await asyncio.sleep(3)
        out["rss_idle_mib"] = idle_rss / 2**20
        out["rss_peak_mib"] = rss.peak / 2**20
        out["rss_after_cancel_mib"] = service.rss() / 2**20
        log(
            f"after cancel: {out['after']} cancel {out['cancel_s']:.1f}s "
            f"rss {out['rss_after_cancel_mib']:.0f}"
        )
    return out


def run(args: argparse.Namespace, workdir: Path) -> list[dict]:
    big = workdir / "big.txt"
    size = write_big_text(big, args.mb)
    log(f"big file: {size:,} bytes")
    redis = RedisServer(workdir / "redis").start()
    mock = Mock(workdir)
    if args.mock:
        mock.start()
        env = {}
    else:  # offline defaults: e5 embeddings and the extractive stand-in, in the service's process
        env = {"LLM_BASE_URL": "", "LLM_API_KEY": "", "EMBEDDING_BASE_URL": "", "EMBEDDING_API_KEY": ""}
    results = []
    try:
        for n in range(args.runs):
            service = Service(workdir / f"svc{n}", redis.url, mock, env_extra=env)
            try:
                service.start()
                result = asyncio.run(run_once(service, big, args.timeout, args.window))
                result["bytes"] = size
                results.append(result)
            finally:
                service.stop()
                redis.flush()
    finally:
        mock.stop()
        redis.stop()
    return results


def _med(results: list[dict], *path: str) -> float:
    values = []
    for r in results:
        v = r
        for key in path:
            v = v[key]
        values.append(float(v))
    return statistics.median(values)


def markdown(results: list[dict], args: argparse.Namespace) -> str:
    info = machine_info()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    size = results[0]["bytes"]

    def runs(*path: str, fmt: str = "{:.1f}") -> str:
        values = []
        for r in results:
            v = r
            for key in path:
                v = v[key]
            values.append(fmt.format(float(v)))
        return f"**{fmt.format(_med(results, *path))}** ({', '.join(values)})"

    ratio = [r["beside"]["median_s"] / r["alone"]["median_s"] for r in results]
    rows = [
        (
            "16 one-line documents alone: median / max s",
            f"{runs('alone', 'median_s')} / {runs('alone', 'max_s')}",
        ),
        (
            "16 one-line documents beside the big file: median / max s",
            f"{runs('beside', 'median_s')} / {runs('beside', 'max_s')}",
        ),
        (
            "beside / alone (median; goal ≤ 2)",
            f"**{statistics.median(ratio):.2f}** ({', '.join(f'{x:.2f}' for x in ratio)})",
        ),
        ("waves of 16 beside it (in the window) / unfinished (timeout)",
         f"{runs('beside', 'waves', fmt='{:.0f}')} / {runs('beside', 'unfinished', fmt='{:.0f}')}"),
        ("`/health` beside: p50 / p99 / max ms (goal p99 ≤ 100)",
         f"{runs('beside_health', 'p50', fmt='{:.0f}')} / {runs('beside_health', 'p99', fmt='{:.0f}')} / "
         f"{runs('beside_health', 'max', fmt='{:.0f}')}"),
        ("`/health` alone: p99 ms", runs("alone_health", "p99", fmt="{:.0f}")),
        ("event-loop lag p99 beside / alone ms",
         f"{runs('beside_lag_p99_ms', fmt='{:.0f}')} / {runs('alone_lag_p99_ms', fmt='{:.0f}')}"),
        ("service RSS idle → peak MiB",
         f"{runs('rss_idle_mib', fmt='{:.0f}')} → {runs('rss_peak_mib', fmt='{:.0f}')}"),
        ("cancel → `cancelled` s", runs("cancel_s")),
        ("16 one-line documents uploaded at the cancel: median / max s",
         f"{runs('after', 'median_s')} / {runs('after', 'max_s')}"),
        ("`/health` after the cancel: p99 ms", runs("after_health", "p99", fmt="{:.0f}")),
        ("service RSS 3 s after the cancel MiB", runs("rss_after_cancel_mib", fmt="{:.0f}")),
    ]  # fmt: skip
    mode = (
        "the mock LLM and embedding server (`--mock`)"
        if args.mock
        else "offline defaults (e5 embeddings and the extractive LLM stand-in in the service's process)"
    )
    stages = "; ".join(r["big_stage_after"] for r in results)
    return "\n".join(
        [
            "## A big text file beside one-line documents (issue 25 item 8)",
            "",
            f"`python -m benchmarks.big_document` (also run by `bash scripts/bench.sh`) on "
            f"{info.get('cpu', '?')}, {info.get('cores', os.cpu_count())} cores, {info.get('date', '')}, "
            f"commit {info.get('commit', '?')}; load average at the end {load} (the machine is shared "
            f"with other work: figures are noisy). {mode}. A generated {size / 1e6:.0f} MB text file "
            f"(numbered lines) is uploaded; once its task runs, waves of 16 one-line documents (each "
            f"uploaded at once, the next wave when the last is done) for {args.window:g} s; `/health` is "
            f"asked every 100 ms throughout; then the big task is cancelled and 16 "
            f"more are uploaded. Medians of {len(results)} run(s) in bold, each run in brackets. The "
            f"big task when the 16 beside it were done: {stages}.",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.big_document")
    ap.add_argument("--mb", type=float, default=99.0, help="size of the big text file in MB")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--quick", action="store_true", help="one run")
    ap.add_argument(
        "--mock", action="store_true", help="mock LLM/embedding server instead of offline defaults"
    )
    ap.add_argument("--timeout", type=float, default=300.0, help="seconds a wave of 16 may take")
    ap.add_argument("--window", type=float, default=90.0, help="seconds of waves beside the big file")
    ap.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks.md")
    ap.add_argument("--json", default="", help="also write the raw results here")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    if args.quick:
        args.runs = 1
    with tempfile.TemporaryDirectory(prefix="bench-big-") as tmp:
        results = run(args, Path(tmp))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1))
    block = markdown(results, args)
    print(block)
    if not args.no_doc:
        splice_block(Path(args.out), f"{BEGIN}\n{block}\n{END}", BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
