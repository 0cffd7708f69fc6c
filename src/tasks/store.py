"""Task records in Redis: the single source of truth for task state.

Every state transition is one Lua script, so it is atomic and fenced:
a write that names an attempt (epoch) older than the task's current one is refused,
which is what keeps a zombie attempt from overwriting a newer one.

Keys (all under ``prefix``; <t> is a tenant):
  task:<id>            hash, the TaskRecord
  q:<t>                zset id -> queue score (priority class, then age; lower runs first)
  dq:<t>               zset id -> not-before time of a retry (moved to q:<t> when due)
  active               set of tenants with queued work; queued: zset of all waiting ids
  running              zset id -> lease expiry (unix seconds); run:count hash t -> running tasks
  served               hash t -> last time a task of t was started (round robin between tenants)
  idx:<t>:all          zset id -> created_at   (listing, newest first)
  idx:<t>:<status>     zset id -> created_at   (filters and counts)
  expiry               zset "<t>/<id>" -> expires_at (prunes the indexes when a record's TTL ends)
  doc:<t>:<doc_id>     string, the live or completed task that owns a doc id (duplicate detection)
  idem:<t>:<key>       string, the task created under an Idempotency-Key (24 h)
  tenant:<t>           hash, per-tenant quotas (max_running, max_pending, rpm); tenants:seen: set
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from src.tasks.models import FINAL_STATUSES, TaskRecord, TaskStatus

_log = logging.getLogger(__name__)
_ALL_STATUSES = [s.value for s in TaskStatus]

#: Queue scores: (9 - priority) * PRIORITY_STEP + created_at, so a higher priority always sorts first
#: and equal priorities run oldest first.
PRIORITY_STEP = 1e10

# Helpers shared by the scripts (prefix p, tenant t are set by each script).
_COMMON = """
local p = ARGV[1]
local function tkey(id) return p..'task:'..id end
local function idx(t, name) return p..'idx:'..t..':'..name end
local function dequeue(t, id)
  redis.call('ZREM', p..'q:'..t, id)
  redis.call('ZREM', p..'dq:'..t, id)
  redis.call('ZREM', p..'queued', id)
end
local function stop_running(t, id)
  if redis.call('ZREM', p..'running', id) == 1 then redis.call('HINCRBY', p..'run:count', t, -1) end
end
local function add_history(key, cur_attempt, owner, started, now, outcome, err)
  local raw = redis.call('HGET', key, 'history')
  local history = {}
  if raw and raw ~= '' and raw ~= '{}' then history = cjson.decode(raw) end
  history[#history + 1] = {attempt = tonumber(cur_attempt), owner = owner, started_at = tonumber(started),
                           ended_at = tonumber(now), outcome = outcome, error = err}
  redis.call('HSET', key, 'history', cjson.encode(history))
end
local function finalize(t, id, key, from_status, new_status, created, doc_id, now, ttl)
  local expires = tonumber(now) + tonumber(ttl)
  redis.call('HSET', key, 'status', new_status, 'finished_at', now, 'updated_at', now,
             'owner', '', 'lease_until', '', 'not_before', '', 'expires_at', tostring(expires))
  dequeue(t, id)
  stop_running(t, id)
  redis.call('ZREM', idx(t, from_status), id)
  redis.call('ZADD', idx(t, new_status), created, id)
  redis.call('ZADD', p..'expiry', expires, t..'/'..id)
  redis.call('EXPIRE', key, ttl)
  local lock = p..'doc:'..t..':'..doc_id
  if new_status ~= 'completed' and redis.call('GET', lock) == id then redis.call('DEL', lock) end
end
"""

# ARGV: prefix, task_id, tenant, doc_id, queue_score, created_at, sha256, idempotency key ('' = none),
#       max queued overall (0 = unbounded), default max queued per tenant (0 = unbounded),
#       idempotency ttl, then field/value pairs.
_CREATE = (
    _COMMON
    + """
local id = ARGV[2]
local t = ARGV[3]
local function status_of(other) return redis.call('HGET', tkey(other), 'status') end
if ARGV[8] ~= '' then
  local held = redis.call('GET', p..'idem:'..t..':'..ARGV[8])
  if held then
    local st = status_of(held)
    if st and st ~= 'failed' and st ~= 'cancelled' then return {0, held, 'idempotent'} end
  end
end
local lock = p..'doc:'..t..':'..ARGV[4]
local holder = redis.call('GET', lock)
if holder and holder ~= id then
  local st = status_of(holder)
  if st == 'pending' or st == 'processing' or st == 'cancelling' or st == 'completed' then
    if redis.call('HGET', tkey(holder), 'content_sha256') == ARGV[7] then return {0, holder, 'duplicate'} end
    if st ~= 'completed' then return {0, holder, 'conflict'} end
  end
end
local limit = tonumber(ARGV[9])
if limit > 0 and redis.call('ZCARD', p..'queued') >= limit then return {0, '', 'busy'} end
local tenant_limit = tonumber(redis.call('HGET', p..'tenant:'..t, 'max_pending') or ARGV[10])
local tenant_queued = redis.call('ZCARD', p..'q:'..t) + redis.call('ZCARD', p..'dq:'..t)
if tenant_limit > 0 and tenant_queued >= tenant_limit then return {0, '', 'tenant-busy'} end
local key = tkey(id)
if redis.call('EXISTS', key) == 1 then return {0, id, 'exists'} end
local fields = {}
for i = 12, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('SET', lock, id)
if ARGV[8] ~= '' then redis.call('SET', p..'idem:'..t..':'..ARGV[8], id, 'EX', ARGV[11]) end
redis.call('ZADD', p..'q:'..t, ARGV[5], id)
redis.call('ZADD', p..'queued', ARGV[6], id)
redis.call('SADD', p..'active', t)
redis.call('SADD', p..'tenants:seen', t)
redis.call('ZADD', idx(t, 'all'), ARGV[6], id)
redis.call('ZADD', idx(t, 'pending'), ARGV[6], id)
return {1, id, 'created'}
"""
)

# Pick the next task: the highest priority class among the heads of all tenants' queues; within a
# class, the tenant served longest ago (round robin, so one tenant's bulk upload cannot starve
# another's single file); tenants at their running-task quota are skipped.
# ARGV: prefix, now, lease_until, owner, default max running per tenant (0 = unbounded)
_CLAIM = (
    _COMMON
    + """
local now = ARGV[2]
for _ = 1, 50 do
  local best_t, best_id, best_class, best_served, best_score = nil, nil, nil, nil, nil
  for _, t in ipairs(redis.call('SMEMBERS', p..'active')) do
    local due = redis.call('ZRANGEBYSCORE', p..'dq:'..t, '-inf', now, 'LIMIT', 0, 100)
    for _, id in ipairs(due) do
      redis.call('ZREM', p..'dq:'..t, id)
      local score = redis.call('HGET', tkey(id), 'queue_score')
      if score then redis.call('ZADD', p..'q:'..t, score, id) end
    end
    local head = redis.call('ZRANGE', p..'q:'..t, 0, 0, 'WITHSCORES')
    if #head == 0 then
      if redis.call('ZCARD', p..'dq:'..t) == 0 then redis.call('SREM', p..'active', t) end
    else
      local cap = tonumber(redis.call('HGET', p..'tenant:'..t, 'max_running') or ARGV[5])
      local running = tonumber(redis.call('HGET', p..'run:count', t) or '0')
      if cap <= 0 or running < cap then
        local score = tonumber(head[2])
        local class = math.floor(score / 1e10)
        local served = tonumber(redis.call('HGET', p..'served', t) or '0')
        if best_t == nil or class < best_class or (class == best_class and (served < best_served or
           (served == best_served and score < best_score))) then
          best_t, best_id, best_class, best_served, best_score = t, head[1], class, served, score
        end
      end
    end
  end
  if best_t == nil then return false end
  local t, id = best_t, best_id
  dequeue(t, id)
  local key = tkey(id)
  local cur = redis.call('HMGET', key, 'status', 'owner', 'created_at', 'started_at')
  if cur[1] == 'pending' or (cur[1] == 'cancelling' and cur[2] == '') then
    redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HSET', key, 'owner', ARGV[4], 'lease_until', ARGV[3], 'updated_at', now,
               'attempt_started_at', now, 'not_before', '')
    if cur[4] == '' then redis.call('HSET', key, 'started_at', now) end
    if cur[1] == 'pending' then
      redis.call('HSET', key, 'status', 'processing')
      redis.call('ZREM', idx(t, 'pending'), id)
      redis.call('ZADD', idx(t, 'processing'), cur[3], id)
    end
    redis.call('ZADD', p..'running', ARGV[3], id)
    redis.call('HINCRBY', p..'run:count', t, 1)
    redis.call('HSET', p..'served', t, now)
    return redis.call('HGETALL', key)
  end
end
return false
"""
)

# ARGV: prefix, id, epoch, owner, lease_until  ->  0 lost, 1 alive, 2 alive but asked to cancel
_HEARTBEAT = """
local p = ARGV[1]
local key = p..'task:'..ARGV[2]
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner')
if (cur[1] ~= 'processing' and cur[1] ~= 'cancelling') or cur[2] ~= ARGV[3] or cur[3] ~= ARGV[4] then
  return 0
end
redis.call('HSET', key, 'lease_until', ARGV[5])
redis.call('ZADD', p..'running', ARGV[5], ARGV[2])
if cur[1] == 'cancelling' then return 2 end
return 1
"""

# ARGV: prefix, id, epoch, stage, progress, now
_PROGRESS = """
local key = ARGV[1]..'task:'..ARGV[2]
local cur = redis.call('HMGET', key, 'status', 'attempt')
if cur[1] ~= 'processing' or cur[2] ~= ARGV[3] then return 0 end
redis.call('HSET', key, 'stage', ARGV[4], 'progress', ARGV[5], 'updated_at', ARGV[6])
return 1
"""

# ARGV: prefix, id, epoch ('' = not tied to an attempt), allowed current statuses (comma list),
#       new status, now, ttl, stage, progress, result, error
_FINISH = (
    _COMMON
    + """
local id = ARGV[2]
local key = tkey(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'doc_id', 'created_at', 'owner',
                       'attempt_started_at', 'tenant')
if not cur[1] then return 'missing' end
if not string.find(','..ARGV[4]..',', ','..cur[1]..',', 1, true) then return cur[1] end
if ARGV[3] ~= '' and cur[2] ~= ARGV[3] then return 'stale' end
local now = ARGV[6]
if ARGV[3] ~= '' then add_history(key, cur[2], cur[5], cur[6], now, ARGV[5], ARGV[11]) end
redis.call('HSET', key, 'stage', ARGV[8], 'progress', ARGV[9], 'result', ARGV[10], 'error', ARGV[11])
finalize(cur[7], id, key, cur[1], ARGV[5], cur[4], cur[3], now, ARGV[7])
return 'ok'
"""
)

# Hand a running task back to the queue (lease expired, owner restarted, shutdown, transient
# failure), or dead-letter it when its failures reach the limit.
# ARGV: prefix, id, owner ('' = any), now, max_failures, ttl_failed, lease_before ('' = any),
#       not_before ('' = now), outcome, error, counts_as_failure ('1'/'0'), epoch ('' = any)
_REQUEUE = (
    _COMMON
    + """
local id = ARGV[2]
local key = tkey(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner', 'lease_until', 'queue_score',
                       'created_at', 'doc_id', 'attempt_started_at', 'tenant')
local t = cur[9]
if cur[1] ~= 'processing' and cur[1] ~= 'cancelling' then
  if t then stop_running(t, id) else redis.call('ZREM', p..'running', id) end
  return 'skipped'
end
if cur[3] == '' then return 'queued' end
if ARGV[3] ~= '' and cur[3] ~= ARGV[3] then return 'not-owner' end
if ARGV[12] ~= '' and cur[2] ~= ARGV[12] then return 'stale' end
if ARGV[7] ~= '' and tonumber(cur[4]) >= tonumber(ARGV[7]) then return 'alive' end
local now = ARGV[4]
add_history(key, cur[2], cur[3], cur[8], now, ARGV[9], ARGV[10])
stop_running(t, id)
local failures = tonumber(redis.call('HGET', key, 'failures') or '0') or 0
if ARGV[11] == '1' then failures = redis.call('HINCRBY', key, 'failures', 1) end
if ARGV[11] == '1' and cur[1] == 'processing' and failures >= tonumber(ARGV[5]) then
  redis.call('HSET', key, 'stage', 'failed',
             'error', 'gave up after '..failures..' failed attempts; last: '..ARGV[10])
  finalize(t, id, key, 'processing', 'failed', cur[6], cur[7], now, ARGV[6])
  return 'failed'
end
redis.call('HSET', key, 'owner', '', 'lease_until', '', 'updated_at', now, 'not_before', ARGV[8])
if cur[1] == 'processing' then
  redis.call('HSET', key, 'status', 'pending', 'stage', 'queued')
  redis.call('ZREM', idx(t, 'processing'), id)
  redis.call('ZADD', idx(t, 'pending'), cur[6], id)
end
if ARGV[8] ~= '' and cur[1] == 'processing' then
  redis.call('HSET', key, 'stage', 'retry-wait')
  redis.call('ZADD', p..'dq:'..t, ARGV[8], id)
else
  redis.call('ZADD', p..'q:'..t, cur[5], id)
end
redis.call('ZADD', p..'queued', cur[6], id)
redis.call('SADD', p..'active', t)
return 'requeued'
"""
)

_SET_IF_EXISTS = """
if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('HSET', KEYS[1], ARGV[1], ARGV[2]) return 1 end
return 0
"""

# ARGV: prefix, id, now, ttl_cancelled
_REQUEST_CANCEL = (
    _COMMON
    + """
local id = ARGV[2]
local key = tkey(id)
local cur = redis.call('HMGET', key, 'status', 'attempt', 'doc_id', 'created_at', 'tenant')
if not cur[1] then return 'missing' end
local t = cur[5]
if cur[1] == 'pending' and cur[2] == '0' then
  redis.call('HSET', key, 'stage', 'cancelled', 'error', 'cancelled by user')
  finalize(t, id, key, 'pending', 'cancelled', cur[4], cur[3], ARGV[3], ARGV[4])
  return 'now:cancelled'
end
if cur[1] == 'pending' or cur[1] == 'processing' then
  -- It ran before (or runs now): its partial data must be removed, so a worker finishes the cancel.
  redis.call('HSET', key, 'status', 'cancelling', 'stage', 'cleanup', 'cancel_requested', '1',
             'updated_at', ARGV[3])
  redis.call('ZREM', idx(t, cur[1]), id)
  redis.call('ZADD', idx(t, 'cancelling'), cur[4], id)
  if cur[1] == 'pending' and redis.call('ZSCORE', p..'dq:'..t, id) then
    redis.call('ZREM', p..'dq:'..t, id)
    redis.call('ZADD', p..'q:'..t, redis.call('HGET', key, 'queue_score'), id)
  end
  return 'now:cancelling'
end
return cur[1]
"""
)


@dataclass(frozen=True)
class CreateOutcome:
    #: 'created', 'duplicate' (same content already live/completed), 'idempotent' (same key),
    #: 'conflict' (doc id held by a live task with other content) or 'busy' (queue full).
    kind: str
    #: The new task, or the existing task the caller should be pointed to.
    task_id: str

    @property
    def created(self) -> bool:
        return self.kind == "created"


@dataclass(frozen=True)
class CancelOutcome:
    #: True when this call moved the task (to 'cancelled', or to 'cancelling' for a worker to finish).
    accepted: bool
    #: The task's status after the call, or 'missing'.
    status: str


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
    ) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttls = ttls
        self.max_queued = max_queued
        self.tenant_max_pending = tenant_max_pending
        self.tenant_max_running = tenant_max_running
        self.idempotency_ttl = idempotency_ttl
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._progress = redis.register_script(_PROGRESS)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)
        self._request_cancel = redis.register_script(_REQUEST_CANCEL)
        self._set_if_exists = redis.register_script(_SET_IF_EXISTS)
        #: Pub/sub channel that carries the id of every task written (src/tasks/fanout.py).
        self.events_channel = f"{prefix}task-events"

    # ----------------------------------------------------------------- creation and reads
    @staticmethod
    def new_task_id() -> str:
        return str(uuid.uuid4())

    async def create(self, record: TaskRecord, *, idempotency_key: str | None = None) -> CreateOutcome:
        """Persist a pending task and enqueue it atomically (before the 202 is sent)."""
        fields = record.to_redis()
        queue_score = f"{(9 - record.priority) * PRIORITY_STEP + record.created_at:.6f}"
        fields["queue_score"] = queue_score
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        created, task_id, kind = await self._create(
            args=[
                self.prefix,
                record.task_id,
                record.tenant,
                record.doc_id,
                queue_score,
                str(record.created_at),
                record.content_sha256,
                idempotency_key or "",
                str(self.max_queued),
                str(self.tenant_max_pending),
                str(self.idempotency_ttl),
                *flat,
            ]
        )
        outcome = CreateOutcome(kind=_s(kind), task_id=_s(task_id))
        if outcome.created:
            await self._announce(outcome.task_id)
        return outcome

    async def get(self, task_id: str) -> TaskRecord | None:
        raw = await self.redis.hgetall(self._key(task_id))
        return TaskRecord.from_redis(_decode(raw)) if raw else None

    async def get_many(self, task_ids: list[str]) -> list[TaskRecord]:
        if not task_ids:
            return []
        async with self.redis.pipeline(transaction=False) as pipe:
            for task_id in task_ids:
                pipe.hgetall(self._key(task_id))
            rows = await pipe.execute()
        return [TaskRecord.from_redis(_decode(raw)) for raw in rows if raw]

    async def list(
        self, *, tenant: str, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[TaskRecord]]:
        """Newest first. Records whose TTL ended but are still indexed are skipped."""
        index = f"{self.prefix}idx:{tenant}:{status.value if status else 'all'}"
        total, ids = await _pipeline_results(
            self.redis, lambda pipe: (pipe.zcard(index), pipe.zrevrange(index, offset, offset + limit - 1))
        )
        return int(total), await self.get_many([_s(i) for i in ids])

    async def tenants_seen(self) -> list[str]:
        return sorted(_s(t) for t in await self.redis.smembers(f"{self.prefix}tenants:seen"))

    async def counts(self, tenant: str | None = None) -> dict[str, int]:
        """Tasks per status for one tenant, or summed over all tenants."""
        tenants = [tenant] if tenant else await self.tenants_seen()
        totals = dict.fromkeys(_ALL_STATUSES, 0)
        if not tenants:
            return totals
        async with self.redis.pipeline(transaction=False) as pipe:
            for t in tenants:
                for status in _ALL_STATUSES:
                    pipe.zcard(f"{self.prefix}idx:{t}:{status}")
            rows = await pipe.execute()
        for i, count in enumerate(rows):
            totals[_ALL_STATUSES[i % len(_ALL_STATUSES)]] += int(count)
        return totals

    async def pending_count(self, tenant: str | None = None) -> int:
        """Tasks waiting to run, including retries waiting out their backoff."""
        if tenant is None:
            return int(await self.redis.zcard(f"{self.prefix}queued"))
        queued, delayed = await _pipeline_results(
            self.redis,
            lambda pipe: (pipe.zcard(f"{self.prefix}q:{tenant}"), pipe.zcard(f"{self.prefix}dq:{tenant}")),
        )
        return int(queued) + int(delayed)

    async def running_count(self, tenant: str) -> int:
        return int(await self.redis.hget(f"{self.prefix}run:count", tenant) or 0)

    async def release_doc(self, tenant: str, doc_id: str) -> None:
        """Forget which task owns ``doc_id`` (the document was deleted from the knowledge base)."""
        await self.redis.delete(f"{self.prefix}doc:{tenant}:{doc_id}")

    async def doc_holder(self, tenant: str, doc_id: str) -> TaskRecord | None:
        """The live or completed task recorded for ``doc_id``, if its record still exists."""
        holder = await self.redis.get(f"{self.prefix}doc:{tenant}:{doc_id}")
        return await self.get(_s(holder)) if holder else None

    async def live_task_for_doc(self, tenant: str, doc_id: str) -> str | None:
        record = await self.doc_holder(tenant, doc_id)
        return record.task_id if record and not record.status.is_final else None

    async def claim(self, owner: str, lease_seconds: float) -> TaskRecord | None:
        """Atomically take the next pending task: attempt += 1, lease until now + lease_seconds."""
        now = time.time()
        raw = await self._claim(
            args=[
                self.prefix,
                f"{now:.6f}",
                f"{now + lease_seconds:.6f}",
                owner,
                str(self.tenant_max_running),
            ]
        )
        if not raw:
            return None
        it = iter(raw)
        record = TaskRecord.from_redis(_decode(dict(zip(it, it, strict=True))))
        await self._announce(record.task_id)
        return record

    async def heartbeat(self, task_id: str, epoch: int, owner: str, lease_seconds: float) -> int:
        """Renew the lease of attempt ``epoch``: 0 = lost, 1 = held, 2 = held but cancel requested."""
        lease_until = time.time() + lease_seconds
        return int(
            await self._heartbeat(args=[self.prefix, task_id, str(epoch), owner, f"{lease_until:.6f}"])
        )

    async def report_progress(self, task_id: str, epoch: int, stage: str, progress: float) -> bool:
        ok = await self._progress(
            args=[self.prefix, task_id, str(epoch), stage, f"{progress:.1f}", f"{time.time():.6f}"]
        )
        if int(ok):
            await self._announce(task_id)
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
    ) -> str:
        """Record the end of attempt ``epoch``; returns 'ok', 'stale', 'missing' or the current status.

        completed/failed are accepted only from 'processing' (a cancel that arrived meanwhile wins),
        cancelled from 'processing' or 'cancelling'.
        """
        assert status in FINAL_STATUSES
        allowed = "processing,cancelling" if status == TaskStatus.CANCELLED else "processing"
        return await self._transition(task_id, str(epoch), allowed, status, result, error, stage, progress)

    async def request_cancel(self, task_id: str) -> CancelOutcome:
        """Cancel a task that never ran at once; mark a running (or re-queued) one 'cancelling'."""
        outcome = await self._request_cancel(
            args=[self.prefix, task_id, f"{time.time():.6f}", str(self.ttls["cancelled"])]
        )
        outcome = _s(outcome)
        if outcome.startswith("now:"):
            await self._announce(task_id)
        return CancelOutcome(accepted=outcome.startswith("now:"), status=outcome.removeprefix("now:"))

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
    ) -> str:
        """Hand a running task back to the queue (now, or at ``not_before``), or dead-letter it."""
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
        await self._announce(task_id)
        return _s(out)

    async def running_ids(self, *, lease_before: float | None = None) -> list[str]:
        key = f"{self.prefix}running"
        ids = await self.redis.zrangebyscore(key, "-inf", f"({lease_before}" if lease_before else "+inf")
        return [_s(i) for i in ids]

    async def prune_expired(self) -> list[str]:
        """Drop index entries of records whose TTL ended; returns their ids (for file cleanup)."""
        now = time.time()
        expiry = f"{self.prefix}expiry"
        members = [_s(m) for m in await self.redis.zrangebyscore(expiry, "-inf", now)]
        if not members:
            return []
        async with self.redis.pipeline(transaction=True) as pipe:
            for member in members:
                tenant, _, task_id = member.partition("/")
                for index in ["all", *_ALL_STATUSES]:
                    pipe.zrem(f"{self.prefix}idx:{tenant}:{index}", task_id)
            pipe.zrem(expiry, *members)
            await pipe.execute()
        return [m.partition("/")[2] for m in members]

    async def record_webhook(self, task_id: str, delivery: dict) -> None:
        """Attach webhook delivery attempts to a finished task (its TTL is kept); a record that
        expired meanwhile is not resurrected."""
        await self._set_if_exists(keys=[self._key(task_id)], args=["webhook", json.dumps(delivery)])

    async def ping(self) -> float:
        """Round-trip time to Redis in milliseconds."""
        start = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - start) * 1000

    # ----------------------------------------------------------------- helpers
    def _key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    async def _announce(self, task_id: str) -> None:
        """Publish "task_id changed" for the event streams of every instance. Best effort: the write
        already happened, and streams resynchronise when their subscription is re-established."""
        try:
            await self.redis.publish(self.events_channel, task_id)
        except RedisError as exc:
            _log.debug("task change notice not sent: %s", exc)

    async def _transition(
        self,
        task_id: str,
        epoch: str,
        allowed: str,
        new: TaskStatus,
        result: dict | None,
        error: str | None,
        stage: str,
        progress: float,
    ) -> str:
        out = await self._finish(
            args=[
                self.prefix,
                task_id,
                epoch,
                allowed,
                new.value,
                f"{time.time():.6f}",
                str(self.ttls[new.value]),
                stage,
                f"{progress:.1f}",
                json.dumps(result) if result is not None else "",
                error or "",
            ]
        )
        if _s(out) == "ok":
            await self._announce(task_id)
        return _s(out)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


async def _pipeline_results(redis: aioredis.Redis, build) -> list:
    async with redis.pipeline(transaction=False) as pipe:
        build(pipe)
        return await pipe.execute()
