"""The prefetch lease (lua/prefetch_lease.lua, prefetch_end.lua) and claim.lua passing over a leased
task, against a real Redis: the owner never claims a document another instance is extracting, the
helper never takes the owner's next task, and a lease that is not renewed frees the task."""

from __future__ import annotations

import asyncio

import pytest

from src.tasks.store import TaskStore
from tests.unit.helpers import query_record, record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def _queue(store: TaskStore, count: int) -> list[str]:
    ids = []
    for i in range(count):
        created = await store.create(record(f"t{i}", created_at=1000.0 + i, sha=f"s{i}"))
        assert created.created
        ids.append(created.task_id)
    return ids


async def test_lease_takes_from_the_tail_and_leaves_the_head(store: TaskStore) -> None:
    ids = await _queue(store, 3)
    first = await store.lease_prefetch("default", "helper", 30)
    second = await store.lease_prefetch("default", "helper", 30)
    assert (first.task_id, second.task_id) == (ids[2], ids[1])
    assert await store.lease_prefetch("default", "helper", 30) is None  # the head stays the owner's
    assert await store.lease_prefetch("other-tenant", "helper", 30) is None


async def test_claim_passes_over_leased_tasks_until_their_lease_ends(store: TaskStore) -> None:
    ids = await _queue(store, 3)
    leased = await store.lease_prefetch("default", "helper", 30, leave_head=0)
    assert leased.task_id == ids[2]
    claimed = [(await store.claim("owner", 60)).task_id for _ in range(2)]
    assert claimed == ids[:2]
    assert await store.claim("owner", 60) is None  # only the leased one waits
    assert await store.end_prefetch(ids[2], "helper", "done")
    assert (await store.claim("owner", 60)).task_id == ids[2]
    assert await store.lease_prefetch("default", "helper", 30, leave_head=0) is None


async def test_a_done_or_unsuitable_task_is_not_leased_again(store: TaskStore) -> None:
    ids = await _queue(store, 2)
    for outcome in ("done", "unsuitable"):
        leased = await store.lease_prefetch("default", "helper", 30, leave_head=0)
        assert await store.end_prefetch(leased.task_id, "helper", outcome)
    assert await store.lease_prefetch("default", "helper", 30, leave_head=0) is None
    assert {(await store.get(i)).task_id for i in ids} == set(ids)


async def test_an_expired_lease_frees_the_task_and_only_the_holder_ends_or_renews_it(
    store: TaskStore,
) -> None:
    ids = await _queue(store, 1)
    leased = await store.lease_prefetch("default", "helper", 0.2, leave_head=0)
    assert leased.task_id == ids[0]
    assert not await store.end_prefetch(ids[0], "someone-else", "done")
    assert not await store.renew_prefetch(ids[0], "someone-else", 30)
    assert await store.renew_prefetch(ids[0], "helper", 0.2)
    assert await store.claim("owner", 60) is None
    await asyncio.sleep(0.3)  # the lease's own expiry is what is tested here
    assert (await store.claim("owner", 60)).task_id == ids[0]
    assert not await store.end_prefetch(ids[0], "helper", "done")  # gone: nothing recorded
    assert await store.lease_prefetch("default", "helper", 30, leave_head=0) is None  # running now


async def test_queries_are_never_leased(store: TaskStore) -> None:
    await store.create(query_record("q1"))
    await store.create(query_record("q2"))
    assert await store.lease_prefetch("default", "helper", 30, leave_head=0) is None


async def test_an_extracted_task_is_claimed_first_within_its_priority_class(store: TaskStore) -> None:
    """The owner takes what only needs its merge first and leaves the rest to the helpers; never
    across priority classes."""
    ids = await _queue(store, 3)
    urgent = await store.create(record("urgent", priority=9, created_at=2000.0, sha="u"))
    leased = await store.lease_prefetch("default", "helper", 30, leave_head=0)
    assert leased.task_id == ids[2]  # the tail of the queue (the urgent task sorts first)
    assert await store.end_prefetch(ids[2], "helper", "done")
    claimed = [(await store.claim("owner", 60)).task_id for _ in range(4)]
    assert claimed == [urgent.task_id, ids[2], ids[0], ids[1]]
