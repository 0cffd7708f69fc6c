"""Ingestion-engine scenarios (issue 10): ratio to the LLM-bound ideal, head-of-line blocking, embedding
calls per document, a 200-document run, and event-loop lag while documents merge.

Each is runnable alone (``python -m benchmarks --only ideal``) and has a quick variant. The ideal is
LLM calls × latency ÷ allowed concurrent LLM calls, never less than one document's chain of calls; the
LLM's idle time comes from the mock's per-call records (start = end − latency of each chat call).
"""

from __future__ import annotations

import datetime as dt
import threading
import time

import httpx

from benchmarks.common import chat_calls, loadgen_background, median, summary_ms
from benchmarks.loadgen import doc_text, doc_text_distinct
from benchmarks.metrics_scrape import ADMIN_TOKEN, delta, loop_lag_p99_ms, scrape

LATENCY = 0.5
#: E1b's documents: one chunk each at the default CHUNK_TOKEN_SIZE, like E1's 5 KB ones.
DISTINCT_DOC_BYTES = 3800
#: ~30 chunks at the default CHUNK_TOKEN_SIZE 1200 (o200k_base: ~5.3 bytes of doc_text per token).
BIG_DOC_BYTES = 176_000


def _sizes(quick: bool) -> dict:
    return {
        "ideal_docs": 40,
        "ideal_repeats": 1 if quick else 3,
        "ideal_configs": (("ours", 16, 16), ("ours", 4, 4), ("lrs", 16, 8), ("lrs", 4, 2)),
        "hol_queued": 30,
        "hol_repeats": 1 if quick else 3,
        "embed_docs": 20,
        "bulk_docs": 200,
        "merge_docs": 20 if quick else 40,
    }


# ------------------------------------------------------------------------------ helpers
def llm_usage(stats: dict, wall: float, allowed: int) -> dict:
    """LLM idle seconds (no chat call in flight) within [0, wall] and mean calls in flight.

    The mock timestamps each call's end (``at``, seconds since its last reset) and its latency; the
    reset is done just before the first upload, so [0, wall] is the run."""
    spans = sorted(
        (max(0.0, r["at"] - r["latency_s"]), min(wall, r["at"]))
        for r in stats.get("calls_detail", [])
        if r.get("endpoint") == "chat" and r.get("status") == 200
    )
    covered = 0.0
    busy_time = 0.0
    cur_s, cur_e = None, None
    for s, e in spans:
        busy_time += max(0.0, e - s)
        if cur_e is None or s > cur_e:
            if cur_e is not None:
                covered += cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    if cur_e is not None:
        covered += cur_e - cur_s
    first = spans[0][0] if spans else float("nan")
    return {
        "idle_s": max(0.0, wall - covered),
        "before_first_call_s": first,
        "mean_in_flight": busy_time / wall if wall > 0 else float("nan"),
        "utilisation": busy_time / wall / allowed if wall > 0 else float("nan"),
    }


def ideal_seconds(stats: dict, docs: int, latency: float, allowed: int) -> float:
    """LLM calls × latency ÷ allowed concurrency, never less than one document's chain of calls."""
    calls = chat_calls(stats)
    kinds = stats.get("kinds", {})
    per_doc_chain = (kinds.get("extract", 0) + kinds.get("glean", 0)) / max(1, docs)
    return max(calls * latency / allowed, per_doc_chain * latency)


def _iso(ts: str | None) -> float | None:
    if not ts:
        return None
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def upload(base: str, name: str, data: bytes, priority: int | None = None) -> str:
    params = {"priority": priority} if priority is not None else None
    r = httpx.post(f"{base}/insert", params=params, files={"file": (name, data, "text/plain")}, timeout=120)
    r.raise_for_status()
    return r.json()["task_id"]


def wait_task(base: str, task_id: str, timeout: float = 600) -> dict:
    deadline = time.monotonic() + timeout
    with httpx.Client(timeout=30) as c:
        while time.monotonic() < deadline:
            body = c.get(f"{base}/task/{task_id}").json()
            if body["status"] in ("completed", "failed", "cancelled"):
                return body
            time.sleep(0.05)
    raise TimeoutError(f"task {task_id} not finished in {timeout}s")


def task_seconds(body: dict) -> float:
    """Upload acknowledged → finished, from the service's own timestamps (no polling granularity)."""
    return _iso(body["finished_at"]) - _iso(body["created_at"])


def _ours(ctx, mock, name: str, max_async: int, slots: int, **env):
    return ctx.service(mock, name, llm_max_async=max_async, max_concurrent_tasks=slots,
                       admin_token=ADMIN_TOKEN, **env)  # fmt: skip


def _stop(system: str, srv) -> None:
    from benchmarks.common import stop_process

    if system == "lrs":
        stop_process(srv.proc, timeout=5)
    else:
        srv.stop()


def ingest_run(ctx, system: str, max_async: int, par: int, docs: list[bytes], latency: float,
               name: str) -> dict:  # fmt: skip
    """Upload ``docs`` concurrently, wait until all are indexed; wall, LLM calls, ideal, idle time."""
    from benchmarks.scenarios import _ingest

    mock = ctx.mock(latency=latency)
    try:
        mock.config(max_recorded_calls=200_000)
        if system == "lrs":
            srv = ctx.lrs(mock, f"{name}-lrs-{max_async}-{par}", max_async, par)
            url = f"{srv.base}/documents/upload"
        else:
            srv = _ours(ctx, mock, f"{name}-{max_async}-{par}", max_async, par)
            url = f"{srv.base}/insert"
        try:
            before = scrape(srv.base) if system == "ours" else {}
            mock.reset()
            mock.config(latency=latency, embedding_latency=0.0)
            wall = _ingest(system, srv, url, docs)
            stats = httpx.get(f"{mock.base}/_mock/stats", params={"include_calls": "true"}, timeout=60).json()
            after = scrape(srv.base) if system == "ours" else {}
        finally:
            _stop(system, srv)
    finally:
        mock.stop()
    ideal = ideal_seconds(stats, len(docs), latency, max_async)
    out = {
        "system": system, "label": f"{system} {max_async}:{par}", "max_async": max_async, "par": par,
        "docs": len(docs), "wall_s": wall, "calls": chat_calls(stats), "kinds": stats.get("kinds", {}),
        "ideal_s": ideal, "ratio": ideal / wall, "docs_per_min": len(docs) / wall * 60,
        "max_in_flight": stats.get("max_in_flight"),
        "embedding_calls": stats.get("calls", {}).get("embeddings"),
        "embedding_texts": stats.get("embedding_inputs"),
        **llm_usage(stats, wall, max_async),
    }  # fmt: skip
    if after:
        lag, n = loop_lag_p99_ms(before, after)
        out["loop_lag_p99_ms"] = lag
        out["loop_lag_samples"] = n
        # Summaries made before a merge (used by it or wasted) and made by a merge under its locks.
        for key, name, labels in (
            ("presummaries_used", "ragsvc_merge_presummaries_total", {"outcome": "used"}),
            ("presummaries_wasted", "ragsvc_merge_presummaries_total", {"outcome": "wasted"}),
            ("locked_summaries", "ragsvc_merge_locked_summaries_total", {}),
        ):
            out[key] = delta(before, after, name, **labels)
    return out


def _table(runs: list[dict]) -> list[dict]:
    table = []
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        row = {k: rs[0][k] for k in ("label", "system", "max_async", "par", "docs")}
        for k in ("wall_s", "calls", "ideal_s", "ratio", "docs_per_min", "idle_s", "before_first_call_s",
                  "mean_in_flight", "utilisation", "loop_lag_p99_ms", "presummaries_used",
                  "presummaries_wasted", "locked_summaries"):  # fmt: skip
            vals = [r[k] for r in rs if r.get(k) is not None]
            row[k] = median(vals) if vals else None
        row["max_in_flight"] = max(r["max_in_flight"] or 0 for r in rs)
        row["repeats"] = len(rs)
        row["walls"] = [round(r["wall_s"], 2) for r in rs]
        table.append(row)
    return table


# ------------------------------------------------------------------------------ 1. ideal
def scenario_ideal(ctx) -> dict:
    """40 documents at 16:16 and 4:4 (LLM_MAX_ASYNC : MAX_CONCURRENT_TASKS), LightRAG Server at its
    MAX_ASYNC : MAX_PARALLEL_INSERT 16:8 and 4:2, mock latency 0.5 s."""
    docs = [doc_text(f"id{i}", 5000) for i in range(_sizes(ctx.p.quick)["ideal_docs"])]
    return _ideal_runs(ctx, docs, "ideal")


def scenario_ideal_distinct(ctx) -> dict:
    """E1 again with documents that share no entity (each name carries the document's own suffix):
    what the engine reaches when merges do not chain on LightRAG's keyed locks."""
    # 3.8 KB: one chunk each, as in E1 (the names' suffixes cost tokens: at 5 KB each made two).
    docs = [doc_text_distinct(i, DISTINCT_DOC_BYTES) for i in range(_sizes(ctx.p.quick)["ideal_docs"])]
    return {**_ideal_runs(ctx, docs, "ideal-distinct"), "distinct": True, "doc_bytes": DISTINCT_DOC_BYTES}


def _ideal_runs(ctx, docs: list[bytes], tag: str) -> dict:
    s = _sizes(ctx.p.quick)
    runs = []
    for rep in range(s["ideal_repeats"]):
        for system, a, par in s["ideal_configs"]:
            if system == "lrs" and ctx.lrs_exe is None:
                continue
            ctx.log(f"  [{tag}] repeat {rep + 1}: {system} {a}:{par}, {len(docs)} docs, L={LATENCY}s")
            runs.append(ingest_run(ctx, system, a, par, docs, LATENCY, tag))
    return {"latency": LATENCY, "docs": len(docs), "runs": runs, "table": _table(runs)}


# ------------------------------------------------------------------------------ 2. head-of-line
def scenario_hol(ctx) -> dict:
    """A small priority-9 document (1) alone, (2) uploaded 1 s after a ~30-chunk document, (3) uploaded
    right after 30 queued priority-1 documents. Factor = its upload→finished time ÷ its time alone."""
    s = _sizes(ctx.p.quick)
    out: dict = {"latency": LATENCY, "runs": []}
    for rep in range(s["hol_repeats"]):
        mock = ctx.mock(latency=LATENCY)
        try:
            srv = _ours(ctx, mock, "hol", 8, 8)  # the service's defaults: LLM_MAX_ASYNC 8, 8 task slots
            try:
                base = srv.base
                small = lambda tag, rep=rep: doc_text(f"hol-small-{tag}-{rep}", 1500)  # noqa: E731
                ctx.log(f"  [hol] repeat {rep + 1}: warm-up, then a small priority-9 document alone")
                wait_task(base, upload(base, "warm.txt", small("warm"), 9))  # lazy start-up not counted
                alone = task_seconds(wait_task(base, upload(base, "alone.txt", small("alone"), 9)))
                ctx.log("  [hol] small priority-9 document 1 s after a 30-chunk document")
                big_id = upload(base, "big.txt", doc_text(f"hol-big-{rep}", BIG_DOC_BYTES), 5)
                time.sleep(1.0)
                behind_big = wait_task(base, upload(base, "after-big.txt", small("big"), 9))
                big = wait_task(base, big_id)
                ctx.log(f"  [hol] small priority-9 document behind {s['hol_queued']} queued priority-1 docs")
                ids = [upload(base, f"low{i}.txt", doc_text(f"hol-low-{rep}-{i}", 5000), 1)
                       for i in range(s["hol_queued"])]  # fmt: skip
                behind_queue = wait_task(base, upload(base, "after-queue.txt", small("queue"), 9))
                low_done = [wait_task(base, t) for t in ids]
                out["runs"].append({
                    "alone_s": alone,
                    "behind_big_s": task_seconds(behind_big),
                    "big_chunks": (big.get("result") or {}).get("chunks_count"),
                    "big_s": task_seconds(big),
                    "behind_queue_s": task_seconds(behind_queue),
                    "low_median_s": median([task_seconds(b) for b in low_done]),
                    "low_status": sorted({b["status"] for b in low_done}),
                })  # fmt: skip
            finally:
                srv.stop()
        finally:
            mock.stop()
    runs = out["runs"]
    out["alone_s"] = median([r["alone_s"] for r in runs])
    out["factor_big"] = median([r["behind_big_s"] / r["alone_s"] for r in runs])
    out["factor_queue"] = median([r["behind_queue_s"] / r["alone_s"] for r in runs])
    out["big_chunks"] = runs[0]["big_chunks"]
    return out


# ------------------------------------------------------------------------------ 3. embedding calls
def scenario_embed(ctx) -> dict:
    """Embedding calls and texts per document for 20 small documents: the service's own counters
    (/metrics before/after) and the mock's count, and LightRAG Server's from the mock."""
    s = _sizes(ctx.p.quick)
    n = s["embed_docs"]
    docs = [doc_text(f"emb{i}", 5000) for i in range(n)]
    out: dict = {"docs": n}
    from benchmarks.scenarios import _ingest

    for system in ("ours", "lrs"):
        if system == "lrs" and ctx.lrs_exe is None:
            continue
        ctx.log(f"  [embed] {system}: {n} documents, LLM latency 0.05 s")
        mock = ctx.mock(latency=0.05)
        try:
            if system == "ours":
                srv = _ours(ctx, mock, "embed", 8, 8)
                url = f"{srv.base}/insert"
            else:
                srv = ctx.lrs(mock, "embed-lrs", 8, 4)
                url = f"{srv.base}/documents/upload"
            try:
                before = scrape(srv.base) if system == "ours" else {}
                mock.reset()
                mock.config(latency=0.05, embedding_latency=0.0)
                _ingest(system, srv, url, docs)
                stats = mock.stats()
                row = {
                    "mock_calls": stats["calls"]["embeddings"],
                    "mock_texts": stats["embedding_inputs"],
                }
                if system == "ours":
                    after = scrape(srv.base)
                    for key, metric in (("metric_calls", "calls"), ("metric_texts", "texts")):
                        name = f"ragsvc_provider_{metric}_total"
                        row[key] = delta(before, after, name, provider="embedding")
                    row["requests_before_batching"] = delta(before, after, "ragsvc_embedding_requests_total")
            finally:
                _stop(system, srv)
        finally:
            mock.stop()
        row["calls_per_doc"] = row["mock_calls"] / n
        row["texts_per_doc"] = row["mock_texts"] / n
        out[system] = row
    return out


# ------------------------------------------------------------------------------ 4. bulk
def scenario_bulk(ctx) -> dict:
    """200 documents at 16 concurrent LLM calls, 0.5 s latency: throughput, ratio."""
    s = _sizes(ctx.p.quick)
    docs = [doc_text(f"bulk{i}", 5000) for i in range(s["bulk_docs"])]
    ctx.log(f"  [bulk] ours 16:16, {len(docs)} docs, L={LATENCY}s")
    runs = [ingest_run(ctx, "ours", 16, 16, docs, LATENCY, "bulk")]
    if ctx.lrs_exe is not None and not ctx.p.quick:
        ctx.log(f"  [bulk] lrs 16:8, {len(docs)} docs")
        runs.append(ingest_run(ctx, "lrs", 16, 8, docs, LATENCY, "bulk"))
    return {"latency": LATENCY, "docs": len(docs), "runs": runs}


# ------------------------------------------------------------------------------ 5. loop lag
def scenario_mergelag(ctx) -> dict:
    """Event-loop lag while documents merge: the service's own sampler (ragsvc_event_loop_lag_seconds,
    sleep overshoot every 100 ms) and an outside probe (GET /health every 10 ms)."""
    s = _sizes(ctx.p.quick)
    n = s["merge_docs"]
    # Shared entity names across documents: every merge touches entities other documents also wrote.
    docs = [doc_text(f"merge{i}", 5000) for i in range(n)]
    mock = ctx.mock(latency=0.05)
    try:
        srv = _ours(ctx, mock, "mergelag", 16, 16)
        try:
            probe = ["probe", "--url", f"{srv.base}/health", "--interval", "0.01"]
            before_idle = scrape(srv.base)
            time.sleep(3.0)
            after_idle = scrape(srv.base)
            idle_p99, idle_n = loop_lag_p99_ms(before_idle, after_idle)
            before = scrape(srv.base)
            ctx.log(f"  [mergelag] {n} documents at 16:16, mock 0.05 s, probing /health every 10 ms")
            with loadgen_background([*probe, "--duration", "600"], srv.workdir) as bg:
                time.sleep(0.3)
                t0 = time.monotonic()
                errors: list[BaseException] = []

                def send(i: int) -> None:
                    try:
                        upload(srv.base, f"m{i}.txt", docs[i])
                    except BaseException as exc:  # reported below
                        errors.append(exc)

                threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
                for t in threads:
                    t.start()
                for t in threads:
                    t.join()
                if errors:
                    raise errors[0]
                from benchmarks.scenarios import wait_ours_done

                wait_ours_done(srv.base, n, timeout=600)
                wall = time.monotonic() - t0
            after = scrape(srv.base)
            p99, samples = loop_lag_p99_ms(before, after)
            probe_res = bg.result  # type: ignore[attr-defined]
        finally:
            srv.stop()
    finally:
        mock.stop()
    return {
        "docs": n, "wall_s": wall, "lag_p99_ms": p99, "lag_samples": samples,
        "idle_lag_p99_ms": idle_p99, "idle_lag_samples": idle_n,
        "probe": summary_ms(probe_res.get("latencies", [])),
    }  # fmt: skip


SCENARIOS = {
    "ideal": scenario_ideal,
    "ideal_distinct": scenario_ideal_distinct,
    "hol": scenario_hol,
    "embed": scenario_embed,
    "bulk": scenario_bulk,
    "mergelag": scenario_mergelag,
}
