"""Poll hot path (issue 25 item 12): ``python -m benchmarks.poll [--quick]``.

wrk drives ``GET /task/{id}`` at 50 connections against the service (``python main.py``, its
defaults: API key checked, INFO logs) and, in the same run, against a bare Starlette endpoint that
reads the same task hashes from the same Redis (benchmarks/poll_bare.py, under uvicorn with its
defaults). The two alternate, three rounds each; the block reports the medians, the ratio of
requests per second and of p99. Both servers, wrk and Redis share the machine's cores.

Writes its own marked block of docs/benchmarks.md (benchmarks/doc_blocks.py).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from statistics import median

import httpx

from benchmarks.common import PY, ROOT, RedisServer, free_port, machine_info, stop_process, wait_http
from benchmarks.doc_blocks import splice_block
from benchmarks.hotpath import run_wrk

BEGIN, END = "<!-- poll:begin -->", "<!-- poll:end -->"
ADMIN = "poll-bench-admin"
PREFIX = "pollbench:"
CONNECTIONS = 50


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def _env(redis_url: str, port: int, workdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LLM_", "EMBEDDING_", "MAX_"))}
    env.update(
        DATA_DIR=str(workdir / "data"),
        HOST="127.0.0.1",
        PORT=str(port),
        REDIS_URL=redis_url,
        REDIS_PREFIX=PREFIX,
        LLM_PROVIDER="offline",
        EMBEDDING_PROVIDER="hash",
        ADMIN_TOKEN=ADMIN,
    )
    return env


def _start(
    command: list[str], env: dict[str, str], port: int, probe: str, log_path: Path
) -> subprocess.Popen:
    with open(log_path, "ab") as out:
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out)
    wait_http(f"http://127.0.0.1:{port}{probe}", timeout=180, proc=proc)
    return proc


def _tasks(base: str, n: int) -> tuple[str, list[str]]:
    """A tenant with a key and ``n`` completed text tasks; returns the key and the task ids."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    with httpx.Client(base_url=base, timeout=60) as client:
        client.post("/admin/tenants", json={"name": "poller"}, headers=admin).raise_for_status()
        key = client.post("/admin/tenants/poller/keys", json={}, headers=admin).json()["api_key"]
        auth = {"Authorization": f"Bearer {key}"}
        ids = []
        for i in range(n):
            text = f"Poll benchmark document {i}. The orchard at plot {i} grows pears and apples."
            resp = client.post("/insert/text", json={"text": text}, headers=auth)
            resp.raise_for_status()
            ids.append(resp.json()["task_id"])
        deadline = time.monotonic() + 600
        for task_id in ids:
            while client.get(f"/task/{task_id}", headers=auth).json()["status"] != "completed":
                if time.monotonic() > deadline:
                    raise TimeoutError(f"task {task_id} did not complete")
                time.sleep(0.2)
    return key, ids


def measure(workdir: Path, duration: float, rounds: int, n_tasks: int) -> dict:
    redis = RedisServer(workdir / "redis").start()
    ours_port, bare_port = free_port(), free_port()
    ours = bare = None
    try:
        env = _env(redis.url, ours_port, workdir)
        ours = _start([PY, "main.py"], env, ours_port, "/health", workdir / "service.log")
        key, ids = _tasks(f"http://127.0.0.1:{ours_port}", n_tasks)
        bare_cmd = [PY, "-m", "uvicorn", "benchmarks.poll_bare:app", "--host", "127.0.0.1",
                    "--port", str(bare_port)]  # fmt: skip
        bare = _start(bare_cmd, env, bare_port, f"/task/{ids[0]}", workdir / "bare.log")
        paths = [f"/task/{t}" for t in ids]
        headers = {"Authorization": f"Bearer {key}"}
        systems = {"ours": f"http://127.0.0.1:{ours_port}", "bare": f"http://127.0.0.1:{bare_port}"}
        for base in systems.values():
            run_wrk(base, paths, 10, 2, workdir, headers=headers)  # warm-up, not counted
        runs: dict[str, list[dict]] = {name: [] for name in systems}
        for r in range(rounds):
            order = list(systems) if r % 2 == 0 else list(reversed(systems))
            for name in order:
                log(f"  round {r + 1}/{rounds}: {name}, {CONNECTIONS} connections, {duration:g} s")
                res = run_wrk(systems[name], paths, CONNECTIONS, duration, workdir, headers=headers)
                if res["non2xx"] or res["socket_errors"]:
                    failed = f"{res['non2xx']} non-2xx, {res['socket_errors']} socket errors"
                    raise RuntimeError(f"{name}: {failed}")
                runs[name].append(res)
                log(f"    {res['rps']:.0f} req/s, p50 {res['p50_ms']:.1f} ms, p99 {res['p99_ms']:.1f} ms")
    finally:
        stop_process(bare, timeout=10)
        stop_process(ours, timeout=30)
        redis.stop()
    out: dict = {"duration_s": duration, "rounds": rounds, "tasks": n_tasks, "connections": CONNECTIONS}
    for name, results in runs.items():
        out[name] = {
            "rps": median(r["rps"] for r in results),
            "p50_ms": median(r["p50_ms"] for r in results),
            "p99_ms": median(r["p99_ms"] for r in results),
            "runs": [(round(r["rps"]), round(r["p99_ms"], 1)) for r in results],
        }
    out["rps_ratio"] = out["ours"]["rps"] / out["bare"]["rps"]
    out["p99_ratio"] = out["ours"]["p99_ms"] / out["bare"]["p99_ms"]
    return out


def markdown(res: dict, info: dict, load: str) -> str:
    machine = f"{info.get('cpu', '?')}, {info.get('cores', os.cpu_count())} cores"

    def row(label: str, r: dict) -> str:
        runs = ", ".join(f"{rps:,} / {p99:g}" for rps, p99 in r["runs"])
        return f"| {label} | {r['rps']:,.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {runs} |"

    ok = res["rps_ratio"] >= 0.7 and res["p99_ratio"] <= 2.0
    return "\n".join(
        [
            "## Poll hot path: `GET /task/{id}` against a bare endpoint (issue 25 item 12)",
            "",
            f"`python -m benchmarks.poll` (also run by `bash scripts/bench.sh`) on {machine}, "
            f"{info.get('date', '')}, commit {info.get('commit', '?')}; load average at the end {load} "
            "(the machine is shared). wrk, 2 threads, "
            f"{res['connections']} connections, {res['duration_s']:g} s per run over {res['tasks']} "
            f"completed tasks, with an API key; {res['rounds']} runs each, alternating, medians shown. "
            "Bare: a Starlette endpoint under uvicorn (its defaults) doing the same `HGETALL` on the same "
            "Redis and answering it with `json.dumps`. wrk, both servers and Redis share the 2 cores.",
            "",
            "| server | req/s | p50 ms | p99 ms | runs (req/s / p99 ms) |",
            "|---|---|---|---|---|",
            row("service `GET /task/{id}`", res["ours"]),
            row("bare Starlette + `HGETALL`", res["bare"]),
            "",
            f"Ratio: **{res['rps_ratio']:.2f}×** the bare endpoint's requests per second, p99 "
            f"**{res['p99_ratio']:.2f}×** its p99 (target: ≥ 0.70× and ≤ 2×: "
            f"{'met' if ok else 'not met'}).",
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.poll")
    ap.add_argument("--quick", action="store_true", help="5 s runs instead of 15 s")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    if shutil.which("wrk") is None:
        log("wrk not installed (Debian package `wrk`): poll benchmark skipped")
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-poll-") as tmp:
        res = measure(Path(tmp), 5.0 if args.quick else 15.0, 3, 50)
    log(f"poll: {res}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    splice_block(Path(args.out), f"{BEGIN}\n{markdown(res, machine_info(), load)}\n{END}", BEGIN, END)
    return 0


if __name__ == "__main__":
    sys.exit(main())
