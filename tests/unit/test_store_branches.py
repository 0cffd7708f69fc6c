"""Task-store transitions reached only by rare timing in the service, pinned here against a real
Redis: a cancelling task whose worker died, a stray second hand-back, and an Idempotency-Key whose
completed task's document was deleted since."""

from __future__ import annotations

import pytest

from src.tasks.models import AttemptOutcome, CancelOutcome, CreateOutcome, RequeueOutcome, Stage, TaskStatus
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def test_a_cancelling_task_whose_worker_died_is_handed_back_once_and_ends_cancelled(
    store: TaskStore,
) -> None:
    """Catches a cancelling task lost with its worker (stuck `cancelling` for good), turned back
    into `pending` (its cancel forgotten: it would be indexed), handed back twice (a second queue
    entry: two workers would clean it up), or charged a failure for an attempt that only cleaned up."""
    await store.create(record("cd"))
    claimed = await store.claim("w1", 60)
    assert claimed is not None and claimed.task_id == "cd"
    assert (await store.request_cancel("cd")).outcome is CancelOutcome.CANCELLING
    # w1 dies; its lease lapses and the sweeper hands the task back.
    handed = await store.requeue("cd", owner=None, max_failures=5, outcome=AttemptOutcome.LEASE_EXPIRED)
    assert handed is RequeueOutcome.REQUEUED
    waiting = await store.get("cd")
    assert waiting.status == TaskStatus.CANCELLING and not waiting.owner
    assert waiting.failures == 0, "an attempt lost while it only cleaned up counted as a failure"
    # A second sweep (or a late requeue of w1) finds it already handed back: nothing changes.
    again = await store.requeue("cd", owner=None, max_failures=5, outcome=AttemptOutcome.LEASE_EXPIRED)
    assert again is RequeueOutcome.QUEUED
    assert await store.get("cd") == waiting
    # The next worker gets it as cancelling (attempt 2), finishes the cleanup, and nothing is left.
    cleanup = await store.claim("w2", 60)
    assert cleanup is not None and cleanup.task_id == "cd" and cleanup.status == TaskStatus.CANCELLING
    assert cleanup.attempt == 2 and await store.claim("w3", 60) is None
    await store.finish("cd", cleanup.attempt, TaskStatus.CANCELLED, stage=Stage.CLEANUP, progress=0)
    final = await store.get("cd")
    assert final.status == TaskStatus.CANCELLED
    assert [h["outcome"] for h in final.history][:1] == [AttemptOutcome.LEASE_EXPIRED]


async def test_an_idempotency_key_of_a_task_whose_document_was_deleted_creates_a_new_task(
    store: TaskStore,
) -> None:
    """Catches a retried request answered with a completed task whose document was deleted since
    (the client would believe the document indexed), and the key still answering while the
    document is there."""
    first = record("k1", doc_id="doc-k")
    assert (await store.create(first, idempotency_key="key-1", fingerprint="fp")).created
    claimed = await store.claim("w1", 60)
    await store.finish("k1", claimed.attempt, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
    retried = await store.create(record("k2", doc_id="doc-k"), idempotency_key="key-1", fingerprint="fp")
    assert (retried.kind, retried.task_id) == (CreateOutcome.IDEMPOTENT, "k1")
    await store.release_doc("default", "doc-k")  # DELETE /documents/doc-k succeeded
    after_delete = await store.create(record("k3", doc_id="doc-k"), idempotency_key="key-1", fingerprint="fp")
    assert (after_delete.kind, after_delete.task_id) == (CreateOutcome.CREATED, "k3")
    # The key now names the new task.
    again = await store.create(record("k4", doc_id="doc-k"), idempotency_key="key-1", fingerprint="fp")
    assert (again.kind, again.task_id) == (CreateOutcome.IDEMPOTENT, "k3")
