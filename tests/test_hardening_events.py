"""Issue 12, item 14: one task-change fan-out per process feeds every SSE stream; idle streams cost
no Redis reads; slow clients are dropped; streams per tenant are capped (429)."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import httpx
import pytest
import redis

from src.tasks.fanout import TaskEventHub, TooManyStreams
from tests.conftest import Service, upload, wait_for_task
from tests.procs import service_env, stop_process
from tests.procs import start_service as start_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]
RESYNC_TIMEOUT = pytest.mark.timeout(60)

CLIENTS = 200
IDLE_SECONDS = 3.0
#: Commands that read state (what a polling stream issues); writes and pub/sub are not counted.
READ_COMMANDS = (
    "hgetall", "hget", "hmget", "get", "mget", "exists", "zcard", "zrange", "zrevrange", "zrangebyscore",
    "zscore", "smembers", "scard", "ttl",
)  # fmt: skip


def _reads(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return sum(int(stats.get(f"cmdstat_{name}", {}).get("calls", 0)) for name in READ_COMMANDS)


async def _idle_reads(client: redis.Redis) -> int:
    before = await asyncio.to_thread(_reads, client)
    await asyncio.sleep(IDLE_SECONDS)
    return await asyncio.to_thread(_reads, client) - before


async def _watch(http: httpx.AsyncClient, connected: list, target: dict, done: asyncio.Event) -> bool:
    """One dashboard: open /events, report when connected, return once the target task's
    change arrived."""
    async with http.stream("GET", "/events") as response:
        assert response.status_code == 200
        buffer = ""
        async for chunk in response.aiter_text():
            if not buffer:
                connected.append(1)
                if len(connected) == CLIENTS:
                    done.set()
            buffer += chunk
            if target.get("id") and target["id"] in buffer:
                return True
    return False


async def test_many_streams_share_one_subscription_and_idle_streams_read_nothing(
    tmp_path: Path, redis_url: str, listen
) -> None:
    """Catches: each stream polling the 100 newest tasks 4x/s (Redis reads grow with connections x
    time; 200 streams saturated the CPU), and no cap on streams per tenant."""
    service_http = listen()
    env = service_env(
        tmp_path / "data",
        service_http,
        LLM_PROVIDER="offline",
        EMBEDDING_PROVIDER="hash",
        REDIS_URL=redis_url,
        REDIS_PREFIX=f"sse{uuid.uuid4().hex[:8]}:",
        SSE_MAX_STREAMS_PER_TENANT=str(CLIENTS),
    )
    proc = start_process(env, tmp_path / "service.log")
    stats = redis.Redis.from_url(redis_url)
    limits = httpx.Limits(max_connections=CLIENTS + 20, max_keepalive_connections=CLIENTS + 20)
    try:
        async with httpx.AsyncClient(base_url=service_http.url, timeout=120, limits=limits) as http:
            # Some history for the streams to start from.
            first = (await http.post("/insert/text", json={"text": "seed text " * 50})).json()
            await wait_for_task(http, first["task_id"])
            quiet = await _idle_reads(stats)

            connected: list = []
            target: dict = {}
            all_connected = asyncio.Event()
            watchers = [
                asyncio.create_task(_watch(http, connected, target, all_connected)) for _ in range(CLIENTS)
            ]
            await asyncio.wait_for(all_connected.wait(), 120)

            # The cap: one stream more than SSE_MAX_STREAMS_PER_TENANT is refused.
            over = await http.get("/events")
            assert over.status_code == 429 and over.json()["code"] == "too_many_streams"
            assert "retry-after" in over.headers

            busy = await _idle_reads(stats)
            print(f"Redis reads in {IDLE_SECONDS:g} s idle: {quiet} with no stream, {busy} with {CLIENTS}")
            assert busy <= quiet + 60, (quiet, busy)

            # A change made after everyone connected reaches every stream.
            change = (await http.post("/insert/text", json={"text": "fresh change " * 50})).json()
            target["id"] = change["task_id"]
            results = await asyncio.wait_for(asyncio.gather(*watchers), 120)
            assert all(results) and len(results) == CLIENTS
    finally:
        stats.close()
        stop_process(proc)


async def test_slow_subscriber_is_dropped_and_cap_is_enforced(service: Service) -> None:
    """Catches: an unbounded per-stream buffer (a client that never reads grows the server)."""
    store = service.services.store
    hub = TaskEventHub(store, max_per_tenant=2, queue_size=8)
    await hub.start()
    try:
        task_id = (await upload(service.client, "a.txt", b"some text to index " * 20)).json()["task_id"]
        await wait_for_task(service.client, task_id)
        slow = hub.subscribe("default")
        hub.subscribe("other")  # another tenant's stream receives nothing of this tenant
        second = hub.subscribe("default")
        with pytest.raises(TooManyStreams):
            hub.subscribe("default")
        second.close()
        assert hub.open_streams("default") == 1
        seen = hub.notices
        for _ in range(20):
            await store.redis.publish(store.events_channel, task_id)
        for _ in range(200):
            if hub.notices >= seen + 20:
                break
            await asyncio.sleep(0.02)
        assert slow.dropped
        assert await slow.next() is None  # its stream ends; the client reconnects with Last-Event-ID
        assert hub._by_tenant["other"] and all(s.queue.empty() for s in hub._by_tenant["other"])
    finally:
        await hub.stop()


@RESYNC_TIMEOUT
async def test_lost_subscription_is_reestablished_and_streams_resync(service: Service) -> None:
    """Catches: a fan-out that silently stops after its Redis connection drops (Redis restarted),
    leaving every stream without updates and unaware that notices were missed."""
    from src.tasks.fanout import RESYNC

    store = service.services.store
    hub = TaskEventHub(store, max_per_tenant=5, queue_size=64, reconnect_seconds=0.05)
    await hub.start()
    try:
        sub = hub.subscribe("default")
        killed = await store.redis.execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 1
        assert await asyncio.wait_for(sub.next(), 30) is RESYNC
        task_id = (await upload(service.client, "r.txt", b"after the reconnect " * 20)).json()["task_id"]
        while True:  # changes flow again through the new subscription
            item = await asyncio.wait_for(sub.next(), 60)
            if getattr(item, "task_id", None) == task_id:
                break
    finally:
        await hub.stop()


async def test_a_reconnect_during_shutdown_is_not_reported(
    service: Service, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches the misleading "re-established" line a stopping service logged: redis-py reconnects
    a pub/sub connection whose read was cancelled, which at shutdown is expected, not news."""
    hub = TaskEventHub(service.services.store, max_per_tenant=5, queue_size=64)
    await hub.start()
    caplog.set_level("INFO", logger="src.tasks.fanout")
    hub._on_reconnect(None)  # while running: reported
    await hub.stop()
    hub._on_reconnect(None)  # after stop: not
    assert sum("re-established" in r.getMessage() for r in caplog.records) == 1
