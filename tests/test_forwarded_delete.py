"""A deletion forwarded to the workspace's owner (src/ingestion/knowledge.py): what the instance
that received it answers when the owner does the work, fails it, or never gets to it. Real Redis,
the real task store and event hub; the owner is played by this test (claim + finish)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import pytest

from src.ingestion.errors import DeleteFailed, DeleteTimedOut
from src.ingestion.knowledge import KnowledgeService
from src.rag.errors import WorkspaceOwnedElsewhere
from src.rag.knowledge import PurgeOutcome
from src.tasks.fanout import TaskEventHub
from src.tasks.models import Stage, TaskKind, TaskStatus
from src.tasks.store import TaskStore
from tests.helpers import make_settings
from tests.unit.conftest import make_store, redis, store  # noqa: F401  (fixtures)

pytestmark = pytest.mark.integration


class OwnedElsewhere:
    """A knowledge base this instance may read but not write (another instance owns it)."""

    def check_writable(self) -> None:
        pass

    async def document(self, tenant: str, doc_id: str) -> object:
        return object()

    async def purge(self, tenant: str, doc_id: str, *, delete_llm_cache: bool = False) -> object:
        raise WorkspaceOwnedElsewhere("owned elsewhere")


async def owner_does(tasks: TaskStore, status: TaskStatus, result: dict | None = None) -> str:
    """Play the owner: claim the forwarded purge task and end it with ``status``."""
    for _ in range(200):
        claimed = await tasks.claim("owner", 30)
        if claimed is not None:
            assert claimed.kind == TaskKind.PURGE and claimed.purge_doc_id == "doc-1" and claimed.doc_id == ""
            stage = Stage.DONE if status == TaskStatus.COMPLETED else Stage.FAILED
            done = dict(result=result, error="boom", stage=stage, progress=100.0)
            await tasks.finish(claimed.task_id, claimed.attempt, status, **done)
            return claimed.task_id
        await asyncio.sleep(0.05)
    raise AssertionError("no purge task was queued")


@pytest.fixture
async def service(tmp_path: Path, redis_url: str, make_store: Callable[..., TaskStore]):  # noqa: F811
    tasks = make_store()
    events = TaskEventHub(tasks, max_per_tenant=4, queue_size=16, max_waiters=8, recheck_seconds=0.2)
    await events.start()
    settings = make_settings(tmp_path, redis_url, query_timeout_seconds=1.5)
    yield KnowledgeService(settings, tasks, OwnedElsewhere(), events), tasks  # type: ignore[arg-type]
    await events.stop()


async def test_the_owner_deletes_and_the_receiver_answers(service) -> None:
    knowledge, tasks = service
    owner = asyncio.create_task(
        owner_does(tasks, TaskStatus.COMPLETED, {"doc_id": "doc-1", "outcome": "success", "message": ""})
    )
    removed = await knowledge.delete_document("default", "doc-1")
    await owner
    assert removed.outcome == PurgeOutcome.DELETED
    assert not await tasks.doc_being_deleted("default", "doc-1")


async def test_a_failed_purge_at_the_owner_is_a_failed_delete(service) -> None:
    """Catches: a deletion the owner could not do reported as done."""
    knowledge, tasks = service
    owner = asyncio.create_task(owner_does(tasks, TaskStatus.FAILED))
    with pytest.raises(DeleteFailed, match="boom"):
        await knowledge.delete_document("default", "doc-1")
    await owner
    assert not await tasks.doc_being_deleted("default", "doc-1")


async def test_an_owner_that_never_gets_to_it_times_out_and_the_task_is_cancelled(service) -> None:
    """Catches: a request that hangs for good, and a forwarded deletion left queued after the client
    was told it failed (it would delete later, maybe after a re-upload)."""
    knowledge, tasks = service
    with pytest.raises(DeleteTimedOut, match="did not delete document doc-1"):
        await knowledge.delete_document("default", "doc-1")
    total, records = await tasks.list(tenant="default", status=None, offset=0, limit=10)
    assert total == 1 and records[0].status == TaskStatus.CANCELLED
    assert not await tasks.doc_being_deleted("default", "doc-1")
