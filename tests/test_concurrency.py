"""No deadlock and no errors under concurrent polls, queries and uploads (bounded by pytest-timeout)."""

from __future__ import annotations

import asyncio
import random

import pytest

from tests.helpers import Service, story, upload, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_polls_and_queries_while_uploads_ingest(service: Service) -> None:
    """Catches a deadlock between ingestion and queries, and queries that answer 200 with nothing
    useful under load (an empty answer, or a knowledge base that lost the seed document)."""
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

    live = {"pending", "processing", "completed"}

    async def poll() -> str | None:
        """None when the poll answered the asked task in a sane state, else what was wrong."""
        task_id = rng.choice(task_ids)
        response = await service.client.get(f"/task/{task_id}")
        body = response.json()
        if response.status_code != 200 or body["task_id"] != task_id or body["status"] not in live:
            return f"{response.status_code} {response.text[:200]}"
        return None

    async def ask(i: int) -> str | None:
        """None when the answer (or, every other time, the retrieved context) names the seed
        document's marker; a 200 with an empty or "no context" answer is a failure too."""
        mode = ["naive", "local", "global", "hybrid", "mix"][i % 5]
        query = {"query": "What did the Seedmarker project study?", "mode": mode}
        if i % 2:
            query["only_need_context"] = True
        response = await service.client.post("/query", json=query)
        if response.status_code != 200 or "Seedmarker" not in response.json()["response"]:
            return f"{mode} {query}: {response.status_code} {response.text[:300]}"
        return None

    polls = [poll() for _ in range(200)]
    queries = [ask(i) for i in range(50)]
    results = await asyncio.gather(*polls, *queries)
    assert [r for r in results[:200] if r] == []
    assert [r for r in results[200:] if r] == []

    finals = await asyncio.gather(*[wait_for_task(service.client, t, timeout=400) for t in task_ids])
    assert [f["status"] for f in finals] == ["completed"] * 20
    stats = (await service.client.get("/api/queue/stats")).json()
    assert stats["counts"]["completed"] == 21 and stats["running_here"] == 0
