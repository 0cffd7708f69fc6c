"""The "being deleted" mark of a document id (mark_deleting.lua / unmark_deleting.lua), against a real
Redis: it expires an hour after a deleting process died, and ending a deletion touches only its own
mark."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis

from src.tasks.models import DeleteMark, TaskStatus
from src.tasks.store import TaskStore
from tests.helpers import wait_until
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def test_the_mark_expires_after_an_hour_by_default(store: TaskStore, redis: aioredis.Redis) -> None:
    """Catches a mark without expiry (a deleting process that died would block its document for good)
    or with another default than the hour docs/reliability.md promises."""
    outcome, marker, previous = await store.mark_deleting("default", "doc-1")
    assert (outcome, previous) == (DeleteMark.MARKED, "")
    key = store.keys.doc("default", "doc-1")
    assert (await redis.get(key)).decode() == marker
    assert 3590 <= await redis.ttl(key) <= 3600
    # A second deletion of the same document while the first runs is refused.
    assert (await store.mark_deleting("default", "doc-1"))[0] == DeleteMark.DELETING


async def test_an_expired_mark_lets_the_next_deletion_mark_again(
    store: TaskStore, redis: aioredis.Redis
) -> None:
    """Catches a mark that outlives its expiry (the next delete would be refused as running)."""
    await store.mark_deleting("default", "doc-2", ttl_seconds=1)
    key = store.keys.doc("default", "doc-2")
    await wait_until(lambda: _gone(redis, key), timeout=10, message="the mark expired")
    assert (await store.mark_deleting("default", "doc-2"))[0] == DeleteMark.MARKED


async def _gone(redis: aioredis.Redis, key: str) -> bool:
    return not await redis.exists(key)


async def test_unmark_without_its_mark_changes_nothing(store: TaskStore, redis: aioredis.Redis) -> None:
    """Catches an unmark that deletes whatever holds the doc id: a late unmark (its mark expired and
    a new task took the document) would free a live task's document for a duplicate."""
    created = await store.create(record(doc_id="doc-3"))
    key = store.keys.doc("default", "doc-3")
    assert (await redis.get(key)).decode() == created.task_id
    await store.unmark_deleting("default", "doc-3", "!deleting:not-ours")
    assert (await redis.get(key)).decode() == created.task_id
    await store.unmark_deleting("default", "doc-none", "!deleting:not-ours")  # nothing there: no-op
    assert not await redis.exists(store.keys.doc("default", "doc-none"))
    # The live task's doc id cannot be marked either; its own unmark restores a holder.
    outcome, _, holder = await store.mark_deleting("default", "doc-3")
    assert (outcome, holder) == (DeleteMark.LIVE, created.task_id)
    assert (await store.get(created.task_id)).status == TaskStatus.PENDING


async def test_unmark_with_restore_gives_the_doc_id_back(store: TaskStore, redis: aioredis.Redis) -> None:
    """Catches a failed deletion that forgets which completed task held the document."""
    _, marker, _ = await store.mark_deleting("default", "doc-4")
    await store.unmark_deleting("default", "doc-4", marker, restore="task-before")
    key = store.keys.doc("default", "doc-4")
    assert (await redis.get(key)).decode() == "task-before"
    assert await redis.ttl(key) == -1  # the restored holder no longer expires with the mark
