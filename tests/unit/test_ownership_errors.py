"""PostgreSQL connection errors in workspace ownership (src/ingestion/ownership.py), with a scripted
stand-in for the asyncpg connection: an unreachable server, a query that fails, a ping that fails. In
each case the instance must stop claiming the workspace at once, say so to its listeners, drop the
broken connection, and get it back on a later try. (Real PostgreSQL: tests/test_scale_ownership.py.)"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from src.ingestion.ownership import PgOwnership

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class FakeConnection:
    """Answers like asyncpg until ``fail`` names an exception; records terminate()."""

    def __init__(self, server: FakeServer) -> None:
        self.server = server
        self.closed = False

    def is_closed(self) -> bool:
        return self.closed

    async def execute(self, *_: Any) -> str:
        self.server.check()
        return "SET"

    async def fetchval(self, sql: str, *_: Any) -> Any:
        self.server.check()
        return True if "advisory_lock" in sql else 1

    def terminate(self) -> None:
        self.closed = True
        self.server.terminated += 1

    async def close(self) -> None:
        self.closed = True


class FakeServer:
    def __init__(self) -> None:
        self.fail: BaseException | None = None
        self.refuse = False
        self.connects = 0
        self.terminated = 0

    def check(self) -> None:
        if self.fail is not None:
            raise self.fail

    async def connect(self) -> FakeConnection:
        if self.refuse:
            raise OSError(111, "Connection refused")
        self.connects += 1
        return FakeConnection(self)


def ownership(server: FakeServer, **kwargs: Any) -> tuple[PgOwnership, list[str]]:
    owner = PgOwnership(server.connect, instance_id="i1", workspace_for=lambda t: f"ws-{t}", **kwargs)
    lost: list[str] = []

    async def on_lost(tenant: str) -> None:
        lost.append(tenant)

    owner.add_listener(on_lost=on_lost)
    return owner, lost


async def test_an_unreachable_server_refuses_ownership_without_crashing() -> None:
    """Catches a connect error escaping try_acquire (the dispatcher loop would die) or an instance
    that believes it owns a workspace it could not lock."""
    server = FakeServer()
    server.refuse = True
    owner, lost = ownership(server)
    assert await owner.try_acquire("acme") is False
    assert owner.owned() == [] and owner.claimable() == [] and lost == []
    server.refuse = False  # the server is back: the next try connects again
    assert await owner.try_acquire("acme") is True and owner.owns("acme")


async def test_a_failing_lock_query_drops_every_workspace_and_the_connection() -> None:
    """Catches a query error that leaves the instance owner of workspaces whose session may be gone
    (two owners would run LightRAG's pipeline on one workspace), or reuses the broken connection."""
    server = FakeServer()
    owner, lost = ownership(server)
    assert await owner.try_acquire("acme") is True
    server.fail = ConnectionResetError("connection reset by peer")
    assert await owner.try_acquire("globex") is False
    assert owner.owned() == [] and not owner.owns("acme") and lost == ["acme"]
    assert server.terminated == 1
    server.fail = None
    assert await owner.try_acquire("acme") is True and server.connects == 2  # a new session


async def test_a_failing_ping_gives_the_workspaces_up() -> None:
    """Catches a ping loop that swallows a connection error and keeps claiming for a workspace whose
    advisory lock went with the session. The lock timeout is 30 s: only the ping's own error handling
    gives the workspace up within the 10 s waited here (the staleness check would take 30 s)."""
    server = FakeServer()
    owner, lost = ownership(server, lock_timeout=30.0, ping_seconds=0.05)
    await owner.start()
    try:
        assert await owner.try_acquire("acme") is True
        server.fail = TimeoutError("ping timed out")
        async with asyncio.timeout(10):
            while not lost:
                await asyncio.sleep(0.01)
        assert lost == ["acme"] and owner.owned() == [] and owner.claimable() == []
    finally:
        await owner.stop()
