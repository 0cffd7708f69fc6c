"""Unit layer: the task queue against the real Redis of tests/conftest.py, no LightRAG, no app.

Every test gets its own key prefix, so tests never see each other's keys."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable

import pytest
import redis.asyncio as aioredis

from src.tasks.store import TaskStore

TTLS = {"completed": 3600, "failed": 7200, "cancelled": 1800}


@pytest.fixture
async def redis(redis_url: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.from_url(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
def make_store(redis: aioredis.Redis) -> Callable[..., TaskStore]:
    """A store factory: every store of one test shares one fresh prefix (like two instances would)."""
    prefix = f"unit:{uuid.uuid4().hex[:8]}:"

    def make(**kwargs) -> TaskStore:
        return TaskStore(redis, prefix=prefix, ttls=dict(TTLS), **kwargs)

    return make


@pytest.fixture
def store(make_store: Callable[..., TaskStore]) -> TaskStore:
    return make_store()
