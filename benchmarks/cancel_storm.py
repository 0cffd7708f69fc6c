"""Cancel storm (issue 25 item 5): ``python -m benchmarks.cancel_storm [--quick] [--runs 3]``.

The service (``python main.py``, its embedded Redis, a fresh data dir per run) and the mock LLM
(``benchmarks.mock_llm``, ``--latency`` per call) run as processes on this machine. Per run:

1. a one-line document alone: upload to ``completed`` (the reference time);
2. ``--base`` documents that share people and places are indexed (the shared entities a purge has
   to rebuild);
3. ``--docs`` more documents sharing them are uploaded; once ``--merging`` of them reached the
   merge (or finished), every one is cancelled (``DELETE /task/{id}``, a few clients at once) and
   an unrelated one-line document is uploaded meanwhile;
4. measured: from the first DELETE until every cancelled task is terminal (counted with three
   ``GET /tasks?status=`` calls a round, not 300 polls), and the unrelated document's
   upload-to-``completed`` time, against its time alone.

Medians of ``--runs``. ``--service-root`` runs the service from another checkout (e.g. the code
before this change) with the same harness. Writes its own marked block of docs/benchmarks.md
(benchmarks/doc_blocks.py) unless ``--no-write``; also run by ``bash scripts/bench.sh``.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

from benchmarks.common import PY, ROOT, machine_info, stop_process

BEGIN, END = "<!-- cancel-storm:begin -->", "<!-- cancel-storm:end -->"
FINAL = {"completed", "failed", "cancelled"}
TOPICS = ["harbours", "orchards", "glaciers", "deserts", "canals", "forests", "islands", "mines"]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def story(topic: str, marker: str, sentences: int) -> str:
    from tests.helpers import story as make_story

    return make_story(topic, marker, sentences=sentences)


def start_service(
    root: Path, workdir: Path, mock_url: str, args: argparse.Namespace
) -> tuple[subprocess.Popen, str]:
    from tests.helpers import scrubbed_env
    from tests.procs import Listener

    listener = Listener()
    env = scrubbed_env(
        DATA_DIR=str(workdir / "data"),
        HOST="127.0.0.1",
        PORT=str(listener.port),
        LISTEN_FD=str(listener.fd),
        LLM_BASE_URL=mock_url,
        LLM_API_KEY="bench-key",
        LLM_MODEL="mock-model",
        EMBEDDING_PROVIDER="hash",
        MAX_CONCURRENT_TASKS=str(args.max_concurrent),
        LLM_MAX_ASYNC=str(args.llm_max_async),
        MAX_PENDING_TASKS="100000",
        LOG_LEVEL="WARNING",
    )
    with open(workdir / "service.log", "ab") as out:
        proc = subprocess.Popen(
            [PY, "main.py"], cwd=root, env=env, stdout=out, stderr=out, pass_fds=(listener.fd,)
        )
    listener.close()
    url = listener.url
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the service exited with {proc.returncode}; see {workdir / 'service.log'}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code < 500:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_process(proc)
    raise RuntimeError("the service did not answer /health within 180 s")


def upload(client: httpx.Client, name: str, text: str) -> dict:
    response = client.post("/insert", files={"file": (name, text.encode())})
    if response.status_code != 202:
        raise RuntimeError(f"upload of {name}: {response.status_code} {response.text}")
    return response.json()


def views(client: httpx.Client, task_ids: list[str]) -> dict[str, dict]:
    return {t: client.get(f"/task/{t}").json() for t in task_ids}


def live(client: httpx.Client) -> int:
    """Tasks not terminal yet (pending, processing, cancelling): three cheap counts."""
    return sum(
        int(client.get("/tasks", params={"status": status, "limit": 1}).json()["total"])
        for status in ("pending", "processing", "cancelling")
    )


def wait_final(client: httpx.Client, task_ids: list[str], timeout: float, what: str) -> dict[str, dict]:
    deadline = time.monotonic() + timeout
    while True:
        seen = views(client, task_ids)
        if all(v["status"] in FINAL for v in seen.values()):
            return seen
        if time.monotonic() > deadline:
            left = sum(v["status"] not in FINAL for v in seen.values())
            raise RuntimeError(f"{what}: {left} of {len(task_ids)} tasks not terminal after {timeout:.0f} s")
        time.sleep(0.2)


def time_one_line(client: httpx.Client, text: str, timeout: float = 600) -> float:
    started = time.monotonic()
    task = upload(client, "line.txt", text)
    view = wait_final(client, [task["task_id"]], timeout, "one-line document")[task["task_id"]]
    if view["status"] != "completed":
        raise RuntimeError(f"one-line document ended {view['status']}: {view.get('error')}")
    return time.monotonic() - started


def run_once(run: int, root: Path, args: argparse.Namespace) -> dict:
    from tests.procs import start_mock_llm

    workdir = Path(tempfile.mkdtemp(prefix=f"cancel-storm-{run}-"))
    mock = start_mock_llm(args.latency)
    proc = None
    try:
        proc, url = start_service(root, workdir, mock.base_url, args)
        with httpx.Client(base_url=url, timeout=60) as client:
            alone = time_one_line(client, f"Zephyrine{run} Quarry opened in Tromso.")
            log(f"run {run + 1}: one-line document alone {alone:.2f} s")
            base = [
                upload(
                    client,
                    f"base{i}.txt",
                    story(TOPICS[i % len(TOPICS)], f"Base{i:03d}r{run}", args.sentences),
                )
                for i in range(args.base)
            ]
            wait_final(client, [t["task_id"] for t in base], 1800, "base documents")
            log(f"run {run + 1}: {args.base} base documents indexed")
            storm = [
                upload(
                    client,
                    f"storm{i}.txt",
                    story(TOPICS[i % len(TOPICS)], f"Storm{i:03d}r{run}", args.sentences),
                )
                for i in range(args.docs)
            ]
            ids = [t["task_id"] for t in storm]
            uploaded = time.monotonic()
            deadline = uploaded + 600
            while True:
                seen = views(client, ids)
                late = sum(v["stage"] in ("merging", "done") or v["status"] in FINAL for v in seen.values())
                merging = sum(v["stage"] == "merging" and v["status"] not in FINAL for v in seen.values())
                if late >= args.merging or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            log(f"run {run + 1}: cancelling {len(ids)} documents, {merging} merging, {late} merged or later")
            cancels_sent = time.monotonic()
            with concurrent.futures.ThreadPoolExecutor(4) as pool:
                codes = list(pool.map(lambda t: client.delete(f"/task/{t}").status_code, ids))
            unrelated_started = time.monotonic()
            unrelated = upload(client, "unrelated.txt", f"Quillon{run} Barrow ferries cross the Vesterfjord.")
            unrelated_done: float | None = None
            all_final: float | None = None
            deadline = time.monotonic() + args.timeout
            while unrelated_done is None or all_final is None:
                if time.monotonic() > deadline:
                    left = sum(v["status"] not in FINAL for v in views(client, ids).values())
                    raise RuntimeError(
                        f"run {run + 1}: {left} cancelled tasks not terminal after {args.timeout} s"
                    )
                if unrelated_done is None:
                    view = client.get(f"/task/{unrelated['task_id']}").json()
                    if view["status"] in FINAL:
                        if view["status"] != "completed":
                            raise RuntimeError(
                                f"the unrelated document ended {view['status']}: {view.get('error')}"
                            )
                        unrelated_done = time.monotonic() - unrelated_started
                        if os.environ.get("CANCEL_STORM_DEBUG"):
                            log(f"unrelated: {view}")
                if all_final is None and live(client) - (unrelated_done is None) <= 0:
                    # Cheap while it runs (the storm's 300 polls a round loaded the service itself).
                    all_final = time.monotonic() - cancels_sent
                time.sleep(0.1)
            seen = views(client, ids)
            if any(v["status"] not in FINAL for v in seen.values()):
                raise RuntimeError("a storm task is not terminal although no task was live")
            statuses = [v["status"] for v in seen.values()]
            out = {
                "alone": alone,
                "unrelated": unrelated_done,
                "all_final": all_final,
                "merging": merging,
                "late": late,
                "cancelled": statuses.count("cancelled"),
                "completed": statuses.count("completed"),
                "failed": statuses.count("failed"),
                "refused": codes.count(409),
            }
            log(
                f"run {run + 1}: all {len(ids)} terminal {all_final:.1f} s after the first DELETE "
                f"({out['cancelled']} cancelled, {out['completed']} completed, {out['failed']} failed); "
                f"unrelated document {unrelated_done:.2f} s (alone {alone:.2f} s)"
            )
            return out
    finally:
        stop_process(proc)
        stop_process(mock)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--docs", type=int, default=300)
    parser.add_argument("--merging", type=int, default=72, help="cancel once this many reached the merge")
    parser.add_argument("--base", type=int, default=60)
    parser.add_argument("--sentences", type=int, default=30)
    parser.add_argument("--latency", type=float, default=0.3)
    parser.add_argument("--max-concurrent", type=int, default=8)
    parser.add_argument("--llm-max-async", type=int, default=8)
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--service-root", default=str(ROOT), help="checkout whose main.py is benchmarked")
    parser.add_argument("--quick", action="store_true", help="1 run of 100 documents, 24 merging")
    parser.add_argument("--no-write", action="store_true", help="print the block only")
    parser.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    if args.quick:
        args.runs, args.docs, args.merging, args.base = 1, 100, 24, 20
    root = Path(args.service_root).resolve()
    results = [run_once(run, root, args) for run in range(args.runs)]
    block = markdown(results, args, root)
    print(block)
    if not args.no_write:
        from benchmarks.doc_blocks import splice_block

        splice_block(Path(args.out), f"{BEGIN}\n{block}\n{END}", BEGIN, END)


def markdown(results: list[dict], args: argparse.Namespace, root: Path) -> str:
    info = machine_info()
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())

    def med(key: str) -> float:
        return statistics.median(r[key] for r in results)

    def each(key: str, fmt: str = "{:.1f}") -> str:
        return ", ".join(fmt.format(r[key]) for r in results)

    lines = [
        "## Cancel storm (issue 25 item 5)",
        "",
        "`python -m benchmarks.cancel_storm` (also run by `bash scripts/bench.sh`) on "
        f"{info.get('cpu', '?')}, "
        f"{info.get('cores', os.cpu_count())} cores, {info.get('date', '')}, commit {info.get('commit', '?')}"
        + ("" if root == ROOT else f" (service from `{root}`)")
        + f"; load average at the end {load}. The service (`python main.py`, embedded Redis, hash "
        f"embeddings, `MAX_CONCURRENT_TASKS={args.max_concurrent}`, `LLM_MAX_ASYNC={args.llm_max_async}`) "
        f"and the mock LLM ({args.latency} s per call) as processes on this machine. {args.base} documents "
        f"sharing people and places indexed first; then {args.docs} more uploaded and all cancelled once "
        f"{args.merging} had reached the merge, a one-line document uploaded right after the DELETEs. "
        f"{len(results)} run(s), medians (each run in brackets).",
        "",
        "| measure | median | runs |",
        "|---|---|---|",
        f"| documents merging / merged or later at the cancel | {med('merging'):.0f} / {med('late'):.0f} | "
        f"{each('merging', '{:.0f}')} / {each('late', '{:.0f}')} |",
        f"| first DELETE → every one of the {args.docs} tasks terminal | **{med('all_final'):.1f} s** | "
        f"{each('all_final')} |",
        f"| cancelled / completed / failed | {med('cancelled'):.0f} / {med('completed'):.0f} / "
        f"{med('failed'):.0f} | |",
        f"| one-line document during the storm | **{med('unrelated'):.2f} s** | "
        f"{each('unrelated', '{:.2f}')} |",
        f"| the same alone (before the storm) | {med('alone'):.2f} s | {each('alone', '{:.2f}')} |",
        f"| ratio during / alone | {med('unrelated') / med('alone'):.2f} | |",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
