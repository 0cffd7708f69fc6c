"""The guest claim (lua/claim_guest.lua) against a real Redis: an instance that does not own a
workspace takes only what the owner can spare and any instance indexes the same way, and the claim
is a real one (attempt, lease, fenced final write)."""

from __future__ import annotations

import pytest

from src.tasks.models import AttemptOutcome, FinishOutcome, Stage, TaskStatus
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

RICH = (".pdf", ".docx")


async def _queue(store: TaskStore, names: list[str], start: float = 1000.0, **fields: object) -> list[str]:
    ids = []
    for i, name in enumerate(names):
        stem = name.split(".")[0]
        task = record(f"g-{stem}", created_at=start + i, sha=f"s-{stem}").model_copy(
            update={"filename": name, **fields}
        )
        created = await store.create(task)
        assert created.created
        ids.append(created.task_id)
    return ids


async def test_a_guest_claims_from_the_tail_never_the_head_and_the_claim_is_fenced(store: TaskStore) -> None:
    """Catches: a guest taking the owner's next task, and a guest claim that is not a real claim
    (no attempt, no lease: its final write would not be fenced)."""
    ids = await _queue(store, ["a.txt", "b.txt", "c.txt"])
    first = await store.claim_guest("default", "guest", 60, rich_suffixes=RICH)
    second = await store.claim_guest("default", "guest", 60, rich_suffixes=RICH)
    assert (first.task_id, second.task_id) == (ids[2], ids[1])
    assert await store.claim_guest("default", "guest", 60, rich_suffixes=RICH) is None  # the head stays
    assert first.attempt == 1 and first.owner == "guest" and first.status == TaskStatus.PROCESSING
    assert (await store.claim("owner", 60)).task_id == ids[0]
    done = {"stage": Stage.DONE, "progress": 100.0}
    assert await store.finish(first.task_id, 0, TaskStatus.COMPLETED, **done) == FinishOutcome.STALE
    assert await store.finish(first.task_id, 1, TaskStatus.COMPLETED, **done) == FinishOutcome.OK


async def test_a_guest_leaves_rich_formats_new_versions_leased_and_resumed_tasks_to_the_owner(
    store: TaskStore,
) -> None:
    """Catches: a guest parsing a rich format (its parse could differ from the owner's), re-indexing a
    version, taking a document being extracted ahead, or resuming a document a dead attempt merged
    half-way (its purge is the owner's)."""
    await _queue(store, ["head.txt", "report.PDF", "notes.docx"])
    assert await store.claim_guest("default", "guest", 60, rich_suffixes=RICH) is None
    replacement = record("v1", created_at=2000.0, sha="v").model_copy(
        update={"filename": "v.txt", "replaces": True}
    )
    assert (await store.create(replacement)).created
    assert await store.claim_guest("default", "guest", 60, rich_suffixes=RICH) is None
    plain = await _queue(store, ["late.txt"], start=3000.0)
    leased = await store.lease_prefetch("default", "helper", 30, leave_head=0)
    assert leased.task_id == plain[0]
    assert await store.claim_guest("default", "guest", 60, rich_suffixes=RICH) is None
    assert await store.end_prefetch(plain[0], "helper")
    claimed = await store.claim_guest("default", "guest", 60, rich_suffixes=RICH)
    assert claimed.task_id == plain[0]
    # The guest died: its task is requeued; a second attempt is the owner's.
    await store.requeue(
        plain[0], owner="guest", max_failures=5, outcome=AttemptOutcome.LEASE_EXPIRED, epoch=1
    )
    assert await store.claim_guest("default", "guest", 60, rich_suffixes=RICH) is None
