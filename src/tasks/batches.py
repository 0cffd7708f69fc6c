"""Batches in Redis: which tasks one ``POST /batch`` created and which of its files were refused.

A batch is only a grouping: each of its tasks is an ordinary task (claimed, cancelled and expired
like any other), so a batch's state is always read from its tasks' records, never copied. The batch
itself is one hash ``batch:<id>`` (src/tasks/keys.py), written once with a TTL; `keep` pushes the
TTL back while tasks of the batch are still live, so the batch outlives every task record it names.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from src.tasks.keys import Keys


@dataclass(frozen=True)
class BatchRecord:
    batch_id: str
    tenant: str
    created_at: float
    #: One entry per accepted file: {filename, task_id, doc_id, duplicate} (several files may name
    #: the same task: a duplicate of an earlier file or task).
    tasks: list[dict[str, Any]] = field(default_factory=list)
    #: One entry per refused file: {filename, status_code, error, detail}.
    errors: list[dict[str, Any]] = field(default_factory=list)


class BatchStore:
    def __init__(self, redis: aioredis.Redis, keys: Keys, *, ttl_seconds: int) -> None:
        self.redis = redis
        self.keys = keys
        self.ttl_seconds = ttl_seconds

    @staticmethod
    def new_batch_id() -> str:
        return str(uuid.uuid4())

    async def create(
        self, tenant: str, tasks: list[dict[str, Any]], errors: list[dict[str, Any]]
    ) -> BatchRecord:
        record = BatchRecord(self.new_batch_id(), tenant, time.time(), tasks, errors)
        key = self.keys.batch(record.batch_id)
        mapping = {
            "tenant": tenant,
            "created_at": f"{record.created_at:.6f}",
            "tasks": json.dumps(tasks),
            "errors": json.dumps(errors),
        }
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hset(key, mapping=mapping)
            pipe.expire(key, self.ttl_seconds)
            await pipe.execute()
        return record

    async def get(self, batch_id: str) -> BatchRecord | None:
        raw = await self.redis.hgetall(self.keys.batch(batch_id))
        if not raw:
            return None
        values = {_s(k): _s(v) for k, v in raw.items()}
        return BatchRecord(
            batch_id,
            values["tenant"],
            float(values["created_at"]),
            json.loads(values["tasks"]),
            json.loads(values["errors"]),
        )

    async def keep(self, batch_id: str) -> None:
        """Some task of the batch is still live: the batch lives for a full TTL from now."""
        await self.redis.expire(self.keys.batch(batch_id), self.ttl_seconds)


def _s(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value
