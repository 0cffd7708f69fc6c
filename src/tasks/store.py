"""Task records in Redis: the single source of truth for task state.

Every state transition is one Lua script, so it is atomic and fenced:
a write that names an attempt (epoch) older than the task's current one is refused,
which is what keeps a zombie attempt from overwriting a newer one.

Keys (all under ``prefix``):
  task:<id>            hash, the TaskRecord
  pending              zset id -> queue score (lower runs first)
  running              zset id -> lease expiry (unix seconds)
  idx:all              zset id -> created_at   (listing, newest first)
  idx:<status>         zset id -> created_at   (filters and counts)
  expiry               zset id -> expires_at   (prunes the indexes when a record's TTL ends)
  doc:<doc_id>         string, the live task that owns a doc id (no two live tasks per document)
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass

import redis.asyncio as aioredis

from src.tasks.models import FINAL_STATUSES, TaskRecord, TaskStatus

_ALL_STATUSES = [s.value for s in TaskStatus]

# KEYS none (keys are derived from the prefix; single-node Redis only).
# ARGV: prefix, task_id, doc_id, queue_score, created_at, then field/value pairs.
_CREATE = """
local p = ARGV[1]
local id = ARGV[2]
local lock = p..'doc:'..ARGV[3]
local holder = redis.call('GET', lock)
if holder and holder ~= id then
  local st = redis.call('HGET', p..'task:'..holder, 'status')
  if st == 'pending' or st == 'processing' then
    return {0, holder}
  end
end
local key = p..'task:'..id
if redis.call('EXISTS', key) == 1 then
  return {0, id}
end
local fields = {}
for i = 6, #ARGV do fields[#fields + 1] = ARGV[i] end
redis.call('HSET', key, unpack(fields))
redis.call('SET', lock, id)
redis.call('ZADD', p..'pending', ARGV[4], id)
redis.call('ZADD', p..'idx:all', ARGV[5], id)
redis.call('ZADD', p..'idx:pending', ARGV[5], id)
return {1, id}
"""

# ARGV: prefix, now, lease_until, owner
_CLAIM = """
local p = ARGV[1]
while true do
  local popped = redis.call('ZPOPMIN', p..'pending')
  if #popped == 0 then return false end
  local id = popped[1]
  local key = p..'task:'..id
  if redis.call('HGET', key, 'status') == 'pending' then
    redis.call('HINCRBY', key, 'attempt', 1)
    redis.call('HSET', key, 'status', 'processing', 'owner', ARGV[4], 'lease_until', ARGV[3],
               'updated_at', ARGV[2])
    if redis.call('HGET', key, 'started_at') == '' then
      redis.call('HSET', key, 'started_at', ARGV[2])
    end
    local created = redis.call('HGET', key, 'created_at')
    redis.call('ZADD', p..'running', ARGV[3], id)
    redis.call('ZREM', p..'idx:pending', id)
    redis.call('ZADD', p..'idx:processing', created, id)
    return redis.call('HGETALL', key)
  end
end
"""

# ARGV: prefix, id, epoch, owner, lease_until
_HEARTBEAT = """
local p = ARGV[1]
local key = p..'task:'..ARGV[2]
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner')
if cur[1] ~= 'processing' or cur[2] ~= ARGV[3] or cur[3] ~= ARGV[4] then return 0 end
redis.call('HSET', key, 'lease_until', ARGV[5])
redis.call('ZADD', p..'running', ARGV[5], ARGV[2])
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

# ARGV: prefix, id, epoch ('' = any attempt), expected status, new status, now, ttl, stage, progress,
#       result, error
_FINISH = """
local p = ARGV[1]
local id = ARGV[2]
local key = p..'task:'..id
local cur = redis.call('HMGET', key, 'status', 'attempt', 'doc_id', 'created_at')
if not cur[1] then return 'missing' end
if cur[1] ~= ARGV[4] then return cur[1] end
if ARGV[3] ~= '' and cur[2] ~= ARGV[3] then return 'stale' end
local expires = tonumber(ARGV[6]) + tonumber(ARGV[7])
redis.call('HSET', key, 'status', ARGV[5], 'finished_at', ARGV[6], 'updated_at', ARGV[6],
           'stage', ARGV[8], 'progress', ARGV[9], 'result', ARGV[10], 'error', ARGV[11],
           'owner', '', 'lease_until', '', 'expires_at', tostring(expires))
redis.call('ZREM', p..'pending', id)
redis.call('ZREM', p..'running', id)
redis.call('ZREM', p..'idx:'..ARGV[4], id)
redis.call('ZADD', p..'idx:'..ARGV[5], cur[4], id)
redis.call('ZADD', p..'expiry', expires, id)
redis.call('EXPIRE', key, ARGV[7])
local lock = p..'doc:'..cur[3]
if redis.call('GET', lock) == id then redis.call('DEL', lock) end
return 'ok'
"""

# Put a processing task back in the queue (its lease expired or its owner restarted), or
# dead-letter it past the attempt limit.
# ARGV: prefix, id, owner ('' = any), now, max_attempts, ttl_failed, only_if_lease_before ('' = any)
_REQUEUE = """
local p = ARGV[1]
local id = ARGV[2]
local key = p..'task:'..id
local cur = redis.call('HMGET', key, 'status', 'attempt', 'owner', 'lease_until', 'queue_score',
                       'created_at', 'doc_id')
if cur[1] ~= 'processing' then
  redis.call('ZREM', p..'running', id)
  return 'skipped'
end
if ARGV[3] ~= '' and cur[3] ~= ARGV[3] then return 'not-owner' end
if ARGV[7] ~= '' and tonumber(cur[4]) >= tonumber(ARGV[7]) then return 'alive' end
redis.call('ZREM', p..'running', id)
redis.call('ZREM', p..'idx:processing', id)
if tonumber(cur[2]) >= tonumber(ARGV[5]) then
  local expires = tonumber(ARGV[4]) + tonumber(ARGV[6])
  redis.call('HSET', key, 'status', 'failed', 'stage', 'failed', 'finished_at', ARGV[4],
             'updated_at', ARGV[4], 'owner', '', 'lease_until', '', 'expires_at', tostring(expires),
             'error', 'gave up after '..cur[2]..' attempts: the worker running it stopped or lost its lease')
  redis.call('ZADD', p..'idx:failed', cur[6], id)
  redis.call('ZADD', p..'expiry', expires, id)
  redis.call('EXPIRE', key, ARGV[6])
  local lock = p..'doc:'..cur[7]
  if redis.call('GET', lock) == id then redis.call('DEL', lock) end
  return 'failed'
end
redis.call('HSET', key, 'status', 'pending', 'stage', 'queued', 'owner', '', 'lease_until', '',
           'updated_at', ARGV[4])
redis.call('ZADD', p..'pending', cur[5], id)
redis.call('ZADD', p..'idx:pending', cur[6], id)
return 'requeued'
"""


@dataclass(frozen=True)
class CreateOutcome:
    created: bool
    #: The new task, or the live task that already owns this doc id.
    task_id: str


@dataclass(frozen=True)
class CancelOutcome:
    cancelled: bool
    #: The task's status after the call ('cancelled' on success), or 'missing'.
    status: str


class TaskStore:
    """Async, fenced task-state API over one Redis connection pool."""

    def __init__(self, redis: aioredis.Redis, *, prefix: str = "ragsvc:", ttls: dict[str, int]) -> None:
        self.redis = redis
        self.prefix = prefix
        self.ttls = ttls
        self._create = redis.register_script(_CREATE)
        self._claim = redis.register_script(_CLAIM)
        self._heartbeat = redis.register_script(_HEARTBEAT)
        self._progress = redis.register_script(_PROGRESS)
        self._finish = redis.register_script(_FINISH)
        self._requeue = redis.register_script(_REQUEUE)

    # ----------------------------------------------------------------- creation and reads
    @staticmethod
    def new_task_id() -> str:
        return str(uuid.uuid4())

    async def create(self, record: TaskRecord) -> CreateOutcome:
        """Persist a pending task and enqueue it atomically (before the 202 is sent)."""
        fields = record.to_redis()
        queue_score = f"{record.created_at:.6f}"
        fields["queue_score"] = queue_score
        flat: list[str] = []
        for key, value in fields.items():
            flat += [key, value]
        created, task_id = await self._create(
            args=[self.prefix, record.task_id, record.doc_id, queue_score, str(record.created_at), *flat]
        )
        return CreateOutcome(created=bool(int(created)), task_id=_s(task_id))

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
        self, *, status: TaskStatus | None, offset: int, limit: int
    ) -> tuple[int, list[TaskRecord]]:
        """Newest first. Records whose TTL ended but are still indexed are skipped."""
        index = f"{self.prefix}idx:{status.value if status else 'all'}"
        total, ids = await _pipeline_results(
            self.redis, lambda pipe: (pipe.zcard(index), pipe.zrevrange(index, offset, offset + limit - 1))
        )
        return int(total), await self.get_many([_s(i) for i in ids])

    async def counts(self) -> dict[str, int]:
        async with self.redis.pipeline(transaction=False) as pipe:
            for status in _ALL_STATUSES:
                pipe.zcard(f"{self.prefix}idx:{status}")
            rows = await pipe.execute()
        return dict(zip(_ALL_STATUSES, (int(r) for r in rows), strict=True))

    async def pending_count(self) -> int:
        return int(await self.redis.zcard(f"{self.prefix}pending"))

    async def live_task_for_doc(self, doc_id: str) -> str | None:
        holder = await self.redis.get(f"{self.prefix}doc:{doc_id}")
        if not holder:
            return None
        record = await self.get(_s(holder))
        return record.task_id if record and not record.status.is_final else None

    # ----------------------------------------------------------------- transitions
    async def claim(self, owner: str, lease_seconds: float) -> TaskRecord | None:
        """Atomically take the next pending task: attempt += 1, lease until now + lease_seconds."""
        now = time.time()
        raw = await self._claim(args=[self.prefix, f"{now:.6f}", f"{now + lease_seconds:.6f}", owner])
        if not raw:
            return None
        it = iter(raw)
        return TaskRecord.from_redis(_decode(dict(zip(it, it, strict=True))))

    async def heartbeat(self, task_id: str, epoch: int, owner: str, lease_seconds: float) -> bool:
        lease_until = time.time() + lease_seconds
        ok = await self._heartbeat(args=[self.prefix, task_id, str(epoch), owner, f"{lease_until:.6f}"])
        return bool(int(ok))

    async def report_progress(self, task_id: str, epoch: int, stage: str, progress: float) -> bool:
        ok = await self._progress(
            args=[self.prefix, task_id, str(epoch), stage, f"{progress:.1f}", f"{time.time():.6f}"]
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
    ) -> str:
        """Record the end of attempt ``epoch``; returns 'ok', 'stale', 'missing' or the current status."""
        assert status in FINAL_STATUSES
        return await self._transition(
            task_id, str(epoch), TaskStatus.PROCESSING, status, result, error, stage, progress
        )

    async def cancel_pending(self, task_id: str) -> CancelOutcome:
        outcome = await self._transition(
            task_id, "", TaskStatus.PENDING, TaskStatus.CANCELLED, None, "cancelled by user", "cancelled", 0.0
        )
        if outcome == "ok":
            return CancelOutcome(cancelled=True, status=TaskStatus.CANCELLED.value)
        return CancelOutcome(cancelled=False, status=outcome)

    async def requeue(
        self, task_id: str, *, owner: str | None, max_attempts: int, lease_before: float | None
    ) -> str:
        """Return a processing task to the queue, or dead-letter it past ``max_attempts``."""
        out = await self._requeue(
            args=[
                self.prefix,
                task_id,
                owner or "",
                f"{time.time():.6f}",
                str(max_attempts),
                str(self.ttls["failed"]),
                "" if lease_before is None else f"{lease_before:.6f}",
            ]
        )
        return _s(out)

    async def running_ids(self, *, lease_before: float | None = None) -> list[str]:
        key = f"{self.prefix}running"
        ids = await self.redis.zrangebyscore(key, "-inf", f"({lease_before}" if lease_before else "+inf")
        return [_s(i) for i in ids]

    async def prune_expired(self) -> list[str]:
        """Drop index entries of records whose TTL ended; returns their ids (for file cleanup)."""
        now = time.time()
        expiry = f"{self.prefix}expiry"
        ids = [_s(i) for i in await self.redis.zrangebyscore(expiry, "-inf", now)]
        if ids:
            async with self.redis.pipeline(transaction=True) as pipe:
                for index in ["all", *_ALL_STATUSES]:
                    pipe.zrem(f"{self.prefix}idx:{index}", *ids)
                pipe.zrem(expiry, *ids)
                await pipe.execute()
        return ids

    async def ping(self) -> float:
        """Round-trip time to Redis in milliseconds."""
        start = time.perf_counter()
        await self.redis.ping()
        return (time.perf_counter() - start) * 1000

    # ----------------------------------------------------------------- helpers
    def _key(self, task_id: str) -> str:
        return f"{self.prefix}task:{task_id}"

    async def _transition(
        self,
        task_id: str,
        epoch: str,
        expected: TaskStatus,
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
                expected.value,
                new.value,
                f"{time.time():.6f}",
                str(self.ttls[new.value]),
                stage,
                f"{progress:.1f}",
                json.dumps(result) if result is not None else "",
                error or "",
            ]
        )
        return _s(out)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _decode(raw: dict) -> dict[str, str]:
    return {_s(k): _s(v) for k, v in raw.items()}


async def _pipeline_results(redis: aioredis.Redis, build) -> list:
    async with redis.pipeline(transaction=False) as pipe:
        build(pipe)
        return await pipe.execute()
