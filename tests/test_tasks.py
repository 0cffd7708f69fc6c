"""Task lifecycle: listing, cancel semantics, TTLs, and lease recovery."""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import (
    Service,
    make_settings,
    start_service,
    story,
    upload,
    upload_files,
    wait_for_status,
    wait_for_task,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
async def one_slot(tmp_path, redis_url):
    async with start_service(make_settings(tmp_path, redis_url, max_concurrent_tasks=1)) as svc:
        yield svc


def gate_runner(svc: Service) -> tuple[asyncio.Event, list[str]]:
    """Hold every task at the start of its run until the gate opens; record which tasks ran."""
    gate = asyncio.Event()
    ran: list[str] = []
    handler = svc.services.runner.handler
    real = handler.run

    async def gated(task, report):
        ran.append(task.task_id)
        await gate.wait()
        return await real(task, report)

    handler.run = gated
    return gate, ran


async def test_cancel_pending_task(one_slot: Service) -> None:
    gate, ran = gate_runner(one_slot)
    first = (await upload(one_slot.client, "a.txt", story("tides", "Axolind").encode())).json()
    second = (await upload(one_slot.client, "b.txt", story("wind", "Borrowdane").encode())).json()
    await wait_for_status(one_slot.client, first["task_id"], "processing")
    assert (await one_slot.client.get(f"/task/{second['task_id']}")).json()["status"] == "pending"

    cancelled = await one_slot.client.delete(f"/task/{second['task_id']}")
    assert cancelled.status_code == 200, cancelled.text
    assert cancelled.json()["status"] == "cancelled"
    assert not any(p.name.startswith(second["task_id"]) for p in upload_files(one_slot.settings.uploads_dir))

    gate.set()
    assert (await wait_for_task(one_slot.client, first["task_id"]))["status"] == "completed"
    # The dispatcher gets its chance to (wrongly) pick the cancelled task: a later task runs to the
    # end in the one slot, after which nothing else is queued.
    third = (await upload(one_slot.client, "c.txt", story("fog", "Cairnwell").encode())).json()
    await wait_for_task(one_slot.client, third["task_id"], expect="completed")
    view = (await one_slot.client.get(f"/task/{second['task_id']}")).json()
    assert view["status"] == "cancelled" and view["started_at"] is None
    assert second["task_id"] not in ran
    assert (await one_slot.client.get(f"/documents/{second['doc_id']}")).status_code == 404

    for task in (first, second):
        again = await one_slot.client.delete(f"/task/{task['task_id']}")
        assert again.status_code == 409 and again.json()["code"] == "task_finished"

    redis = one_slot.services.redis.client
    ttl_done = await redis.ttl(f"{one_slot.prefix}task:{first['task_id']}")
    ttl_cancelled = await redis.ttl(f"{one_slot.prefix}task:{second['task_id']}")
    assert one_slot.settings.ttl_completed_seconds - 60 < ttl_done <= one_slot.settings.ttl_completed_seconds
    assert (
        one_slot.settings.ttl_cancelled_seconds - 60
        < ttl_cancelled
        <= one_slot.settings.ttl_cancelled_seconds
    )
    # A cancelled document may be uploaded again.
    again = await upload(one_slot.client, "b.txt", story("wind", "Borrowdane").encode())
    assert again.status_code == 202


async def test_live_tasks_never_expire_and_expired_records_leave_the_indexes(tmp_path, redis_url) -> None:
    """Catches a TTL set on a live task, a final TTL that never fires, and an expired record left in
    the list/count indexes by the sweeper. Waits for the expiry instead of sleeping a fixed time."""
    settings = make_settings(tmp_path, redis_url, ttl_completed_seconds=5, sweep_seconds=0.5)
    async with start_service(settings) as svc:
        body = (await upload(svc.client, "a.txt", story("tides", "Cumberlin").encode())).json()
        key = f"{svc.prefix}task:{body['task_id']}"
        assert await svc.services.redis.client.ttl(key) == -1  # pending: no expiry
        await wait_for_task(svc.client, body["task_id"])
        listed = (await svc.client.get("/tasks", params={"status": "completed"})).json()
        assert listed["total"] == 1
        ttl = await svc.services.redis.client.ttl(key)
        assert 0 < ttl <= 5, ttl

        async def gone() -> bool:
            return (await svc.client.get(f"/task/{body['task_id']}")).status_code == 404

        await wait_until(gone, timeout=30, message="the completed record expiring after its 5 s TTL")

        async def swept() -> bool:
            listed = (await svc.client.get("/tasks")).json()
            counts = (await svc.client.get("/api/queue/stats")).json()["counts"]
            return listed["total"] == 0 and listed["tasks"] == [] and counts["completed"] == 0

        await wait_until(swept, timeout=30, message="the sweeper dropping the expired id from the indexes")


async def test_list_filters_and_pages(one_slot: Service) -> None:
    gate, _ = gate_runner(one_slot)
    ids = []
    for i in range(5):
        ids.append(
            (await upload(one_slot.client, f"{i}.txt", story("x", f"Listo{i}").encode())).json()["task_id"]
        )
    page = (await one_slot.client.get("/tasks", params={"limit": 2, "offset": 0})).json()
    assert page["total"] == 5 and [t["task_id"] for t in page["tasks"]] == ids[::-1][:2]
    page2 = (await one_slot.client.get("/tasks", params={"limit": 2, "offset": 2})).json()
    assert [t["task_id"] for t in page2["tasks"]] == ids[::-1][2:4]
    await wait_for_status(one_slot.client, ids[0], "processing")  # the one slot holds the first
    pending = (await one_slot.client.get("/tasks", params={"status": "pending"})).json()
    assert pending["total"] == 4 and [t["task_id"] for t in pending["tasks"]] == ids[:0:-1], pending
    assert {t["status"] for t in pending["tasks"]} == {"pending"}
    bad = await one_slot.client.get("/tasks", params={"status": "exploded"})
    assert bad.status_code == 422
    # The page size is bounded as the README says (limit <= 500): 500 answers, 501 is a 422.
    assert (await one_slot.client.get("/tasks", params={"limit": 500})).json()["total"] == 5
    for params in ({"limit": 501}, {"limit": 0}, {"offset": -1}):
        refused = await one_slot.client.get("/tasks", params=params)
        assert refused.status_code == 422 and refused.json()["code"], (params, refused.text)
    gate.set()
    for task_id in ids:
        assert (await wait_for_task(one_slot.client, task_id))["status"] == "completed"
    stats = (await one_slot.client.get("/api/queue/stats")).json()
    assert stats["counts"]["completed"] == 5 and stats["pending"] == 0


async def test_expired_lease_is_requeued_and_completed(tmp_path, redis_url) -> None:
    """A task left 'processing' by a dead worker is taken back when its lease runs out."""
    settings = make_settings(tmp_path, redis_url, lease_seconds=2.0, sweep_seconds=0.5)
    async with start_service(settings) as svc:
        store = svc.services.store
        gate, _ = gate_runner(svc)
        await svc.services.runner.stop(grace_seconds=0)  # no worker here for now
        body = (await upload(svc.client, "a.txt", story("tides", "Deadlease").encode())).json()
        claimed = await store.claim("ghost-instance", lease_seconds=1.0)  # a worker that then dies
        assert claimed and claimed.task_id == body["task_id"] and claimed.attempt == 1
        await svc.services.runner.start()

        async def second_attempt_running() -> bool:
            record = await store.get(body["task_id"])
            return record is not None and record.attempt == 2 and record.status == "processing"

        await wait_until(second_attempt_running, timeout=60, message="attempt 2 claimed by the runner")
        # The ghost's late final write, while attempt 2 runs, is refused by the epoch fence...
        from src.tasks.models import FinishOutcome, TaskStatus

        outcome = await store.finish(
            body["task_id"], 1, TaskStatus.FAILED, error="zombie", stage="failed", progress=0
        )
        assert outcome == FinishOutcome.STALE
        gate.set()
        final = await wait_for_task(svc.client, body["task_id"], timeout=60)
        assert final["status"] == "completed" and final["attempt"] == 2
        assert [h["outcome"] for h in final["history"]] == ["lease-expired", "completed"], final
        # ...and after the end by the final state.
        late = await store.finish(
            body["task_id"], 1, TaskStatus.FAILED, error="zombie", stage="failed", progress=0
        )
        assert late == FinishOutcome.ALREADY_FINAL
        assert (await svc.client.get(f"/task/{body['task_id']}")).json()["status"] == "completed"
