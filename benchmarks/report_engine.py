"""The ingestion-engine / hot-path section of docs/benchmarks.md (issues 10, 12, 16).

Raw results are merged into docs/benchmarks-engine.json scenario by scenario (each keeps its own
date, commit, mode and load average), so scenarios can be run separately and the section still shows
all of them. The section sits between two markers near the top of docs/benchmarks.md; everything else
in that file (the older sections) is left as it is.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from benchmarks.doc_blocks import splice_block  # noqa: E402

START = "<!-- engine-bench:start -->"
END = "<!-- engine-bench:end -->"


def f(x, nd: int = 1) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def who(label: str) -> str:
    return label.replace("ours", "this service").replace("lrs", "LightRAG Server")


def _stamp(entry: dict) -> str:
    i = entry["info"]
    mode = "quick" if entry["quick"] else "full"
    return f"{i['date']}, commit `{i['commit']}`, {mode} mode, load average (1/5/15 min) {entry['load']}"


def _ideal(r: dict) -> list[str]:
    distinct = (
        ["Every capitalised name carries the document's own letter suffix, so no two documents merge the",
         "same entity (in E1 all of them share ~8 entities and ~7 relations, whose merges chain on",
         "LightRAG's keyed locks).", ""]
        if r.get("distinct") else []
    )  # fmt: skip
    L = distinct + [
        f"{r['docs']} documents × {f(r.get('doc_bytes', 5000) / 1000, 1)} KB (one chunk each), mock LLM "
        f"{r['latency']} s per call. *A:T* is",
        "LLM_MAX_ASYNC : MAX_CONCURRENT_TASKS for this service, MAX_ASYNC : MAX_PARALLEL_INSERT for",
        "LightRAG Server (as in the throughput section). Ideal = LLM calls × latency ÷ A, never less than",
        "one document's chain of calls; ratio = ideal ÷ measured wall (1.0 = the LLM never waits for us).",
        "LLM idle = seconds of the run with no chat call in flight (from the mock's per-call timestamps);",
        "mean in flight = busy call-seconds ÷ wall.",
        "",
        "| system A:T | runs | wall s | LLM calls | ideal s | **ratio** | LLM idle s | first call at s "
        "| mean in flight | max in flight | loop lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for t in r["table"]:
        L.append(
            f"| {who(t['label'])} | {t['repeats']} | {f(t['wall_s'])} | {f(t['calls'], 0)} "
            f"| {f(t['ideal_s'])} "
            f"| **{f(t['ratio'], 2)}** | {f(t['idle_s'])} | {f(t['before_first_call_s'], 2)} "
            f"| {f(t['mean_in_flight'])} | {f(t['max_in_flight'])} | {f(t.get('loop_lag_p99_ms'))} |"
        )
    return L + [""]


def _plot_ratios(store: dict, img: Path) -> str | None:
    """Ratio to the LLM-bound ideal per configuration (E1 and E4), this service beside LightRAG Server."""
    rows = [(f"{who(t['label'])}\n{t['docs']} docs", t["ratio"], t["system"])
            for key, tkey in (("ideal", "table"), ("bulk", "runs"))
            for t in ((store.get(key) or {}).get("result") or {}).get(tkey, [])]  # fmt: skip
    if not rows:
        return None
    fig, ax = plt.subplots(figsize=(9, 3.8))
    colors = ["tab:blue" if s == "ours" else "tab:orange" for _, _, s in rows]
    ax.bar(range(len(rows)), [r for _, r, _ in rows], color=colors)
    for i, (_, v, _) in enumerate(rows):
        ax.text(i, v, f"{v:.2f}", ha="center", va="bottom", fontsize=8)
    ax.axhline(0.9, color="green", linestyle="--", linewidth=1, label="goal 0.9")
    ax.set_xticks(range(len(rows)), [n for n, _, _ in rows], fontsize=7)
    ax.set_ylabel("LLM-bound ideal / measured")
    ax.set_ylim(0, 1.1)
    ax.legend()
    ax.set_title("Ingestion vs the LLM-bound ideal (mock LLM 0.5 s/call)")
    fig.tight_layout()
    fig.savefig(img / "engine_ratio.png", dpi=110)
    plt.close(fig)
    return "img/engine_ratio.png"


def _hol(r: dict) -> list[str]:
    runs = r["runs"]
    L = [
        f"Service defaults (LLM_MAX_ASYNC 8, 8 task slots), mock {r['latency']} s per call. A small",
        "(1.5 KB) priority-9 document: alone (after one uncounted warm-up document), uploaded 1 s after a",
        f"{f(r.get('big_chunks'))}-chunk priority-5 document, and uploaded right after 30 priority-1",
        "documents of 5 KB. Times are upload acknowledged → task finished, from the task's own timestamps.",
        "Goal: ≤ 1.3×.",
        "",
        "| case | small doc s (median) | factor vs alone |",
        "|---|---|---|",
        f"| alone | {f(r['alone_s'], 2)} | 1.0× |",
        f"| 1 s after a {f(r.get('big_chunks'))}-chunk document | "
        f"{f(sorted(x['behind_big_s'] for x in runs)[len(runs) // 2], 2)} | **{f(r['factor_big'], 2)}×** |",
        f"| behind 30 queued priority-1 documents | "
        f"{f(sorted(x['behind_queue_s'] for x in runs)[len(runs) // 2], 2)} "
        f"| **{f(r['factor_queue'], 2)}×** |",
        "",
        f"For scale: the big document took {f(runs[0]['big_s'])} s; the priority-1 documents a median "
        f"of {f(runs[0]['low_median_s'])} s each (runs: {len(runs)}).",
        "",
    ]
    return L


def _embed(r: dict) -> list[str]:
    o, lr = r.get("ours", {}), r.get("lrs", {})
    L = [
        f"{r['docs']} documents × 5 KB, mock LLM 0.05 s. Calls and texts counted by the mock (both servers)",
        "and by this service's own counters on /metrics",
        '(`ragsvc_provider_calls_total{provider="embedding"}`, `ragsvc_provider_texts_total{provider=',
        '"embedding"}`, `ragsvc_embedding_requests_total` = LightRAG\'s '
        "requests before micro-batching), before/after.",
        "",
        "| server | embedding calls | texts | calls / doc | texts / doc "
        "| (metrics: calls / texts / requests) |",
        "|---|---|---|---|---|---|",
        f"| this service | {f(o.get('mock_calls'))} | {f(o.get('mock_texts'))} | {f(o.get('calls_per_doc'))} "
        f"| {f(o.get('texts_per_doc'))} | {f(o.get('metric_calls'), 0)} / {f(o.get('metric_texts'), 0)} / "
        f"{f(o.get('requests_before_batching'), 0)} |",
    ]
    if lr:
        L.append(
            f"| LightRAG Server | {f(lr.get('mock_calls'))} | {f(lr.get('mock_texts'))} | "
            f"{f(lr.get('calls_per_doc'))} | {f(lr.get('texts_per_doc'))} | – |"
        )
    return L + [""]


def _bulk(r: dict) -> list[str]:
    L = [
        f"{r['docs']} documents × 5 KB at 16 concurrent LLM calls, mock {r['latency']} s per call.",
        "",
        "| system A:T | wall s | docs/min | LLM calls | ideal s | **ratio** | LLM idle s | mean in flight "
        "| loop lag p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t in r["runs"]:
        L.append(
            f"| {who(t['label'])} | {f(t['wall_s'])} | {f(t['docs_per_min'], 0)} | {f(t['calls'])} "
            f"| {f(t['ideal_s'])} | **{f(t['ratio'], 2)}** | {f(t['idle_s'])} | {f(t['mean_in_flight'])} "
            f"| {f(t.get('loop_lag_p99_ms'))} |"
        )
    return L + [""]


def _mergelag(r: dict) -> list[str]:
    pr = r["probe"]
    return [
        f"{r['docs']} documents × 5 KB uploaded at once (16:16, mock 0.05 s), indexed in {f(r['wall_s'])} s.",
        "The service's own sampler (`ragsvc_event_loop_lag_seconds`: sleep overshoot every 100 ms;",
        "p99 estimated from histogram buckets) and, from outside, GET /health every 10 ms. Goal ≤ 20 ms.",
        "",
        "| measure | p50 ms | p99 ms | max ms | samples |",
        "|---|---|---|---|---|",
        f"| loop lag, idle (3 s before) | – | {f(r['idle_lag_p99_ms'])} | – | {r['idle_lag_samples']} |",
        f"| **loop lag while documents merge** | – | **{f(r['lag_p99_ms'])}** | – | {r['lag_samples']} |",
        f"| GET /health latency (outside probe) | {f(pr['p50'])} | {f(pr['p99'])} | {f(pr['max'])} "
        f"| {pr['n']} |",
        "",
    ]


def _hotpath(r: dict) -> list[str]:
    if r.get("skipped"):
        return [f"Skipped: {r['skipped']}.", ""]
    L = [
        f"`wrk -t2 -cN -d{r['duration_s']:.0f}s` over the status URLs of 50 finished tasks (round robin),",
        "wrk on the same 2 cores. *busy*: 20 documents of 5 KB uploaded just before wrk starts (8 task",
        "slots, LLM_MAX_ASYNC 8, mock latency chosen so they are still ingesting when wrk ends).",
        "Our endpoint: `GET /task/{id}`; LightRAG Server's: `GET /documents/track_status/{track_id}`.",
        "Goal (ours): ≥ 3,000 req/s and p99 ≤ 20 ms at 50 connections idle; p99 ≤ 50 ms busy.",
        "",
        "| server | ingestion | connections | req/s | p50 ms | p90 ms | p99 ms | max ms | errors |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for sysname, key in (("this service", "ours"), ("LightRAG Server", "lrs")):
        rows = r.get(key) or {}
        if rows.get("skipped"):
            L.append(f"| {sysname} | {rows['skipped']} | | | | | | | |")
            continue
        for phase in ("idle", "busy"):
            for c in (10, 50):
                x = rows.get(f"{phase}_{c}")
                if not x:
                    continue
                errs = x["socket_errors"] + x["non2xx"]
                L.append(
                    f"| {sysname} | {phase} | {c} | **{f(x['rps'], 0)}** | {f(x['p50_ms'])} "
                    f"| {f(x['p90_ms'])} "
                    f"| **{f(x['p99_ms'])}** | {f(x['max_ms'])} | {errs} |"
                )
    prof = r.get("profile") or {}
    if prof.get("self"):
        L += [
            "",
            f"py-spy profile of this service at 50 connections, idle ingestion ({prof['samples']} samples, "
            "200 Hz, non-blocking). Top functions by own time (share of all samples):",
            "",
            "| function | self % |",
            "|---|---|",
        ]
        L += [f"| `{k}` | {v} |" for k, v in prof["self"][:15]]
        L += ["", "Inclusive (function on the stack):", "", "| function | incl % |", "|---|---|"]
        L += [f"| `{k}` | {v} |" for k, v in prof["inclusive"][:25]]
    elif prof.get("skipped"):
        L += ["", f"Profile skipped: {prof['skipped']}."]
    return L + [""]


SECTIONS = (
    ("ideal", "E1. Ingestion vs the LLM-bound ideal (40 documents)", _ideal),
    ("ideal_distinct", "E1b. The same, documents that share no entity", _ideal),
    ("hol", "E2. Head-of-line: a small priority-9 document", _hol),
    ("embed", "E3. Embedding calls and texts per document", _embed),
    ("bulk", "E4. 200 documents at 16 concurrent LLM calls", _bulk),
    ("mergelag", "E5. Event-loop lag while documents merge", _mergelag),
    ("hotpath", "E6. Hot path: GET /task/{id} under wrk", _hotpath),
)


def render(store: dict, img: Path) -> list[str]:
    L = [
        START,
        "## Ingestion engine and hot path (issues 10, 12)",
        "",
        "Generated by `python -m benchmarks --only ideal,ideal_distinct,hol,embed,bulk,mergelag,hotpath`",
        "(`--quick`: one repeat each; raw results in `docs/benchmarks-engine.json`; each scenario below",
        "says when, on which commit and in which mode it ran, and the machine's load average then — the",
        "2 cores are shared with other work,",
        "so a high load average inflates every latency and deflates every ratio).",
        "The numbered sections 1–7 further down come from a run of their own (machine, date and commit",
        "in their table).",
        "",
    ]
    png = _plot_ratios(store, img)
    if png:
        L += [f"![ratio to the ideal]({png})", ""]
    for key, title, fn in SECTIONS:
        entry = store.get(key)
        if not entry:
            continue
        L += [f"### {title}", "", f"*{_stamp(entry)}.*", ""]
        if entry.get("error"):
            L += [f"Failed in that run: `{entry['error']}`", ""]
            continue
        L += fn(entry["result"])
    L += [END]
    return L


def write_engine_section(out: Path, results: dict, errors: dict, info: dict, quick: bool, lrs_note: str,
                         load: str) -> None:  # fmt: skip
    store_path = out.parent / "benchmarks-engine.json"
    store = json.loads(store_path.read_text()) if store_path.exists() else {}
    for k, v in results.items():
        store[k] = {"result": v, "info": info, "quick": quick, "load": load, "lrs_note": lrs_note}
    for k, v in errors.items():
        store[k] = {"error": v, "info": info, "quick": quick, "load": load, "lrs_note": lrs_note}
    store_path.write_text(json.dumps(store, indent=1, default=str) + "\n")
    img = out.parent / "img"
    img.mkdir(parents=True, exist_ok=True)
    splice_block(out, "\n".join(render(store, img)), START, END)
