"""The query lane of the task store: query tasks wait, are claimed, bounded and cancelled apart from
documents (src/tasks/keys.py, lua/{create,claim,check_room,request_cancel}.lua), against a real Redis."""

from __future__ import annotations

import pytest

from src.tasks.keys import QUERY_LANE
from src.tasks.models import (
    AttemptOutcome,
    CancelOutcome,
    CreateOutcome,
    FinishOutcome,
    RequeueOutcome,
    TaskKind,
    TaskStatus,
)
from src.tasks.store import TaskStore
from tests.unit.helpers import query_record, record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def test_query_task_waits_in_its_own_lane(store: TaskStore) -> None:
    """Catches a query task queued behind documents: the ingestion claim must never see it, and the
    query claim must never take a document."""
    await store.create(record("doc1"))
    created = await store.create(query_record("q1"))
    assert created.kind is CreateOutcome.CREATED
    assert await store.pending_count() == 1 and await store.pending_count(lane=QUERY_LANE) == 1
    assert await store.pending_count("default", lane=QUERY_LANE) == 1
    claimed = await store.claim("w1", 60, lane=QUERY_LANE)
    assert claimed is not None and claimed.task_id == "q1" and claimed.kind is TaskKind.QUERY
    assert claimed.query == {"text": "what?", "mode": "naive"} and claimed.doc_id == ""
    assert await store.claim("w1", 60, lane=QUERY_LANE) is None
    doc = await store.claim("w1", 60)
    assert doc is not None and doc.task_id == "doc1"
    assert await store.claim("w1", 60) is None


async def test_query_tasks_hold_no_doc_lock(store: TaskStore) -> None:
    """Catches doc-id dedupe applied to queries: two identical queries are two tasks."""
    assert (await store.create(query_record("a", text="same"))).created
    assert (await store.create(query_record("b", text="same"))).created
    assert await store.redis.keys(store.prefix + "doc:*") == []


async def test_query_lane_is_bounded_apart_from_documents(make_store) -> None:
    """Catches a missing query bound, or a full document queue refusing queries (and vice versa)."""
    store = make_store(max_queued=1, max_queued_queries=2)
    assert (await store.create(record("d1"))).created
    assert (await store.create(record("d2"))).kind is CreateOutcome.BUSY
    assert await store.check_room("default") is CreateOutcome.BUSY
    assert await store.check_room("default", QUERY_LANE) is None
    assert (await store.create(query_record("q1"))).created
    assert (await store.create(query_record("q2"))).created
    assert (await store.create(query_record("q3"))).kind is CreateOutcome.BUSY
    assert await store.check_room("default", QUERY_LANE) is CreateOutcome.BUSY


async def test_query_lane_tenant_bound(make_store) -> None:
    """Catches a per-tenant bound of pending queries that counts other tenants' queries."""
    store = make_store(tenant_max_pending_queries=1)
    assert (await store.create(query_record("a", tenant="t1"))).created
    assert (await store.create(query_record("b", tenant="t1"))).kind is CreateOutcome.TENANT_BUSY
    assert await store.check_room("t1", QUERY_LANE) is CreateOutcome.TENANT_BUSY
    assert (await store.create(query_record("c", tenant="t2"))).created


async def test_running_queries_do_not_count_against_the_tenant_running_quota(make_store) -> None:
    """Catches queries eating the tenant's max_running: a running query must not block its documents."""
    store = make_store(tenant_max_running=1)
    await store.create(query_record("q"))
    await store.create(record("d"))
    assert (await store.claim("w", 60, lane=QUERY_LANE)).task_id == "q"
    assert await store.running_count("default") == 0
    assert (await store.claim("w", 60)).task_id == "d"


async def test_query_task_finishes_and_expires_like_other_tasks(store: TaskStore) -> None:
    """Catches a finish that leaves a query task in its lane's running count or without a TTL."""
    await store.create(query_record("q"))
    claimed = await store.claim("w", 60, lane=QUERY_LANE)
    out = await store.finish(
        "q", claimed.attempt, TaskStatus.COMPLETED, result={"response": "x"}, stage="done", progress=100
    )
    assert out is FinishOutcome.OK
    done = await store.get("q")
    assert done.status is TaskStatus.COMPLETED and done.result == {"response": "x"} and done.expires_at
    assert int(await store.redis.hget(store.keys.lane(QUERY_LANE).run_count, "default")) == 0
    assert await store.redis.ttl(store.keys.task("q")) > 0


async def test_retried_query_goes_back_to_the_query_lane(store: TaskStore) -> None:
    """Catches a requeue that puts a query task in the documents' queue."""
    await store.create(query_record("q"))
    claimed = await store.claim("w", 60, lane=QUERY_LANE)
    out = await store.requeue(
        "q", owner="w", max_failures=5, outcome=AttemptOutcome.RETRY, epoch=claimed.attempt
    )
    assert out is RequeueOutcome.REQUEUED
    assert await store.claim("w", 60) is None
    again = await store.claim("w", 60, lane=QUERY_LANE)
    assert again is not None and again.attempt == 2


async def test_cancel_of_a_waiting_query_is_immediate_even_after_an_attempt(store: TaskStore) -> None:
    """Catches a retried query left 'cancelling' for a worker although it has nothing to purge."""
    await store.create(query_record("q"))
    claimed = await store.claim("w", 60, lane=QUERY_LANE)
    await store.requeue(
        "q",
        owner="w",
        max_failures=5,
        outcome=AttemptOutcome.RETRY,
        not_before=claimed.created_at + 3600,
        epoch=claimed.attempt,
    )
    result = await store.request_cancel("q")
    assert result.outcome is CancelOutcome.CANCELLED
    assert await store.pending_count(lane=QUERY_LANE) == 0
    assert (await store.get("q")).status is TaskStatus.CANCELLED


async def test_cancel_of_a_running_query_marks_it_cancelling(store: TaskStore) -> None:
    """Catches a running query cancelled without its runner being told (the heartbeat reads it)."""
    await store.create(query_record("q"))
    claimed = await store.claim("w", 60, lane=QUERY_LANE)
    assert (await store.request_cancel("q")).outcome is CancelOutcome.CANCELLING
    out = await store.finish("q", claimed.attempt, TaskStatus.CANCELLED, stage="cancelled", progress=0)
    assert out is FinishOutcome.OK
    assert int(await store.redis.hget(store.keys.lane(QUERY_LANE).run_count, "default")) == 0
