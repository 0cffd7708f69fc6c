"""Task records in Redis: the single source of truth for task state.

Every state transition is one Lua script (``lua/*.lua``), so it is atomic and fenced:
a write that names an attempt (epoch) older than the task's current one is refused,
which is what keeps a zombie attempt from overwriting a newer one. The keys are listed in
:mod:`src.tasks.keys`; the outcomes each call can report are the enums of :mod:`src.tasks.models`.

One module (~510 lines): one thin method per script over one key layout; the scripts themselves
are the substance (``lua/*.lua``).
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Iterable
from functools import cache
from importlib import resources

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from src.tasks.keys import INDEX_ALL, INGEST_LANE, LUA_KEYS, QUERY_KIND, QUERY_LANE, Keys
from src.tasks.models import (
    FINAL_STATUSES,
    CancelOutcome,
    CancelResult,
    CreateOutcome,
    CreateResult,
    DeleteMark,
    FinishOutcome,
    HeartbeatResult,
    RequeueOutcome,
    TaskRecord,
    TaskStatus,
)

_ALL_STATUSES = [s.value for s in TaskStatus]

#: Queue scores: (9 - priority) * PRIORITY_STEP + created_at, so a higher priority always sorts first
#: and equal priorities run oldest first.
PRIORITY_STEP = 1e10

_SCRIPTS = (
    "create",
    "check_room",
    "claim",
    "heartbeat",
    "progress",
    "finish",
    "requeue",
    "request_cancel",
    "set_if_exists",
    "mark_deleting",
    "unmark_deleting",
    "prefetch_lease",
    "prefetch_end",
    "claim_guest",
)


@cache
def script_source(name: str) -> str:
    """The full text of script ``name``: key builders, shared helpers, then ``lua/<name>.lua``
    (read once per process from the installed package)."""
    folder = resources.files("src.tasks") / "lua"
    return LUA_KEYS + (folder / "common.lua").read_text() + (folder / f"{name}.lua").read_text()


class TaskStore:
    """Async, fenced task-state API over one Redis connection pool."""

    def __init__(
        self,
        redis: aioredis.Redis,
        *,
        prefix: str = "ragsvc:",
        ttls: dict[str, int],
        max_queued: int = 0,
        tenant_max_pending: int = 0,
        tenant_max_running: int = 0,
        idempotency_ttl: int = 24 * 3600,
        max_queued_queries: int = 0,
        tenant_max_pending_queries: int = 0,
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.keys = Keys(prefix)
        self.ttls = ttls
        self.max_queued = max_queued
        self.tenant_max_pending = tenant_max_pending
        self.tenant_max_running = tenant_max_running
        self.idempotency_ttl = idempotency_ttl
        #: Bounds of the query lane (query tasks wait apart from documents; see keys.py).
        self.max_queued_queries = max_queued_queries
        self.tenant_max_pending_queries = tenant_max_pending_queries
        scripts = {name: redis.register_script(script_source(name)) for name in _SCRIPTS}
        self._create = scripts["create"]
        self._check_room = scripts["check_room"]
        self._claim = scripts["claim"]
        self._prefetch_lease = scripts["prefetch_lease"]
        self._prefetch_end = scripts["prefetch_end"]
        self._claim_guest = scripts["claim_guest"]
        self._heartbeat = scripts["heartbeat"]
        self._progress = scripts["progress"]
        self._finish = scripts["finish"]
        self._requeue = scripts["requeue"]
        self._request_cancel = scripts["request_cancel"]
        self._set_if_exists = scripts["set_if_exists"]
        self._mark_deleting = scripts["mark_deleting"]
        self._unmark_deleting = scripts["unmark_deleting"]
        #: Pub/sub channel carrying the id of every task written (read by src/tasks/fanout.py).
        self.events_channel = f"{prefix}task-events"

    # ----------------------------------------------------------------- creation and reads
    @staticmethod
    def new_task_id() -> str:
        return str(uuid.uuid4())

    def _bounds(self, lane: str) -> tuple[int, int]:
        """(max queued overall, default max queued per tenant) of ``lane``."""
        if lane == QUERY_LANE:
            return self.max_queued_queries, self.tenant_max_pending_queries
        return self.max_queued, self.tenant_max_pending

    async def create(
        self, record: TaskRecord, *, idempotency_key: str | None = None, fingerprint: str = ""
    ) -> CreateResult:
        """Persist a pending task and enqueue it atomically (before the 202 is sent).

        ``fingerprint`` identifies the request: a reused ``idempotency_key`` with another fingerprint
        is refused (IDEMPOTENCY_MISMATCH) instead of silently answering with the first task."""
        fields = record.to_redis()
        lane = record.lane
        max_queued, tenant_max = self._bounds(lane)
        queue_score = f"{(9 - record.priority) * PRIORITY_STEP + record.created_at:.6f}"
        fields["queue_score"] = queue_score
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        kind, task_id = await self._create(
            args=[
                self.prefix,
                record.task_id,
                record.tenant,
                record.doc_id,
                queue_score,
                str(record.created_at),
                record.content_sha256,
                idempotency_key or "",
                str(max_queued),
                str(tenant_max),
                str(self.idempotency_ttl),
                fingerprint,
                lane,
                *flat,
            ]
        )
        result = CreateResult(kind=CreateOutcome(_s(kind)), task_id=_s(task_id))
        if result.kind == CreateOutcome.CREATED:
            await self._announce(result.task_id)
        return result

    async def check_room(self, tenant: str, lane: str = INGEST_LANE) -> CreateOutcome | None:
        """BUSY or TENANT_BUSY when a task of ``tenant`` would be refused for a full queue of
        ``lane``, else None.

        The same rule :meth:`create` applies atomically (one Lua function); calling it first only
        spares a client the upload of a body that would be refused."""
        max_queued, tenant_max = self._bounds(lane)
        out = CreateOutcome(
            _s(await self._check_room(args=[self.prefix, tenant, str(max_queued), str(tenant_max), lane]))
        )
        return None if out == CreateOutcome.CREATED else out

    async def get(self, task_id: str) -> TaskRecord | None:
        fields = await self.fields(task_id)
        return TaskRecord.from_redis(fields) if fields else None

    async def fields(self, task_id: str) -> dict[str, str]:
        """The task's stored hash as it is (empty if there is none): for readers that need no model."""
        return _decode(await self.redis.hgetall(self.keys.task(task_id)))

    async def existing(self, task_ids: Iterable[str]) -> set[str]:
        """The ids among ``task_ids`` that have a record."""
        ids = list(task_ids)
        if not ids:
            return set()
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.exists(self.keys.task(task_id))
            found = await pipe.execute()
        return {task_id for task_id, n in zip(ids, found, strict=True) if n}

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord]:
        return [TaskRecord.from_redis(fields) for fields in await self.fields_many(task_ids)]

    async def fields_many(self, task_ids: list[str]) -> list[dict[str, str]]:
        """`fields` of each task that still has a record, in the order given."""
        if not task_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self.keys.task(task_id))
            rows = await pipe.execute()
        return [_decode(raw) for raw in rows if raw]

    async def list(
        self, *, tenant: str, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[TaskRecord]]:
        """Newest first. Records whose TTL ended but are still indexed are skipped."""
        total, rows = await self.list_fields(tenant=tenant, status=status, offset=offset, limit=limit)
        return total, [TaskRecord.from_redis(fields) for fields in rows]

    async def list_fields(
        self, *, tenant: str, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[dict[str, str]]]:
        """`list`, as the stored hashes' strings (for readers that need no model)."""
        index = self.keys.index(tenant, status.value if status else INDEX_ALL)
        total, ids = await _pipeline_results(
            self.redis, lambda pipe: (pipe.zcard(index), pipe.zrevrange(index, offset, offset + limit - 1))
        )
        return int(total), await self.fields_many([_s(i) for i in ids])

    async def tenants_seen(self) -> list[str]:
        return sorted(_s(t) for t in await self.redis.smembers(self.keys.tenants_seen))

    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Tasks per status for one tenant, or summed over all tenants."""
        tenants = [tenant] if tenant else await self.tenants_seen()
        totals = dict.fromkeys(_ALL_STATUSES, 0)
        if not tenants:
            return totals
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in tenants:
                for status in _ALL_STATUSES:
                    pipe.zcard(self.keys.index(t, status))
            rows = await pipe.execute()
        for i, count in enumerate(rows):
            totals[_ALL_STATUSES[i % len(_ALL_STATUSES)]] += int(count)
        return totals

    async def pending_count(self, tenant: str | None = None, lane: str = INGEST_LANE) -> int:
        """Tasks waiting to run in ``lane``, including retries waiting out their backoff."""
        keys = self.keys.lane(lane)
        if tenant is None:
            return int(await self.redis.zcard(keys.queued))
        queued, delayed = await _pipeline_results(
            self.redis,
            lambda pipe: (pipe.zcard(keys.queue(tenant)), pipe.zcard(keys.delayed(tenant))),
        )
        return int(queued) + int(delayed)

    async def running_count(self, tenant: str) -> int:
        return int(await self.redis.hget(self.keys.run_count, tenant) or 0)

    async def release_doc(self, tenant: str, doc_id: str) -> None:
        """Forget which task owns ``doc_id`` (the document was deleted from the knowledge base)."""
        await self.redis.delete(self.keys.doc(tenant, doc_id))

    async def mark_deleting(
        self, tenant: str, doc_id: str, *, ttl_seconds: int = 3600
    ) -> tuple[DeleteMark, str, str]:
        """Mark ``doc_id`` as being deleted, unless a live task holds it or a deletion already runs.

        Returns (outcome, marker, previous holder); with LIVE the previous holder is the live task.
        The marker expires after ``ttl_seconds`` should the deleting process die."""
        marker = f"!deleting:{uuid.uuid4().hex}"
        outcome, holder = await self._mark_deleting(
            args=[self.prefix, tenant, doc_id, marker, str(ttl_seconds)]
        )
        return DeleteMark(_s(outcome)), marker, _s(holder)

    async def unmark_deleting(self, tenant: str, doc_id: str, marker: str, *, restore: str = "") -> None:
        """End a deletion: forget the doc id (``restore`` = ''), or give it back to ``restore``."""
        await self._unmark_deleting(args=[self.prefix, tenant, doc_id, marker, restore])

    async def doc_being_deleted(self, tenant: str, doc_id: str) -> bool:
        holder = await self.redis.get(self.keys.doc(tenant, doc_id))
        return bool(holder) and _s(holder).startswith("!")

    async def doc_holder(self, tenant: str, doc_id: str) -> TaskRecord | None:
        """The live or completed task recorded for ``doc_id``, if its record still exists."""
        holder = await self.redis.get(self.keys.doc(tenant, doc_id))
        return await self.get(_s(holder)) if holder and not _s(holder).startswith("!") else None

    async def live_task_for_doc(self, tenant: str, doc_id: str) -> str | None:
        record = await self.doc_holder(tenant, doc_id)
        return record.task_id if record and not record.status.is_final else None

    async def claim(
        self,
        owner: str,
        lease_seconds: float,
        tenants: list[str] | None = None,
        lane: str = INGEST_LANE,
        min_priority: int = 0,
    ) -> TaskRecord | None:
        """Atomically take the next pending task of ``lane``: attempt += 1, lease until now +
        lease_seconds.

        ``tenants``: only tasks of these tenants may be taken (the workspaces this instance owns);
        None means any tenant. ``min_priority``: only tasks of at least this priority (an express
        slot, src/tasks/admission.py)."""
        if tenants is not None and not tenants:
            return None
        now = time.time()
        raw = await self._claim(
            args=[
                self.prefix,
                f"{now:.6f}",
                f"{now + lease_seconds:.6f}",
                owner,
                str(self.tenant_max_running),
                str(PRIORITY_STEP),
                "0" if tenants is None else "1",
                lane,
                *(tenants or []),
                str(int(min_priority)),
            ]
        )
        if not raw:
            return None
        it = iter(raw)
        record = TaskRecord.from_redis(_decode(dict(zip(it, it, strict=True))))
        await self._announce(record.task_id)
        return record

    async def claim_guest(
        self,
        tenant: str,
        owner: str,
        lease_seconds: float,
        *,
        rich_suffixes: Iterable[str] = (),
        leave_head: int = 1,
        scan: int = 50,
    ) -> TaskRecord | None:
        """Claim a waiting plain document of ``tenant`` for an instance that does not own its
        workspace (lua/claim_guest.lua: from the end of the queue, never the owner's next task, never
        a resumed attempt, a new version or a name ending in one of ``rich_suffixes``)."""
        now = time.time()
        raw = await self._claim_guest(
            args=[
                self.prefix,
                tenant,
                f"{now:.6f}",
                f"{now + lease_seconds:.6f}",
                owner,
                str(self.tenant_max_running),
                str(int(leave_head)),
                str(int(scan)),
                *sorted({s.lower() for s in rich_suffixes}),
            ]
        )
        if not raw:
            return None
        it = iter(raw)
        record = TaskRecord.from_redis(_decode(dict(zip(it, it, strict=True))))
        await self._announce(record.task_id)
        return record

    # ------------------------------------------------------------------ extraction ahead of the owner
    async def lease_prefetch(
        self, tenant: str, instance_id: str, lease_seconds: float, *, scan: int = 50, leave_head: int = 1
    ) -> TaskRecord | None:
        """Lease one waiting document task of ``tenant`` for extraction ahead of its owner
        (lua/prefetch_lease.lua); None when there is none to take."""
        raw = await self._prefetch_lease(
            args=[
                self.prefix,
                tenant,
                instance_id,
                str(int(lease_seconds * 1000)),
                str(scan),
                str(leave_head),
            ]
        )
        if not raw:
            return None
        it = iter(raw)
        return TaskRecord.from_redis(_decode(dict(zip(it, it, strict=True))))

    async def renew_prefetch(self, task_id: str, instance_id: str, lease_seconds: float) -> bool:
        """Extend our lease (False: it expired or is not ours any more)."""
        key = self.keys.prefetch(task_id)
        if _s(await self.redis.get(key) or b"") != instance_id:
            return False
        return bool(await self.redis.set(key, instance_id, xx=True, px=int(lease_seconds * 1000)))

    async def end_prefetch(self, task_id: str, instance_id: str, outcome: str = "") -> bool:
        """Give the lease up; ``outcome`` 'done' or 'unsuitable' is recorded on the task (it is not
        leased again), '' leaves the task as it was."""
        return bool(await self._prefetch_end(args=[self.prefix, task_id, instance_id, outcome]))

    async def tenants_with_pending(self) -> list[str]:
        """Tenants with tasks waiting in their queue (due now), for spreading workspace ownership."""
        tenants = [_s(t) for t in await self.redis.smembers(self.keys.active)]
        if not tenants:
            return []
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in tenants:
                pipe.zcard(self.keys.queue(t))
                pipe.zcount(self.keys.delayed(t), "-inf", now)  # due retries count too
            sizes = await pipe.execute()
        return [t for i, t in enumerate(tenants) if int(sizes[2 * i]) + int(sizes[2 * i + 1]) > 0]

    async def tenants_running_elsewhere(self, instance_id: str) -> list[str]:
        """Tenants with documents (ingestion lane) running on instances other than ``instance_id``:
        where a dead or stalled owner may have left running tasks and nothing waiting."""
        ids = await self.redis.zrange(self.keys.running, 0, -1)
        if not ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in ids:
                pipe.hmget(self.keys.task(_s(task_id)), "tenant", "owner", "kind")
            rows = await pipe.execute()
        tenants = {
            _s(tenant)
            for tenant, owner, kind in rows
            if tenant and owner and _s(owner) != instance_id and _s(kind or b"") != QUERY_KIND
        }
        return sorted(tenants)

    async def touch_instance(self, instance_id: str) -> None:
        """Say this instance is alive (the fleet size decides each instance's share of workspaces)."""
        await self.redis.zadd(self.prefix + "instances", {instance_id: time.time()})

    async def live_instances(self, within_seconds: float = 15.0) -> int:
        """Instances that said they were alive within ``within_seconds`` (old entries are dropped)."""
        key = self.prefix + "instances"
        now = time.time()
        async with self.redis.pipeline(transaction=False) as pipe:
            pipe.zremrangebyscore(key, "-inf", now - 10 * within_seconds)
            pipe.zcount(key, now - within_seconds, "+inf")
            _, count = await pipe.execute()
        return int(count)

    async def heartbeat(self, task_id: str, epoch: int, owner: str, lease_seconds: float) -> HeartbeatResult:
        """Renew the lease of attempt ``epoch`` (refused unless it is the current attempt of ``owner``)."""
        lease_until = time.time() + lease_seconds
        out = await self._heartbeat(args=[self.prefix, task_id, str(epoch), owner, f"{lease_until:.6f}"])
        return HeartbeatResult(_s(out))

    async def report_progress(self, task_id: str, epoch: int, stage: str, progress: float) -> bool:
        """False when attempt ``epoch`` is no longer the running one (the write was refused)."""
        ok = await self._progress(
            args=[
                self.prefix,
                task_id,
                str(epoch),
                stage,
                f"{progress:.1f}",
                f"{time.time():.6f}",
                self.events_channel,
            ]
        )
        return bool(int(ok))

    async def finish(
        self,
        task_id: str,
        epoch: int,
        status: TaskStatus,
        *,
        result: dict | None = None,
        error: str | None = None,
        stage: str,
        progress: float,
    ) -> FinishOutcome:
        """Record the end of attempt ``epoch`` in a final status.

        completed/failed are accepted only from 'processing' (a cancel that arrived meanwhile wins:
        CANCELLING), cancelled from 'processing' or 'cancelling'."""
        assert status in FINAL_STATUSES
        allowed = "processing,cancelling" if status == TaskStatus.CANCELLED else "processing"
        out = await self._finish(
            args=[
                self.prefix,
                task_id,
                str(epoch),
                allowed,
                status.value,
                f"{time.time():.6f}",
                str(self.ttls[status.value]),
                stage,
                f"{progress:.1f}",
                json.dumps(result) if result is not None else "",
                error or "",
            ]
        )
        outcome = FinishOutcome(_s(out))
        if outcome == FinishOutcome.OK:
            await self._announce(task_id)
        return outcome

    async def request_cancel(self, task_id: str) -> CancelResult:
        """Cancel a task that never ran at once; mark a running (or re-queued) one 'cancelling'."""
        outcome, status = await self._request_cancel(
            args=[self.prefix, task_id, f"{time.time():.6f}", str(self.ttls["cancelled"])]
        )
        result = CancelResult(outcome=CancelOutcome(_s(outcome)), status=_s(status))
        if result.outcome in (CancelOutcome.CANCELLED, CancelOutcome.CANCELLING):
            await self._announce(task_id)
        return result

    async def requeue(
        self,
        task_id: str,
        *,
        owner: str | None,
        max_failures: int,
        lease_before: float | None = None,
        not_before: float | None = None,
        outcome: str,
        error: str = "",
        counts_as_failure: bool = True,
        epoch: int | None = None,
    ) -> RequeueOutcome:
        """Hand a running task back to the queue (now, or at ``not_before``), or dead-letter it.

        ``outcome`` (an AttemptOutcome) is what the attempt's history entry says."""
        out = await self._requeue(
            args=[
                self.prefix,
                task_id,
                owner or "",
                f"{time.time():.6f}",
                str(max_failures),
                str(self.ttls["failed"]),
                "" if lease_before is None else f"{lease_before:.6f}",
                "" if not_before is None else f"{not_before:.6f}",
                outcome,
                error,
                "1" if counts_as_failure else "0",
                "" if epoch is None else str(epoch),
            ]
        )
        result = RequeueOutcome(_s(out))
        if result in (RequeueOutcome.REQUEUED, RequeueOutcome.DEAD_LETTERED):
            await self._announce(task_id)
        return result

    async def running_ids(self, *, lease_before: float | None = None) -> list[str]:
        ids = await self.redis.zrangebyscore(
            self.keys.running, "-inf", f"({lease_before}" if lease_before else "+inf"
        )
        return [_s(i) for i in ids]

    async def prune_expired(self) -> list[str]:
        """Drop index entries of records whose TTL ended; returns their ids (for file cleanup)."""
        now = time.time()
        expiry = self.keys.expiry
        members = [_s(m) for m in await self.redis.zrangebyscore(expiry, "-inf", now)]
        if not members:
            return []
        async with self.redis.pipeline(transaction=True) as pipe:
            for member in members:
                tenant, _, task_id = member.partition("/")
                for index in [INDEX_ALL, *_ALL_STATUSES]:
                    pipe.zrem(self.keys.index(tenant, index), task_id)
            pipe.zrem(expiry, *members)
            await pipe.execute()
        return [m.partition("/")[2] for m in members]

    async def record_webhook(self, task_id: str, delivery: dict) -> None:
        """Attach webhook delivery attempts to a finished task (its TTL is kept); a record that
        expired meanwhile is not resurrected."""
        await self._set_if_exists(args=[self.prefix, task_id, "webhook", json.dumps(delivery)])

    async def _announce(self, task_id: str) -> None:
        """Publish "task_id changed" for the event streams of every instance. Best effort: the write
        already happened, and streams resynchronise when their subscription is re-established."""
        try:
            await self.redis.publish(self.events_channel, task_id)
        except RedisError as exc:
            logging.getLogger(__name__).debug("task change notice not sent: %s", exc)

    async def ping(self) -> float:
        """Round-trip time to Redis in milliseconds."""
        start = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - start) * 1000


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


async def _pipeline_results(redis: aioredis.Redis, build) -> list:
    async with redis.pipeline(transaction=False) as pipe:
        build(pipe)
        return await pipe.execute()
