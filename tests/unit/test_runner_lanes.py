"""The runner's query lane (src/tasks/runner.py): its own dispatcher and slots beside the ingestion
lane, free of the ingestion ownership gate. Real Redis, the scripted fake handler of test_runner."""

from __future__ import annotations

import pytest

from src.tasks.models import TaskStatus
from src.tasks.runner import TaskRunner
from src.tasks.store import TaskStore
from tests.unit.helpers import query_record, record
from tests.unit.test_runner import FakeHandler, _config, wait_final, wait_until

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


class NothingClaimable:
    """An ownership gate that owns no workspace (another instance ingests everything)."""

    def claimable(self) -> list[str] | None:
        return []

    async def acquire_more(self, pending: list[str], running: dict[str, int], free_slots: int) -> bool:
        return False


async def test_a_query_runs_while_every_ingestion_slot_is_held(store: TaskStore) -> None:
    """Catches query tasks dispatched from the documents' slots: with MAX_CONCURRENT_TASKS documents
    blocked, a query still completes, and the blocked documents are not counted as queries."""
    handler = FakeHandler(default="block")
    handler.script["q"] = ["ok"]
    for i in range(3):
        await store.create(record(f"d{i}"))
    runner = TaskRunner(store, handler, _config(max_concurrent=2, max_concurrent_queries=1), "inst-1")
    await runner.start()
    try:
        await wait_until(lambda: runner.running_count == 2, what="both ingestion slots busy")
        await store.create(query_record("q"))
        runner.notify()
        done = await wait_final(store, "q")
        assert done.status == TaskStatus.COMPLETED and runner.running_count == 2
        assert (await store.get("d2")).status == TaskStatus.PENDING
    finally:
        handler.release.set()
        await runner.stop(grace_seconds=5)


async def test_queries_ignore_the_ingestion_ownership_gate(store: TaskStore) -> None:
    """Catches the workspace-ownership gate applied to queries: an instance that owns no workspace
    must still answer query tasks (they only read), and still claim no document."""
    handler = FakeHandler()
    await store.create(record("doc"))
    await store.create(query_record("q"))
    config = _config(max_concurrent_queries=2)
    runner = TaskRunner(store, handler, config, "inst-1", gate=NothingClaimable())
    await runner.start()
    try:
        assert (await wait_final(store, "q")).status == TaskStatus.COMPLETED
        assert (await store.get("doc")).status == TaskStatus.PENDING
    finally:
        await runner.stop(grace_seconds=0)


async def test_without_query_slots_the_runner_claims_no_query(store: TaskStore) -> None:
    """Catches a runner configured without a query lane (max_concurrent_queries=0) taking queries
    into its ingestion slots."""
    handler = FakeHandler()
    await store.create(query_record("q"))
    await store.create(record("doc"))
    runner = TaskRunner(store, handler, _config(), "inst-1")
    await runner.start()
    try:
        assert (await wait_final(store, "doc")).status == TaskStatus.COMPLETED
        assert (await store.get("q")).status == TaskStatus.PENDING and handler.runs["q"] == 0
    finally:
        await runner.stop(grace_seconds=0)
