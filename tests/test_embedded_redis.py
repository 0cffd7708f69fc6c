"""The embedded Redis is stopped and probed with one attempt, never redis-py's retry loop.

redis-py retries a failed command three times with backoff by default. SHUTDOWN closes the
socket by design, so with the default client every clean stop of the service paid ~4 s of
reconnect backoff (and more on a loaded machine). These tests count connection attempts
instead of timing anything.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from redis.asyncio.connection import UnixDomainSocketConnection

from src.core.embedded_redis import EmbeddedRedis

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]


@pytest.fixture
def connects(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Every unix-socket connection attempt redis-py makes, by socket path."""
    attempts: list[str] = []
    original = UnixDomainSocketConnection._connect

    async def counting(self: UnixDomainSocketConnection):  # type: ignore[no-untyped-def]
        attempts.append(self.path)
        return await original(self)

    monkeypatch.setattr(UnixDomainSocketConnection, "_connect", counting)
    return attempts


async def test_stop_sends_shutdown_once_and_the_server_exits(tmp_path: Path, connects: list[str]) -> None:
    server = EmbeddedRedis(tmp_path / "redis", check_seconds=60)
    await server.start()
    pid = server.pid
    assert pid is not None
    connects.clear()

    await server.stop()

    # One connection for SHUTDOWN; the socket closing afterwards is expected, not retried.
    assert connects == [str(server.socket)]
    assert server._proc is not None and server._proc.poll() is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert (tmp_path / "redis" / "tasks.rdb").exists()  # SHUTDOWN saved first


async def test_probing_a_dead_server_tries_once(tmp_path: Path, connects: list[str]) -> None:
    server = EmbeddedRedis(tmp_path / "redis", check_seconds=60)
    await server.start()
    try:
        server._proc.kill()  # type: ignore[union-attr]
        await asyncio.to_thread(server._proc.wait, 10)  # type: ignore[union-attr]
        connects.clear()
        assert await server._answers() is False
        assert connects == [str(server.socket)]
    finally:
        await server.stop()
