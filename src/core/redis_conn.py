"""Redis connection: an external server (REDIS_URL) or an embedded one we start ourselves.

The embedded server (`src/core/embedded_redis.py`) is a real redis-server persisted with AOF
under DATA_DIR/redis and supervised: if it dies it is restarted on the same socket and data,
and the pool below reconnects to it. It outlives a kill -9 of this service, and the next start
re-attaches to it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from src.core.config import Settings
from src.core.embedded_redis import EmbeddedRedis

log = logging.getLogger(__name__)


@dataclass
class RedisHandle:
    """The client plus, when embedded, the server object that must stay alive with it."""

    client: aioredis.Redis
    url: str
    embedded: EmbeddedRedis | None = field(default=None, repr=False)

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None


async def connect_redis(settings: Settings) -> RedisHandle:
    """Open one blocking connection pool (bursts wait for a connection instead of failing)."""
    embedded = None
    if settings.redis_url:
        url = settings.redis_url
    else:
        embedded = EmbeddedRedis(settings.redis_dir)
        await embedded.start()
        url = embedded.url
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=settings.redis_max_connections,
        timeout=10,
        decode_responses=True,
        health_check_interval=30,
        # After a Redis restart pooled connections are dead: reconnect (with a short backoff)
        # instead of failing the first command on each of them.
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), retries=2),
        retry_on_error=[RedisConnectionError, RedisTimeoutError],
    )
    client = aioredis.Redis(connection_pool=pool)
    await client.ping()
    return RedisHandle(client=client, url=url, embedded=embedded)
