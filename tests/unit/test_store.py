"""Every Lua script of the task store, transition by transition, against a real Redis.

No LightRAG, no app: these run in a second and pin the state machine the runner and the API rely on.
"""

from __future__ import annotations

import time

import pytest

from src.tasks.models import (
    AttemptOutcome,
    CancelOutcome,
    CreateOutcome,
    FinishOutcome,
    HeartbeatResult,
    RequeueOutcome,
    Stage,
    TaskStatus,
)
from src.tasks.store import _SCRIPTS, TaskStore, script_source
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


async def _running(store: TaskStore, task_id: str | None = None, owner: str = "w1", **kwargs):
    """Create one task and claim it; returns the claimed record."""
    created = await store.create(record(task_id, **kwargs))
    assert created.created
    claimed = await store.claim(owner, 60)
    assert claimed is not None and claimed.task_id == created.task_id
    return claimed


async def _requeue(store: TaskStore, task_id: str, **kwargs) -> RequeueOutcome:
    kwargs.setdefault("owner", None)
    kwargs.setdefault("max_failures", 5)
    kwargs.setdefault("outcome", AttemptOutcome.LEASE_EXPIRED)
    return await store.requeue(task_id, **kwargs)


# ------------------------------------------------------------------ scripts


def test_every_script_is_loaded_from_the_package() -> None:
    """Catches a script missing from lua/ (or from package-data): the store would fail at start."""
    expected = {"create", "check_room", "claim", "heartbeat", "progress", "finish", "requeue"}
    assert expected | {"request_cancel", "set_if_exists"} <= set(_SCRIPTS)
    for name in _SCRIPTS:  # every script the store loads at start, not a copy of the list
        source = script_source(name)
        assert "local K = {}" in source and "local function queue_full" in source


# ------------------------------------------------------------------ create


async def test_create_enqueues_and_indexes(store: TaskStore) -> None:
    """Catches a create that persists the hash but forgets the queue or the status index."""
    rec = record("t1")
    result = await store.create(rec)
    assert result.kind is CreateOutcome.CREATED and result.task_id == "t1"
    assert (await store.get("t1")).status == TaskStatus.PENDING
    assert await store.pending_count() == 1 and await store.pending_count("default") == 1
    assert (await store.counts("default"))["pending"] == 1
    total, listed = await store.list(tenant="default", status=None, offset=0, limit=10)
    assert total == 1 and listed[0].task_id == "t1"
    assert (await store.create(rec.model_copy(update={"doc_id": "other"}))).kind is CreateOutcome.EXISTS


async def test_same_doc_same_content_is_duplicate_other_content_conflicts(store: TaskStore) -> None:
    """Catches the doc lock not being consulted: a second upload of one doc id would index twice."""
    await store.create(record("a", doc_id="d", sha="x"))
    dup = await store.create(record("b", doc_id="d", sha="x"))
    assert dup.kind is CreateOutcome.DUPLICATE and dup.task_id == "a"
    conflict = await store.create(record("c", doc_id="d", sha="y"))
    assert conflict.kind is CreateOutcome.CONFLICT and conflict.task_id == "a"


async def test_doc_lock_is_released_by_failure_but_kept_by_completion(store: TaskStore) -> None:
    """Catches finalize releasing the lock of a completed doc (re-upload would re-index it) or
    keeping the lock of a failed one (the doc could never be retried)."""
    failed = await _running(store, "f", doc_id="df", sha="x")
    await store.finish("f", failed.attempt, TaskStatus.FAILED, error="boom", stage=Stage.FAILED, progress=0)
    assert (await store.create(record("f2", doc_id="df", sha="x"))).created
    await store.request_cancel("f2")  # out of the queue again
    done = await _running(store, "k", doc_id="dk", sha="x")
    await store.finish("k", done.attempt, TaskStatus.COMPLETED, result={}, stage=Stage.DONE, progress=100)
    assert (await store.create(record("k2", doc_id="dk", sha="x"))).kind is CreateOutcome.DUPLICATE
    assert (await store.create(record("k3", doc_id="dk", sha="new"))).created  # new content replaces


async def test_idempotency_key_returns_the_first_task_until_it_is_cancelled(store: TaskStore) -> None:
    """Catches an Idempotency-Key that is ignored (two tasks) or that pins a cancelled task forever."""
    first = await store.create(record("i1"), idempotency_key="key")
    again = await store.create(record("i2"), idempotency_key="key")
    assert first.created and again.kind is CreateOutcome.IDEMPOTENT and again.task_id == "i1"
    other_tenant = await store.create(record("i3", tenant="other"), idempotency_key="key")
    assert other_tenant.created  # keys are scoped per tenant
    assert (await store.request_cancel("i1")).outcome is CancelOutcome.CANCELLED
    reused = await store.create(record("i4"), idempotency_key="key")
    assert reused.created and reused.task_id == "i4"
    ttl = await store.redis.ttl(store.keys.idempotency("default", "key"))
    assert 0 < ttl <= store.idempotency_ttl


async def test_queue_full_overall(make_store) -> None:
    """Catches the queue bound not being enforced (the queue grows without limit) or check_room and
    create disagreeing (the early 429 and the atomic one must be the same rule)."""
    store = make_store(max_queued=2)
    assert await store.check_room("default") is None
    await store.create(record("q1"))
    await store.create(record("q2", tenant="other"))
    assert await store.check_room("default") is CreateOutcome.BUSY
    busy = await store.create(record("q3"))
    assert busy.kind is CreateOutcome.BUSY and not busy.created and await store.get("q3") is None
    await store.claim("w", 60)  # a running task no longer counts as waiting
    assert await store.check_room("default") is None
    assert (await store.create(record("q4"))).created


async def test_tenant_queue_limit_default_and_override(make_store) -> None:
    """Catches a tenant limit that ignores the tenant's own quota hash or counts other tenants."""
    store = make_store(tenant_max_pending=1)
    await store.create(record("a1", tenant="a"))
    assert await store.check_room("a") is CreateOutcome.TENANT_BUSY
    assert (await store.create(record("a2", tenant="a"))).kind is CreateOutcome.TENANT_BUSY
    assert (await store.create(record("b1", tenant="b"))).created
    await store.redis.hset(store.keys.tenant_quota("a"), "max_pending", 3)
    assert await store.check_room("a") is None
    assert (await store.create(record("a3", tenant="a"))).created


async def test_delayed_retries_count_towards_the_tenant_limit(make_store) -> None:
    """Catches retries waiting out their backoff escaping the tenant bound."""
    store = make_store(tenant_max_pending=1)
    claimed = await _running(store, "r")
    assert await _requeue(store, "r", not_before=time.time() + 60) is RequeueOutcome.REQUEUED
    assert claimed and await store.pending_count("default") == 1
    assert (await store.create(record("r2"))).kind is CreateOutcome.TENANT_BUSY


# ------------------------------------------------------------------ claim


async def test_claim_takes_highest_priority_then_oldest(store: TaskStore) -> None:
    """Catches a queue score that sorts by age before priority."""
    now = time.time()
    await store.create(record("old-low", priority=1, created_at=now))
    await store.create(record("new-high", priority=9, created_at=now + 1))
    await store.create(record("mid-old", priority=5, created_at=now + 2))
    await store.create(record("mid-new", priority=5, created_at=now + 3))
    order = []
    while (claimed := await store.claim("w", 60)) is not None:
        order.append(claimed.task_id)
        assert claimed.status == TaskStatus.PROCESSING and claimed.attempt == 1 and claimed.owner == "w"
    assert order == ["new-high", "mid-old", "mid-new", "old-low"]
    assert await store.pending_count() == 0 and len(await store.running_ids()) == 4


async def test_claim_with_a_minimum_priority_leaves_lower_ones_queued(store: TaskStore) -> None:
    """Catches an express claim (src/tasks/admission.py) that takes a task no more urgent than the
    ones running, or a minimum that hides the higher-priority task behind an older lower one."""
    now = time.time()
    await store.create(record("low", priority=1, created_at=now))
    await store.create(record("same", priority=3, created_at=now + 1))
    assert await store.claim("w", 60, min_priority=4) is None
    await store.create(record("high", priority=9, created_at=now + 2))
    assert (await store.claim("w", 60, min_priority=4)).task_id == "high"
    assert await store.claim("w", 60, min_priority=4) is None
    assert (await store.claim("w", 60, ["default"], min_priority=3)).task_id == "same"
    assert (await store.claim("w", 60, ["default"])).task_id == "low"


async def test_claim_respects_tenant_running_limit(make_store) -> None:
    """Catches max_running not being checked: one tenant could take every slot."""
    store = make_store(tenant_max_running=1)
    now = time.time()
    await store.create(record("a1", tenant="a", created_at=now))
    await store.create(record("a2", tenant="a", created_at=now + 1))
    await store.create(record("b1", tenant="b", created_at=now + 2))
    first, second = await store.claim("w", 60), await store.claim("w", 60)
    assert {first.task_id, second.task_id} == {"a1", "b1"}
    assert await store.claim("w", 60) is None  # a2 waits for a1
    assert await store.running_count("a") == 1
    await store.finish("a1", 1, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
    assert (await store.claim("w", 60)).task_id == "a2"


# ------------------------------------------------------------------ heartbeat / progress (fencing)


async def test_heartbeat_renews_only_the_current_attempt_of_its_owner(store: TaskStore) -> None:
    """Catches a heartbeat that renews a lease for a stale epoch or another owner (a zombie would
    keep a task it lost)."""
    claimed = await _running(store, "h")
    assert await store.heartbeat("h", claimed.attempt, "w1", 60) is HeartbeatResult.RENEWED
    assert await store.heartbeat("h", claimed.attempt, "intruder", 60) is HeartbeatResult.LOST
    assert await _requeue(store, "h") is RequeueOutcome.REQUEUED
    again = await store.claim("w2", 60)
    assert again.attempt == 2
    assert await store.heartbeat("h", 1, "w1", 60) is HeartbeatResult.LOST
    assert await store.heartbeat("h", 2, "w2", 60) is HeartbeatResult.RENEWED
    assert await store.heartbeat("missing", 1, "w1", 60) is HeartbeatResult.LOST


async def test_heartbeat_reports_a_cancel_request(store: TaskStore) -> None:
    """Catches a cancel made through another instance never reaching the worker running the task."""
    claimed = await _running(store, "hc")
    assert (await store.request_cancel("hc")).outcome is CancelOutcome.CANCELLING
    assert await store.heartbeat("hc", claimed.attempt, "w1", 60) is HeartbeatResult.CANCEL_REQUESTED


async def test_progress_is_refused_for_a_stale_epoch(store: TaskStore) -> None:
    """Catches a zombie attempt overwriting the progress of the attempt that replaced it."""
    await _running(store, "p")
    assert await store.report_progress("p", 1, Stage.EXTRACTING, 40.0)
    assert (await store.get("p")).stage == Stage.EXTRACTING
    await _requeue(store, "p")
    await store.claim("w2", 60)
    assert not await store.report_progress("p", 1, Stage.MERGING, 90.0)
    rec = await store.get("p")
    assert rec.stage == Stage.QUEUED and rec.progress == 40.0


# ------------------------------------------------------------------ finish


async def test_finish_completed_sets_ttl_history_and_indexes(store: TaskStore) -> None:
    """Catches a final state without a TTL (records would live forever) or left in the running set."""
    claimed = await _running(store, "c")
    out = await store.finish(
        "c", claimed.attempt, TaskStatus.COMPLETED, result={"chunks": 3}, stage=Stage.DONE, progress=100
    )
    assert out is FinishOutcome.OK
    rec = await store.get("c")
    assert rec.status == TaskStatus.COMPLETED and rec.result == {"chunks": 3} and rec.finished_at
    assert rec.owner is None and rec.lease_until is None and rec.expires_at
    assert rec.history[-1]["outcome"] == "completed" and rec.history[-1]["attempt"] == 1
    assert 0 < await store.redis.ttl(store.keys.task("c")) <= store.ttls["completed"]
    assert await store.running_ids() == [] and await store.running_count("default") == 0
    counts = await store.counts("default")
    assert counts["completed"] == 1 and counts["processing"] == 0


@pytest.mark.parametrize("status", [TaskStatus.FAILED, TaskStatus.CANCELLED])
async def test_finish_sets_the_ttl_of_each_final_status(store: TaskStore, status: TaskStatus) -> None:
    """Catches a final status written with another status' TTL (or none)."""
    claimed = await _running(store, "f")
    assert (
        await store.finish("f", claimed.attempt, status, error="x", stage=Stage.FAILED, progress=0)
        is FinishOutcome.OK
    )
    ttl = await store.redis.ttl(store.keys.task("f"))
    assert store.ttls[status.value] - 5 < ttl <= store.ttls[status.value]


async def test_finish_with_a_stale_epoch_is_refused(store: TaskStore) -> None:
    """Catches the epoch fence missing: a zombie's late 'failed' would overwrite the new attempt."""
    await _running(store, "z")
    await _requeue(store, "z")
    await store.claim("w2", 60)
    out = await store.finish("z", 1, TaskStatus.FAILED, error="zombie", stage=Stage.FAILED, progress=0)
    assert out is FinishOutcome.STALE
    assert (await store.get("z")).status == TaskStatus.PROCESSING


async def test_finish_refusals_name_their_reason(store: TaskStore) -> None:
    """Catches a refused final write being reported as success or with the wrong reason (the runner
    must finish a cancel when a cancel won the race)."""
    assert (
        await store.finish("nope", 1, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
        is FinishOutcome.MISSING
    )
    claimed = await _running(store, "r")
    await store.request_cancel("r")
    assert (
        await store.finish("r", claimed.attempt, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
        is FinishOutcome.CANCELLING
    )
    assert (
        await store.finish("r", claimed.attempt, TaskStatus.CANCELLED, stage=Stage.CANCELLED, progress=0)
        is FinishOutcome.OK
    )
    assert (
        await store.finish("r", claimed.attempt, TaskStatus.FAILED, stage=Stage.FAILED, progress=0)
        is FinishOutcome.ALREADY_FINAL
    )
    await _running(store, "q")
    await _requeue(store, "q")
    assert (
        await store.finish("q", 1, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
        is FinishOutcome.NOT_RUNNING
    )


# ------------------------------------------------------------------ requeue / dead letter


async def test_requeue_with_backoff_waits_in_the_delayed_queue(store: TaskStore) -> None:
    """Catches a retry that is claimable before its not-before time (no backoff at all)."""
    claimed = await _running(store, "b")
    out = await store.requeue(
        "b",
        owner="w1",
        max_failures=5,
        not_before=time.time() + 60,
        outcome=AttemptOutcome.RETRY,
        error="flaky",
        epoch=claimed.attempt,
    )
    assert out is RequeueOutcome.REQUEUED
    rec = await store.get("b")
    assert rec.status == TaskStatus.PENDING and rec.stage == Stage.RETRY_WAIT and rec.failures == 1
    assert rec.history[-1]["outcome"] == "retry" and rec.history[-1]["error"] == "flaky"
    assert await store.claim("w1", 60) is None
    await store.redis.zadd(store.keys.delayed("default"), {"b": time.time() - 1})  # backoff over
    assert (await store.claim("w1", 60)).attempt == 2


async def test_requeue_is_fenced_by_owner_epoch_and_lease(store: TaskStore) -> None:
    """Catches a sweeper or zombie handing back a task that a live worker still holds."""
    claimed = await _running(store, "f")
    assert await _requeue(store, "f", owner="other") is RequeueOutcome.NOT_OWNER
    assert await _requeue(store, "f", epoch=claimed.attempt + 1) is RequeueOutcome.STALE
    assert await _requeue(store, "f", lease_before=time.time()) is RequeueOutcome.ALIVE
    assert (await store.get("f")).status == TaskStatus.PROCESSING
    assert await _requeue(store, "f", owner="w1", epoch=claimed.attempt) is RequeueOutcome.REQUEUED
    assert await _requeue(store, "f") is RequeueOutcome.SKIPPED  # pending now: nothing to hand back


async def test_interruption_does_not_count_as_a_failure(store: TaskStore) -> None:
    """Catches a shutdown hand-back eating into the retry budget (a few restarts would dead-letter)."""
    for _ in range(3):
        claimed = await store.claim("w", 60) or await _running(store, "s")
        out = await _requeue(
            store,
            "s",
            max_failures=1,
            outcome=AttemptOutcome.INTERRUPTED,
            counts_as_failure=False,
            epoch=claimed.attempt,
        )
        assert out is RequeueOutcome.REQUEUED
    rec = await store.get("s")
    assert rec.failures == 0 and rec.status == TaskStatus.PENDING and len(rec.history) == 3


async def test_dead_letter_after_max_failures(store: TaskStore) -> None:
    """Catches a task retried forever, or dead-lettered without a TTL or with its lock kept."""
    await store.create(record("d", doc_id="dd"))
    outcomes = []
    for _ in range(3):
        claimed = await store.claim("w", 60)
        outcomes.append(
            await _requeue(
                store, "d", max_failures=3, outcome=AttemptOutcome.RETRY, error="flaky", epoch=claimed.attempt
            )
        )
    assert outcomes == [RequeueOutcome.REQUEUED, RequeueOutcome.REQUEUED, RequeueOutcome.DEAD_LETTERED]
    rec = await store.get("d")
    assert rec.status == TaskStatus.FAILED and rec.failures == 3 and rec.attempt == 3
    assert rec.error.startswith("gave up after 3 failed attempts") and len(rec.history) == 3
    assert 0 < await store.redis.ttl(store.keys.task("d")) <= store.ttls["failed"]
    assert await store.pending_count() == 0 and await store.running_ids() == []
    assert await store.doc_holder("default", "dd") is None


# ------------------------------------------------------------------ cancel


async def test_cancel_pending_is_immediate(store: TaskStore) -> None:
    """Catches a never-run task left in the queue after its cancel (a worker would still run it)."""
    await store.create(record("cp"))
    result = await store.request_cancel("cp")
    assert result.outcome is CancelOutcome.CANCELLED and result.accepted and result.status == "cancelled"
    assert await store.claim("w", 60) is None
    assert 0 < await store.redis.ttl(store.keys.task("cp")) <= store.ttls["cancelled"]
    again = await store.request_cancel("cp")
    assert again.outcome is CancelOutcome.ALREADY_FINAL and not again.accepted and again.status == "cancelled"


async def test_cancel_running_marks_cancelling(store: TaskStore) -> None:
    """Catches a running task cancelled in place (its partial data would stay) instead of being
    handed to its worker as 'cancelling'."""
    await _running(store, "cr")
    result = await store.request_cancel("cr")
    assert result.outcome is CancelOutcome.CANCELLING and result.accepted
    rec = await store.get("cr")
    assert rec.status == TaskStatus.CANCELLING and rec.cancel_requested and rec.stage == Stage.CLEANUP
    repeat = await store.request_cancel("cr")
    assert repeat.outcome is CancelOutcome.ALREADY_CANCELLING and not repeat.accepted
    assert repeat.status == "cancelling"
    missing = await store.request_cancel("nope")
    assert missing.outcome is CancelOutcome.MISSING and missing.status == "missing"


async def test_cancel_during_backoff_is_claimable_at_once(store: TaskStore) -> None:
    """Catches a cancel of a retry-waiting task that waits out the whole backoff before cleanup."""
    claimed = await _running(store, "cb")
    await _requeue(store, "cb", not_before=time.time() + 600, epoch=claimed.attempt)
    assert (await store.request_cancel("cb")).outcome is CancelOutcome.CANCELLING
    again = await store.claim("w", 60)
    assert again and again.task_id == "cb" and again.status == TaskStatus.CANCELLING and again.attempt == 2


# ------------------------------------------------------------------ prune and webhook record


async def test_prune_expired_drops_index_entries(store: TaskStore) -> None:
    """Catches listings and counts that keep showing tasks whose records expired."""
    claimed = await _running(store, "old")
    await store.finish("old", claimed.attempt, TaskStatus.COMPLETED, stage=Stage.DONE, progress=100)
    assert await store.prune_expired() == []  # not expired yet
    await store.redis.zadd(store.keys.expiry, {"default/old": time.time() - 1})
    assert await store.prune_expired() == ["old"]
    assert (await store.counts("default"))["completed"] == 0
    total, _ = await store.list(tenant="default", status=None, offset=0, limit=10)
    assert total == 0 and await store.prune_expired() == []


async def test_record_webhook_never_resurrects_an_expired_record(store: TaskStore) -> None:
    """Catches a webhook write re-creating a record (with no TTL) after it expired."""
    await store.record_webhook("gone", {"delivered": True})
    assert not await store.redis.exists(store.keys.task("gone"))
    await store.create(record("here"))
    await store.record_webhook("here", {"delivered": True})
    assert (await store.get("here")).webhook == {"delivered": True}
