"""The delegated query of an api-role instance (`QueryLane.answer`) against the real Redis and the
process's task-change fan-out: answered when a worker completes its task, refused as the direct
query would be, cancelled when nobody answers in time. No LightRAG."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable

import pytest

from src.ingestion.query_lane import QueryLane
from src.rag.errors import ProviderError, QueryTimeout
from src.rag.knowledge import QuerySpec
from src.tasks.fanout import TaskEventHub
from src.tasks.keys import QUERY_LANE
from src.tasks.models import TaskStatus
from src.tasks.store import TaskStore
from tests.helpers import make_settings
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]


@pytest.fixture
async def lane(tmp_path, make_store: Callable[..., TaskStore]) -> AsyncIterator[QueryLane]:
    store = make_store()
    # A fallback re-read far beyond the test's bounds: only the change notice can wake the waiter.
    hub = TaskEventHub(store, max_per_tenant=4, queue_size=8, max_waiters=1, recheck_seconds=3600)
    await hub.start()
    try:
        yield QueryLane(make_settings(tmp_path, None, query_timeout_seconds=30), store, hub)
    finally:
        await hub.stop()


async def worker(store: TaskStore, status: TaskStatus, **fields) -> str:
    """What a worker does with the next query task: claim it, then record its end."""
    while (task := await store.claim("worker-1", 30, lane=QUERY_LANE)) is None:
        await asyncio.sleep(0.01)
    await store.finish(task.task_id, task.attempt, status, stage="done", progress=100.0, **fields)
    return task.task_id


async def test_the_workers_answer_arrives_through_the_change_notice(lane: QueryLane) -> None:
    """Catches a delegated query that does not notice its task's completion (the fallback re-read
    is an hour away here), or that waits counted against the /insert?wait= bound (max_waiters=1,
    and one waiter is already there)."""
    await lane.store.create(record("pending-doc"))
    blocker = asyncio.create_task(lane.events.wait_final("pending-doc", 30))
    answering = asyncio.create_task(lane.answer("default", QuerySpec("who?")))
    while lane.events.waiting < 2 and not answering.done():  # both wait before the worker answers
        await asyncio.sleep(0.01)
    if answering.done():
        pytest.fail(f"the delegated query gave up at once (refused a waiter slot?): {answering}")
    await worker(lane.store, TaskStatus.COMPLETED, result={"response": "Ada"})
    assert (await asyncio.wait_for(answering, 20)).response == "Ada"
    blocker.cancel()


async def test_a_failed_query_task_is_a_provider_error(lane: QueryLane) -> None:
    answering = asyncio.create_task(lane.answer("default", QuerySpec("who?")))
    await worker(lane.store, TaskStatus.FAILED, error="RateLimitError: 429")
    with pytest.raises(ProviderError, match="429"):
        await asyncio.wait_for(answering, 20)


async def test_nobody_answering_times_out_and_cancels_the_task(lane: QueryLane) -> None:
    """Catches a timed-out delegated query whose task stays queued for a worker to answer later."""
    lane.settings.query_timeout_seconds = 0.2
    with pytest.raises(QueryTimeout) as raised:
        await lane.answer("default", QuerySpec("anyone?"))
    task = await lane.store.get(raised.value.context["task_id"])
    assert task is not None and task.status == TaskStatus.CANCELLED


async def test_a_caller_that_goes_away_cancels_the_task(lane: QueryLane) -> None:
    """Catches a query task left for a worker after its client went away."""
    answering = asyncio.create_task(lane.answer("default", QuerySpec("who?")))
    while not await lane.store.pending_count(lane=QUERY_LANE):
        await asyncio.sleep(0.01)
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    _, (task,) = await lane.store.list(tenant="default", status=None, offset=0, limit=5)
    assert task.status == TaskStatus.CANCELLED


async def test_a_query_task_that_expired_unanswered_is_a_provider_error(lane: QueryLane) -> None:
    """Catches a delegated query whose task record expired before any worker answered (its TTL ran
    out, or it was pruned) being reported as a timeout with a task id that no longer exists, or
    crashing: it is a 502 provider error, as the direct query's failure would be."""
    lane.settings.query_timeout_seconds = 0.5
    answering = asyncio.create_task(lane.answer("default", QuerySpec("who?")))
    while not await lane.store.pending_count(lane=QUERY_LANE):
        await asyncio.sleep(0.01)
    _, (task,) = await lane.store.list(tenant="default", status=None, offset=0, limit=5)
    await lane.store.redis.delete(lane.store.keys.task(task.task_id))  # the record is gone
    with pytest.raises(ProviderError, match="expired before it was answered"):
        await asyncio.wait_for(answering, 20)


async def test_a_caller_that_goes_away_while_the_task_is_created_cancels_it(lane: QueryLane) -> None:
    """Catches a query task left queued when its client went away between the create reaching
    Redis and its reply arriving (the cancel then lands inside the create)."""
    real_create = lane.store.create
    created, reply = asyncio.Event(), asyncio.Event()

    async def create_with_slow_reply(record):  # the task exists; its reply is still on its way
        outcome = await real_create(record)
        created.set()
        await reply.wait()
        return outcome

    lane.store.create = create_with_slow_reply  # type: ignore[method-assign]
    answering = asyncio.create_task(lane.answer("default", QuerySpec("who?")))
    await asyncio.wait_for(created.wait(), 10)
    answering.cancel()
    with pytest.raises(asyncio.CancelledError):
        await answering
    _, (task,) = await lane.store.list(tenant="default", status=None, offset=0, limit=5)
    assert task.status == TaskStatus.CANCELLED
