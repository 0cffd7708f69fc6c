"""Cross-instance graph locks (src/ingestion/graph_locks.py) on a real PostgreSQL: two lock sessions
stand for two instances. The orderings are observed with events, never with timing."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest

from src.ingestion.graph_locks import PgGraphLocks
from src.ingestion.ownership import OwnershipLost, PgOwnership
from src.rag.storage.fence import check_write, register_write_fence, writing_into
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.test_scale_ownership import make

pytestmark = pytest.mark.integration

WORKSPACE = "ws-graph-locks"


@pytest.fixture
async def pair(pg_env: dict[str, str]) -> AsyncIterator[tuple[PgOwnership, PgOwnership]]:  # noqa: F811
    a, b = make(pg_env, "gla"), make(pg_env, "glb")
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


def locks(own: PgOwnership) -> PgGraphLocks:
    return own.graph_locks(WORKSPACE)


async def blocked(task: asyncio.Task, locks_: PgGraphLocks, waits: int = 1) -> None:
    """Until ``task`` has polled for a lock held elsewhere at least ``waits`` time(s)."""
    for _ in range(2000):
        if locks_.waits >= waits or task.done():
            break
        await asyncio.sleep(0.005)
    assert not task.done(), "it did not wait"


async def test_merges_of_one_entity_on_two_instances_take_turns_and_others_run_together(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: two instances merging one entity at once (the lost update), and merges of disjoint
    entities serialised for nothing."""
    a, b = pair
    la, lb = locks(a), locks(b)
    order: list[str] = []
    async with la.merging(["Alice", "Bob"]):
        async with lb.merging(["Carol"]):  # disjoint: no wait
            order.append("b-carol")

        async def second() -> None:
            async with lb.merging(["Bob", "Zed"]):
                order.append("b-bob")

        task = asyncio.create_task(second())
        await blocked(task, lb)
        order.append("a-done")
    await task
    assert order == ["b-carol", "a-done", "b-bob"]


async def test_a_deletion_waits_for_every_instances_merges_and_new_merges_wait_for_it(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: a deletion's rebuild running beside another instance's merge, and a stream of merges
    starving a waiting deletion (the turnstile)."""
    a, b = pair
    la, lb = locks(a), locks(b)
    order: list[str] = []
    merging = la.merging(["Alice"])
    await merging.__aenter__()

    async def deletion() -> None:
        async with lb.exclusive():
            order.append("deleted")

    deleting = asyncio.create_task(deletion())
    await blocked(deleting, lb)

    async def late_merge() -> None:
        async with la.merging(["Dora"]):
            order.append("late merge")

    late = asyncio.create_task(late_merge())
    await blocked(late, la)  # behind the waiting deletion, though the merge key is only shared
    order.append("first merge done")
    await merging.__aexit__(None, None, None)
    await asyncio.gather(deleting, late)
    assert order == ["first merge done", "deleted", "late merge"]


async def test_an_ended_session_frees_the_locks_and_its_writes_are_refused(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: a guest whose session ended (stalled past the idle timeout) keeping its entity locks,
    or writing on under a new session as if it still held them."""
    a, b = pair
    assert await a.begin_guest("t1")
    guard = a.write_guard("t1", guest=True)
    assert guard is not None and guard()
    remove = register_write_fence(a.owns_workspace)
    try:
        with writing_into("ws-t1", guard):
            check_write("ws-t1")  # allowed: a guest with a live session
            held = locks(a).merging(["Alice"])
            await held.__aenter__()
            conn = a._conn
            assert conn is not None
            conn.terminate()  # the server ends the session (as idle_session_timeout does)
            async with locks(b).merging(["Alice"]):  # free at once
                pass
            with contextlib.suppress(Exception):
                await a.run_locked(lambda c: c.fetchval("SELECT 1"))  # noticed: session lost
            assert a.begin_guest is not None and await a.begin_guest("t1")  # a new session
            assert not guard(), "a task of the ended session must not trust the new one"
            with pytest.raises(OwnershipLost):
                check_write("ws-t1")
            await held.__aexit__(None, None, None)  # nothing to release in the new session
            async with locks(b).merging(["Alice"]):
                pass
    finally:
        remove()
