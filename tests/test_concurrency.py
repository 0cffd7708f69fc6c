"""No deadlock and no errors under concurrent polls, queries and uploads (bounded by pytest-timeout)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.helpers import Service, story, upload, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_polls_and_queries_while_uploads_ingest(service: Service) -> None:
    seed = (await upload(service.client, "seed.txt", story("tides", "Seedmarker").encode())).json()
    await wait_for_task(service.client, seed["task_id"])

    uploads = await asyncio.gather(
        *[
            upload(service.client, f"doc{i}.txt", story(f"topic {i}", f"Concur{i}x", 10).encode())
            for i in range(20)
        ]
    )
    assert all(r.status_code == 202 for r in uploads), [r.text for r in uploads if r.status_code != 202]
    task_ids = [r.json()["task_id"] for r in uploads]

    rng = random.Random(7)

    async def poll() -> int:
        return (await service.client.get(f"/task/{rng.choice(task_ids)}")).status_code

    async def ask(i: int) -> int:
        mode = ["naive", "local", "global", "hybrid", "mix"][i % 5]
        response = await service.client.post(
            "/query", json={"query": "What did the Seedmarker project study?", "mode": mode}
        )
        return response.status_code

    polls = [poll() for _ in range(200)]
    queries = [ask(i) for i in range(50)]
    results = await asyncio.gather(*polls, *queries)
    assert results[:200] == [200] * 200
    assert results[200:] == [200] * 50

    finals = await asyncio.gather(*[wait_for_task(service.client, t, timeout=400) for t in task_ids])
    assert [f["status"] for f in finals] == ["completed"] * 20
    stats = (await service.client.get("/api/queue/stats")).json()
    assert stats["counts"]["completed"] == 21 and stats["running_here"] == 0
