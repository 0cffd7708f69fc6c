"""The embedded Redis is stopped and probed with one attempt, never redis-py's retry loop, and is
restarted only when it is really down.

redis-py retries a failed command three times with backoff by default. SHUTDOWN closes the
socket by design, so with the default client every clean stop of the service paid ~4 s of
reconnect backoff (and more on a loaded machine). These tests count connection attempts
instead of timing anything.
"""

from __future__ import annotations

import asyncio
import os
import resource
from pathlib import Path

import pytest
from redis.asyncio.connection import UnixDomainSocketConnection

from src.core.embedded_redis import EmbeddedRedis, Probe
from tests.helpers import wait_until

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


def lowest_free_descriptor() -> int:
    """A new descriptor takes the lowest free number: with the limit there, none can be opened."""
    free = 0
    while _is_open(free):
        free += 1
    return free


def _is_open(fd: int) -> bool:
    try:
        os.fstat(fd)
    except OSError:
        return False
    return True


async def test_the_supervisor_does_not_restart_a_healthy_server_when_it_cannot_open_a_socket(
    tmp_path: Path, connects: list[str]
) -> None:
    """Catches the supervisor taking its own EMFILE for a dead server: under a flood of idle
    connections it could not open a socket, read neither a PING answer nor the pid file, and
    SIGKILLed (and restarted) a healthy redis-server. Here this process really runs out of
    descriptors (RLIMIT_NOFILE lowered to what is open) for dozens of checks: the same server
    keeps running, no restart is counted, and it answers once descriptors are back."""
    server = EmbeddedRedis(tmp_path / "redis", check_seconds=0.02)
    await server.start()
    pid = server.pid
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        connects.clear()
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free_descriptor(), hard))  # none left
        try:
            await wait_until(lambda: asyncio.sleep(0, result=len(connects) >= 40), timeout=30)
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        connects.clear()  # descriptors are back: let the supervisor check a few more times
        await wait_until(lambda: asyncio.sleep(0, result=len(connects) >= 20), timeout=30)
        assert server.restarts == 0 and server.pid == pid
        os.kill(pid, 0)  # still alive
        assert await server._answers()
    finally:
        await server.stop()


async def test_stop_ends_a_supervisor_that_swallowed_its_cancellation(tmp_path: Path) -> None:
    """Catches a shutdown that waits forever: a library call that swallows the supervisor's
    cancellation (seen with a server that could not be restarted any more: its data dir was gone)
    left it retrying for good. Counts, no timing: the stop returns and the loop ran no more."""
    server = EmbeddedRedis(tmp_path / "redis", check_seconds=0.01)
    probes = 0
    in_probe = asyncio.Event()

    async def swallowing_probe() -> Probe:
        nonlocal probes
        probes += 1
        in_probe.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            pass  # as a careless library call might
        return Probe.ANSWERS

    server._probe = swallowing_probe  # type: ignore[method-assign]
    server._watch = asyncio.create_task(server._supervise())
    await asyncio.wait_for(in_probe.wait(), 10)
    await asyncio.wait_for(server.stop(), 30)
    assert server._watch.done() and probes == 1
