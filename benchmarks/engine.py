"""Task-engine overhead: no-op tasks through our TaskStore vs saq, on the same Redis, one process each.

``python -m benchmarks.engine ours|saq --url redis://... --n 10000 --concurrency 32`` prints JSON:
enqueue jobs/s (C concurrent producers) and processed jobs/s (C concurrent workers, no-op body).
For ours a "processed" task is one full ``claim`` (Lua) + ``finish`` (Lua) cycle, i.e. exactly
what the runner does per task besides calling the handler; for saq it is a Worker with
``concurrency=C`` running a no-op function.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
import uuid


async def bench_ours(url: str, n: int, concurrency: int) -> dict:
    import redis.asyncio as aioredis

    from src.tasks.models import Stage, TaskRecord, TaskStatus
    from src.tasks.store import TaskStore

    pool = aioredis.BlockingConnectionPool.from_url(
        url, max_connections=64, timeout=10, decode_responses=True
    )
    client = aioredis.Redis(connection_pool=pool)
    store = TaskStore(
        client,
        prefix=f"bench:{uuid.uuid4().hex[:6]}:",
        ttls={"completed": 3600, "failed": 3600, "cancelled": 3600},
    )
    ids = iter(range(n))

    async def producer() -> None:
        for i in ids:
            now = time.time()
            rec = TaskRecord(
                task_id=store.new_task_id(),
                doc_id=f"d{i}",
                filename=f"{i}.txt",
                created_at=now,
                updated_at=now,
            )
            await store.create(rec)

    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(concurrency)))
    enqueue_s = time.perf_counter() - t0
    done = 0

    async def worker() -> None:
        nonlocal done
        while True:
            task = await store.claim("bench-owner", 30.0)
            if task is None:
                return
            await store.finish(task.task_id, task.attempt, TaskStatus.COMPLETED, result={}, stage=Stage.DONE,
                               progress=100.0)  # fmt: skip
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    process_s = time.perf_counter() - t0
    await client.aclose()
    return {"engine": "ours", "n": n, "processed": done, "enqueue_per_s": n / enqueue_s,
            "processed_per_s": done / process_s}  # fmt: skip


async def bench_saq(url: str, n: int, concurrency: int) -> dict:
    from saq import Queue, Worker

    done = 0
    finished = asyncio.Event()

    async def noop(ctx) -> None:
        nonlocal done
        done += 1
        if done >= n:
            finished.set()

    queue = Queue.from_url(url, name=f"bench-{uuid.uuid4().hex[:6]}")
    await queue.connect()
    ids = iter(range(n))

    async def producer() -> None:
        for _ in ids:
            await queue.enqueue("noop")

    t0 = time.perf_counter()
    await asyncio.gather(*(producer() for _ in range(concurrency)))
    enqueue_s = time.perf_counter() - t0
    worker = Worker(queue, functions=[("noop", noop)], concurrency=concurrency)
    t0 = time.perf_counter()
    runner = asyncio.create_task(worker.start())
    await asyncio.wait_for(finished.wait(), timeout=600)
    process_s = time.perf_counter() - t0
    await worker.stop()
    runner.cancel()
    await queue.disconnect()
    return {"engine": "saq", "n": n, "processed": done, "enqueue_per_s": n / enqueue_s,
            "processed_per_s": done / process_s}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.engine")
    p.add_argument("engine", choices=["ours", "saq"])
    p.add_argument("--url", required=True)
    p.add_argument("--n", type=int, default=10000)
    p.add_argument("--concurrency", type=int, default=32)
    a = p.parse_args(argv)
    fn = bench_ours if a.engine == "ours" else bench_saq
    json.dump(asyncio.run(fn(a.url, a.n, a.concurrency)), sys.stdout)


if __name__ == "__main__":
    main()
