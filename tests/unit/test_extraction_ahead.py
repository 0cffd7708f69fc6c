"""`ExtractionAhead` (src/ingestion/prefetch.py) against a real Redis, with a stand-in knowledge
base whose extraction the test holds: what it leases, what it records, and when it stops."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from src.ingestion.prefetch import ExtractionAhead
from src.rag.knowledge import IndexRequest
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class Files:
    def path(self, stored_name: str) -> Path:
        return Path("/nonexistent") / stored_name


class Owns:
    def __init__(self, *tenants: str) -> None:
        self.tenants = set(tenants)

    def owns(self, tenant: str) -> bool:
        return tenant in self.tenants


class Runner:
    running_count = 0
    capacity = 4


class KnowledgeBases:
    """``pre_extract`` waits for ``release`` (or raises ``error``); records what it was asked."""

    def __init__(self, error: BaseException | None = None) -> None:
        self.asked: list[IndexRequest] = []
        self.release = asyncio.Event()
        self.error = error
        self.cancelled = 0

    async def pre_extract(self, tenant: str, request: IndexRequest) -> int:
        self.asked.append(request)
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        if self.error is not None:
            raise self.error
        return 3


async def _queue(store: TaskStore, count: int, tenant: str = "default") -> list[str]:
    ids = []
    for i in range(count):
        created = await store.create(
            record(f"{tenant}{i}", tenant=tenant, created_at=1000.0 + i, sha=f"s{i}")
        )
        ids.append(created.task_id)
    return ids


def _helper(store: TaskStore, kb: KnowledgeBases, owns: Owns | None = None, **kwargs) -> ExtractionAhead:  # noqa: ANN003
    return ExtractionAhead(
        store,
        kb,
        Files(),
        owns or Owns(),
        Runner(),
        "helper",
        max_documents=kwargs.pop("max_documents", 4),
        **kwargs,
    )


async def _until(probe, timeout: float = 10.0) -> None:  # noqa: ANN001
    deadline = asyncio.get_running_loop().time() + timeout
    while not await probe():
        assert asyncio.get_running_loop().time() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


async def test_leases_what_it_has_room_for_and_records_done(store: TaskStore) -> None:
    ids = await _queue(store, 4)
    kb = KnowledgeBases()
    helper = _helper(store, kb, max_documents=2)
    assert await helper.fill() == 2  # room for 2; the head (ids[0]) stays the owner's
    await _until(lambda: asyncio.sleep(0, result=len(kb.asked) == 2))
    assert [r.doc_id for r in kb.asked] == [f"doc-{ids[3]}", f"doc-{ids[2]}"]
    assert await helper.fill() == 0
    kb.release.set()
    await _until(lambda: asyncio.sleep(0, result=helper.running == 0))
    assert helper.extracted == 2 and helper.chunks == 6
    again = await store.lease_prefetch("default", "other", 30)
    assert again is not None and again.task_id == ids[1]  # the extracted ones are not leased again
    assert await store.lease_prefetch("default", "other", 30) is None


async def test_skips_workspaces_it_owns_and_waits_for_its_own_slots(store: TaskStore) -> None:
    await _queue(store, 3, tenant="mine")
    kb = KnowledgeBases()
    assert await _helper(store, kb, Owns("mine")).fill() == 0
    busy = _helper(store, kb)
    busy.runner = Runner()
    busy.runner.running_count = 4  # its own documents use every slot
    assert await busy.fill() == 0
    assert kb.asked == []


@pytest.mark.parametrize(
    ("error", "leased_again"), [(ValueError("not plain text"), False), (RuntimeError("503"), True)]
)
async def test_unsuitable_documents_are_not_tried_again_failed_ones_are(
    store: TaskStore, error: BaseException, leased_again: bool
) -> None:
    await _queue(store, 2)
    kb = KnowledgeBases(error)
    helper = _helper(store, kb)
    assert await helper.fill() == 1
    kb.release.set()
    await _until(lambda: asyncio.sleep(0, result=helper.running == 0))
    assert helper.extracted == 0
    again = await store.lease_prefetch("default", "other", 30)
    assert (again is not None) == leased_again


async def test_a_task_cancelled_meanwhile_stops_its_extraction_and_frees_the_lease(store: TaskStore) -> None:
    ids = await _queue(store, 2)
    kb = KnowledgeBases()
    helper = _helper(store, kb, lease_seconds=0.3)
    assert await helper.fill() == 1
    cancelled = await store.request_cancel(ids[1])
    assert cancelled.accepted
    await _until(lambda: asyncio.sleep(0, result=kb.cancelled == 1))
    await _until(lambda: asyncio.sleep(0, result=helper.running == 0))
    assert not await store.redis.exists(store.keys.prefetch(ids[1]))
    await helper.stop()


async def test_stop_gives_leased_documents_back(store: TaskStore) -> None:
    ids = await _queue(store, 3)
    kb = KnowledgeBases()
    helper = _helper(store, kb)
    helper.start()
    await _until(lambda: asyncio.sleep(0, result=len(kb.asked) == 2))
    await helper.stop()
    assert kb.cancelled == 2
    claimed = [(await store.claim("owner", 60)).task_id for _ in range(3)]
    assert sorted(claimed) == sorted(ids)  # nothing leased any more, nothing marked extracted
