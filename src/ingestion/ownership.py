"""Who may ingest into a workspace: one owner per workspace across every instance.

LightRAG's locks and our indexer's merge gate are process-local. With the embedded storages each
instance has its own knowledge base, so the instance is trivially the owner of everything
(`LocalOwnership`). With shared storages (PostgreSQL, Neo4j, Redis ...) two instances indexing into
one workspace merge the same entities concurrently (lost updates) and delete beside each other's
merges. So exactly one instance, the *owner*, runs document processing, merges and deletions of a
workspace; every instance still accepts uploads, serves polls and answers queries.

`PgOwnership` makes the owner the holder of a PostgreSQL *session advisory lock* per workspace, all
held on one dedicated connection of this instance (not LightRAG's pool):

* taken only with `pg_try_advisory_lock` - the blocking form would wait behind LightRAG's
  `CREATE INDEX CONCURRENTLY` (which waits for every open transaction) and deadlock;
* a dead owner's locks go with its connection (kill -9 closes the socket at once);
* the connection sets `idle_session_timeout`, and this instance pings it every `ping_seconds`: a
  *stalled* owner (SIGSTOP, a frozen VM, a partition) stops pinging, the server ends the session
  after `lock_timeout` seconds and the lock is free for another instance;
* a resumed owner notices before doing more work: `owns()` is false as soon as the last good ping
  was *sent* more than the lock timeout minus one ping period ago (monotonic clock). The server's
  idle timer starts only once it has answered, so this instance distrusts its locks before the
  server can free them; the write fence (src/rag/storage/fence.py) refuses from that moment on, and
  the ping loop then reports every workspace as lost, which stops that workspace's running tasks
  and its indexing (`on_lost` listeners).

Why not a Redis lease: a lease needs a fencing token checked by the *storage* on every write, and
LightRAG's storages cannot check one. The advisory lock lives in the same server as the data, so a
partition that cuts the owner off from the lock also cuts it off from the tables.

Spreading: the task runner asks `claimable()` which tenants it may claim tasks of, and when it has
free slots and nothing to claim it calls `acquire_more()`, which tries to take workspaces that have
pending tasks and no live owner, up to a fair share (workspaces with work / live instances), so
different workspaces end up owned by different instances. An owned workspace with no work for
`idle_release_seconds` is released, so ownership keeps moving to where the capacity is.

Guests: an instance with free slots also indexes documents of workspaces other instances own
(`begin_guest` / `end_guest`, src/tasks/runner.py claims them). What must be serialised between
instances - merges of the same entity, and a deletion against every merge - is, by advisory locks
on this same connection (src/ingestion/graph_locks.py). A guest writes only while the session it
started under is alive (`write_guard`): the session's end frees its locks, so it must not write on.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, Protocol

from src.core.config import Settings
from src.rag.storage.fence import OwnershipLost

__all__ = ["LocalOwnership", "OwnershipLost", "PgOwnership", "build_ownership", "lock_key"]

log = logging.getLogger(__name__)

Listener = Callable[[str], Awaitable[None]]

#: Storage names whose data lives in this instance's DATA_DIR (nothing shared between instances):
#: LightRAG's file storages and our embedded SQLite ones (src/rag/storage/embedded.py).
FILE_STORAGES = frozenset(
    {
        "JsonKVStorage",
        "NanoVectorDBStorage",
        "NetworkXStorage",
        "JsonDocStatusStorage",
        "FaissVectorDBStorage",
        "SqliteKVStorage",
        "SqliteVectorStorage",
        "SqliteGraphStorage",
        "SqliteDocStatusStorage",
    }
)


class OwnershipConfigError(ValueError):
    """Shared storages are selected but no ownership backend is configured."""


class Ownership(Protocol):
    """What the task runner, the knowledge bases and the storage write fence need to know about
    workspace ownership."""

    #: True when several instances share the knowledge bases (ownership matters).
    shared: bool

    def owns(self, tenant: str) -> bool: ...

    def owns_workspace(self, workspace: str) -> bool:
        """The write fence of src/rag/storage/fence.py: is ``workspace`` provably one of ours?"""
        ...

    async def try_acquire(self, tenant: str) -> bool:
        """Take the workspace of ``tenant`` if nobody holds it (never waits for a holder)."""
        ...

    def claimable(self) -> list[str] | None:
        """Tenants whose tasks this instance may claim; None means every tenant."""
        ...

    async def acquire_more(self, pending: list[str], running: Mapping[str, int], free_slots: int) -> bool:
        """Called by an idle dispatcher: take more workspaces with work; True if one was taken."""
        ...

    async def adopt(self, tenants: list[str]) -> None:
        """Tenants with documents running on other instances: take those whose lock is free."""
        ...

    def add_listener(
        self, *, on_lost: Listener | None = None, on_acquired: Listener | None = None
    ) -> None: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def describe(self) -> dict[str, Any]: ...

    def write_guard(self, tenant: str, *, guest: bool) -> Callable[[], bool] | None:
        """What a task writing into ``tenant``'s workspace must keep holding (None: nothing)."""
        ...


class LocalOwnership:
    """Embedded file storages: this instance owns every workspace it touches (nothing changes)."""

    shared = False

    def owns(self, tenant: str) -> bool:
        return True

    def owns_workspace(self, workspace: str) -> bool:
        return True

    async def try_acquire(self, tenant: str) -> bool:
        return True

    def claimable(self) -> list[str] | None:
        return None

    async def acquire_more(self, pending: list[str], running: Mapping[str, int], free_slots: int) -> bool:
        return False

    async def adopt(self, tenants: list[str]) -> None:
        pass

    def add_listener(self, *, on_lost: Listener | None = None, on_acquired: Listener | None = None) -> None:
        pass

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    def describe(self) -> dict[str, Any]:
        return {"mode": "local"}

    def write_guard(self, tenant: str, *, guest: bool) -> Callable[[], bool] | None:
        return None


def lock_key(namespace: str, workspace: str) -> int:
    """A stable signed 64-bit advisory lock key for ``workspace`` (same in every instance)."""
    digest = hashlib.blake2b(f"ragsvc-owner:{namespace}:{workspace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgOwnership:
    """Workspace ownership by PostgreSQL session advisory locks on one dedicated connection."""

    shared = True

    def __init__(
        self,
        connect: Callable[[], Awaitable[Any]],
        *,
        instance_id: str,
        workspace_for: Callable[[str], str],
        namespace: str = "ragsvc:",
        lock_timeout: float = 5.0,
        ping_seconds: float = 1.0,
        idle_release_seconds: float = 30.0,
        live_instances: Callable[[], Awaitable[int]] | None = None,
    ) -> None:
        if ping_seconds * 2 >= lock_timeout:
            raise OwnershipConfigError(
                "OWNER_PING_SECONDS must be less than half of OWNER_LOCK_TIMEOUT_SECONDS"
            )
        self._connect = connect
        self.instance_id = instance_id
        self.workspace_for = workspace_for
        self.namespace = namespace
        self.lock_timeout = lock_timeout
        self.ping_seconds = ping_seconds
        self.idle_release_seconds = idle_release_seconds
        self._live_instances = live_instances
        self._conn: Any = None
        self._io = asyncio.Lock()  # one asyncpg connection runs one query at a time
        self._owned: dict[str, float] = {}  # tenant -> monotonic time it last had work
        self._last_ok = 0.0
        self._lost_listeners: list[Listener] = []
        self._acquired_listeners: list[Listener] = []
        self._pinger: asyncio.Task | None = None
        self._stopping = False
        #: Tenants with documents indexed here as a guest (owned elsewhere) -> how many.
        self._guests: dict[str, int] = {}
        #: Counts the lock sessions: a lock taken in session N means nothing in session N + 1.
        self.session = 0

    # ------------------------------------------------------------------ queries
    def owns(self, tenant: str) -> bool:
        """Held, and the lock is provably still ours (a ping succeeded within the lock timeout)."""
        return tenant in self._owned and self._fresh()

    def _fresh(self) -> bool:
        return time.monotonic() - self._last_ok < self.lock_timeout - self.ping_seconds

    def claimable(self) -> list[str] | None:
        return sorted(self._owned) if self._fresh() else []

    def owned(self) -> list[str]:
        return sorted(self._owned)

    def owns_workspace(self, workspace: str) -> bool:
        """The write fence of src/rag/storage/fence.py: is ``workspace`` one of ours, provably (owned,
        or indexed here as a guest, and the lock session alive)?"""
        return self._fresh() and any(
            self.workspace_for(t) == workspace for t in (*self._owned, *self._guests)
        )

    def session_alive(self, session: int) -> bool:
        """Is the lock session ``session`` still the live one, provably (fresh ping)?"""
        conn = self._conn
        return session == self.session and conn is not None and not conn.is_closed() and self._fresh()

    def write_guard(self, tenant: str, *, guest: bool) -> Callable[[], bool] | None:
        """The guard of a task that writes into ``tenant``'s workspace from now on: the session it
        starts under stays alive, and the workspace stays ours (owner) or a guest's here."""
        session = self.session
        if guest:
            return lambda: self.session_alive(session) and tenant in self._guests
        return lambda: self.session_alive(session) and tenant in self._owned

    # ------------------------------------------------------------------ guests
    async def begin_guest(self, tenant: str) -> bool:
        """About to index a document of ``tenant`` that another instance's workspace holds: make
        sure the lock session is up (the merge locks and the fence need it). False: it is not."""
        try:
            async with self._io:
                await self._ensure_connection()
        except Exception as exc:
            log.warning("ownership: no lock session for guest work on tenant %s: %s", tenant, exc)
            await self._connection_lost(str(exc))
            return False
        if not self._fresh():
            return False
        self._guests[tenant] = self._guests.get(tenant, 0) + 1
        return True

    def may_guest(self, tenant: str) -> bool:
        """May guest work of ``tenant`` write now (registered, and the session provably alive)?"""
        return tenant in self._guests and self._fresh()

    def end_guest(self, tenant: str) -> None:
        left = self._guests.get(tenant, 0) - 1
        if left > 0:
            self._guests[tenant] = left
        else:
            self._guests.pop(tenant, None)

    def guests(self) -> list[str]:
        return sorted(self._guests)

    def graph_locks(self, workspace: str) -> Any:
        """The cross-instance merge/deletion locks of ``workspace`` (src/ingestion/graph_locks.py)."""
        from src.ingestion.graph_locks import PgGraphLocks

        return PgGraphLocks(self, self.namespace, workspace)

    async def holders_alive(self, instance_ids: list[str]) -> set[str] | None:
        """Which of ``instance_ids`` have a live lock session (pg_stat_activity names each one):
        a task held by an instance whose session ended (killed, stalled past the timeout) can be
        run elsewhere at once. None when this instance cannot tell."""
        if not instance_ids:
            return set()
        names = [f"ragsvc-owner:{i}" for i in instance_ids]
        try:
            rows = await self.run_locked(
                lambda conn: conn.fetch(
                    "SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name = ANY($1)",
                    names,
                )
            )
        except Exception:
            return None
        return {r["application_name"].split(":", 1)[1] for r in rows[0]}

    async def run_locked(
        self, query: Callable[[Any], Awaitable[Any]], *, only_session: int | None = None
    ) -> tuple[Any, int]:
        """Run ``query(connection)`` on the lock connection (one query at a time); returns its
        result and the session it ran in. A failure ends the session (its locks are then gone).
        ``only_session``: run only in that session (not in a new one: returns None then)."""
        try:
            async with self._io:
                if only_session is not None and (
                    self._conn is None or self._conn.is_closed() or self.session != only_session
                ):
                    return None, self.session
                conn = await self._ensure_connection()
                session = self.session
                sent = time.monotonic()
                result = await asyncio.wait_for(query(conn), timeout=self.lock_timeout / 2)
                self._last_ok = sent
                return result, session
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._connection_lost(str(exc))
            raise

    def describe(self) -> dict[str, Any]:
        return {
            "mode": "postgres",
            "instance_id": self.instance_id,
            "owned": self.owned(),
            "connected": self._conn is not None and self._fresh(),
        }

    def add_listener(self, *, on_lost: Listener | None = None, on_acquired: Listener | None = None) -> None:
        if on_lost is not None:
            self._lost_listeners.append(on_lost)
        if on_acquired is not None:
            self._acquired_listeners.append(on_acquired)

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        self._stopping = False
        await self._ensure_connection()
        self._pinger = asyncio.create_task(self._ping_loop(), name="ownership-ping")

    async def stop(self) -> None:
        self._stopping = True
        if self._pinger:
            self._pinger.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._pinger
        conn, self._conn = self._conn, None
        self._owned.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(conn.close(), timeout=5)  # closing the session frees every lock

    async def _ensure_connection(self) -> Any:
        if self._conn is not None:
            if not self._conn.is_closed():
                return self._conn
            # The session ended under us (the server closed it): every lock of it is gone, which
            # the caller's error path makes known (`_connection_lost`) before a new session starts.
            raise ConnectionError("the lock session was closed")
        conn = await self._connect()
        self.session += 1
        timeout_ms = int(self.lock_timeout * 1000)
        await conn.execute(f"SET idle_session_timeout = {timeout_ms}")
        # A half-open TCP connection (the owner's host vanished) is noticed by the server too.
        for setting, value in (
            ("tcp_keepalives_idle", 2),
            ("tcp_keepalives_interval", 1),
            ("tcp_keepalives_count", 3),
            ("tcp_user_timeout", timeout_ms),
        ):
            with contextlib.suppress(Exception):
                await conn.execute(f"SET {setting} = {value}")
        sent = time.monotonic()  # the session's idle time starts after this statement
        await conn.execute(
            "SELECT set_config('application_name', $1, false)", f"ragsvc-owner:{self.instance_id}"
        )
        self._conn = conn
        self._last_ok = sent
        return conn

    # ------------------------------------------------------------------ acquire / release
    async def try_acquire(self, tenant: str) -> bool:
        """Take the workspace of ``tenant`` if nobody holds it (never waits for a holder)."""
        if tenant in self._owned:
            # Session locks stack: taking it twice would need two unlocks. Held but unconfirmed
            # (a stall) is not ownership; the ping loop drops it.
            return self.owns(tenant)
        key = lock_key(self.namespace, self.workspace_for(tenant))
        try:
            async with self._io:
                conn = await self._ensure_connection()
                sent = time.monotonic()
                got = await asyncio.wait_for(
                    conn.fetchval("SELECT pg_try_advisory_lock($1)", key), timeout=self.lock_timeout
                )
                self._last_ok = sent
        except Exception as exc:  # asyncpg, OSError, TimeoutError: the connection is not trustworthy
            log.warning("ownership: could not try the lock of tenant %s: %s", tenant, exc)
            await self._connection_lost(str(exc))
            return False
        if got:
            self._owned[tenant] = time.monotonic()
            log.info("ownership: this instance now owns the workspace of tenant %s", tenant)
            await self._notify(self._acquired_listeners, [tenant])
        return bool(got)

    async def release(self, tenant: str) -> None:
        if tenant not in self._owned:
            return
        key = lock_key(self.namespace, self.workspace_for(tenant))
        self._owned.pop(tenant, None)
        await self._notify(self._lost_listeners, [tenant])
        try:
            async with self._io:
                if self._conn is not None:
                    await asyncio.wait_for(
                        self._conn.fetchval("SELECT pg_advisory_unlock($1)", key), timeout=self.lock_timeout
                    )
        except Exception as exc:
            await self._connection_lost(str(exc))
        log.info("ownership: released the workspace of tenant %s (idle)", tenant)

    async def acquire_more(self, pending: list[str], running: Mapping[str, int], free_slots: int) -> bool:
        now = time.monotonic()
        pending_set = set(pending)
        for tenant in list(self._owned):
            if tenant in pending_set or running.get(tenant, 0) > 0:
                self._owned[tenant] = now
            elif now - self._owned[tenant] > self.idle_release_seconds:
                await self.release(tenant)
        if free_slots <= 0:
            return False
        candidates = [t for t in pending if t not in self._owned]
        if not candidates:
            return False
        live = max(1, await self._count_live())
        share = math.ceil(len(pending_set | set(self._owned)) / live)
        if len([t for t in self._owned if t in pending_set]) >= share:
            return False
        random.shuffle(candidates)
        for tenant in candidates[:3]:
            if await self.try_acquire(tenant):
                return True
        return False

    async def adopt(self, tenants: list[str]) -> None:
        """Take the workspaces of ``tenants`` (documents of theirs run on other instances) that have
        no owner any more, regardless of the fair share: a workspace whose owner died or stalled with
        every task running has nothing pending, so `acquire_more` would never look at it, and its
        tasks would wait for their lease. A live owner still holds the lock: trying costs one
        `pg_try_advisory_lock`. At most three tenants per call (the runner calls every second)."""
        candidates = [t for t in tenants if t not in self._owned]
        random.shuffle(candidates)
        for tenant in candidates[:3]:
            if await self.try_acquire(tenant):
                log.warning("ownership: took over the workspace of tenant %s from a lost owner", tenant)

    async def _count_live(self) -> int:
        if self._live_instances is None:
            return 1
        try:
            return await self._live_instances()
        except Exception:
            return 1

    # ------------------------------------------------------------------ liveness
    async def _ping_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.ping_seconds)
            if (self._owned or self._guests) and not self._fresh():
                # We were stalled past the server's idle timeout: the session (and the locks) are
                # gone. Say so before anything else of ours runs another step.
                await self._connection_lost("no ping within the lock timeout (stalled)")
                continue
            if not self._owned and not self._guests and (self._conn is None or self._conn.is_closed()):
                self._conn = None  # nothing held in it: reconnect lazily, on the next try_acquire
                continue
            try:
                async with self._io:
                    conn = await self._ensure_connection()
                    sent = time.monotonic()
                    await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=self.lock_timeout / 2)
                self._last_ok = sent
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                await self._connection_lost(str(exc))

    async def _connection_lost(self, reason: str) -> None:
        conn, self._conn = self._conn, None
        owned = list(self._owned)
        self._owned.clear()
        # Guest work of the ended session loses its locks too: it is stopped and handed back.
        guests = [t for t in self._guests if t not in owned]
        self._guests.clear()
        if conn is not None:
            with contextlib.suppress(Exception):
                conn.terminate()
        if owned:
            log.error("ownership: lost the lock connection (%s); no longer owner of %s", reason, owned)
        if guests:
            log.error("ownership: lost the lock connection (%s); guest work on %s stops", reason, guests)
        if owned or guests:
            await self._notify(self._lost_listeners, owned + guests)

    async def _notify(self, listeners: list[Listener], tenants: list[str]) -> None:
        for tenant in tenants:
            for listener in listeners:
                try:
                    await listener(tenant)
                except Exception:
                    log.exception("ownership: listener %s failed for tenant %s", listener, tenant)


def shared_storages_selected(storage_kwargs: Mapping[str, str]) -> bool:
    """True when any selected LightRAG storage lives outside this instance's DATA_DIR."""
    return any(name not in FILE_STORAGES for name in storage_kwargs.values())


def pg_connector(env: Mapping[str, str]) -> Callable[[], Awaitable[Any]]:
    """An asyncpg connect function built from LightRAG's POSTGRES_* variables."""
    missing = [v for v in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DATABASE") if not env.get(v)]
    if missing:
        raise OwnershipConfigError(
            "shared storages need one ingestion owner per workspace, decided by PostgreSQL advisory "
            f"locks: set {', '.join(missing)}"
        )

    async def connect() -> Any:
        import asyncpg

        return await asyncpg.connect(
            host=env.get("POSTGRES_HOST") or "localhost",
            port=int(env.get("POSTGRES_PORT") or 5432),
            user=env["POSTGRES_USER"],
            password=env["POSTGRES_PASSWORD"],
            database=env["POSTGRES_DATABASE"],
            timeout=10,
        )

    return connect


def build_ownership(
    settings: Settings,
    instance_id: str,
    namespace: str,
    *,
    workspace_for: Callable[[str], str],
    live_instances: Callable[[], Awaitable[int]] | None = None,
    env: Mapping[str, str] | None = None,
) -> LocalOwnership | PgOwnership:
    """The ownership backend the configuration asks for (OWNERSHIP; LIGHTRAG_*_STORAGE and POSTGRES_*
    from ``env``, by default the settings' `lightrag_env`).

    ``workspace_for`` maps a tenant to its knowledge-base workspace (`KnowledgeBases.workspace_for`)."""
    from src.rag.storage.selection import storage_kwargs_from_env

    env = settings.lightrag_env if env is None else env
    mode = settings.ownership
    if mode == "auto":
        mode = "postgres" if shared_storages_selected(storage_kwargs_from_env(env)) else "local"
    if mode == "local":
        return LocalOwnership()
    return PgOwnership(
        pg_connector(env),
        instance_id=instance_id,
        workspace_for=workspace_for,
        namespace=namespace,
        lock_timeout=settings.owner_lock_timeout_seconds,
        ping_seconds=settings.owner_ping_seconds,
        idle_release_seconds=settings.owner_idle_release_seconds,
        live_instances=live_instances,
    )
