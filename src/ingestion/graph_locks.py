"""Locks that serialise graph writes of one workspace across instances (every instance merges).

Within a process, LightRAG's keyed locks serialise merges of one entity, and the indexer's
`GraphGate` lets merges run together and gives a deletion the graph alone. Both are
process-local. When several instances index documents of one workspace (src/tasks/runner.py claims
guests), the same two rules are kept across instances with PostgreSQL *session* advisory locks, on
the instance's lock connection (src/ingestion/ownership.py), so the session whose end frees a
stalled instance's workspaces also frees its merge locks, and the write guard of its tasks
(`PgOwnership.write_guard`) refuses anything it would write after that:

* a merge (one document, or a group) takes the workspace's *merge* key **shared**, then an
  **exclusive** key per entity it merges (every entity and every relation endpoint: LightRAG locks
  a relation by its endpoints' names, and two merges of one relation share both), in sorted key
  order, keeping the sorted prefix it got and polling for the rest: waits only ever go towards
  bigger keys, so they cannot form a cycle;
* a deletion (purge pass, version swap, graph edit) takes the merge key **exclusively**. So that a
  stream of overlapping merges cannot starve it, it first takes a *turnstile* key exclusively; a
  merge passes the turnstile (shared, released at once) before it takes the merge key, so new
  merges wait while a deletion waits.

Only `pg_try_advisory_lock*` is used and waits are polled with a short backoff: the blocking forms
would queue behind LightRAG's `CREATE INDEX CONCURRENTLY` (docs/scaling.md). Session locks are
reentrant: two merges of this process that name one entity both hold its key (their process-local
exclusion is LightRAG's own); each is released as often as it was taken. Keys are pairs of 32-bit
integers (the two-argument functions: `objsubid = 2` in `pg_locks`), apart from the ownership locks'
64-bit keys; a collision of two entity names only makes their merges take turns.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import random
from collections.abc import AsyncIterator, Iterable
from typing import Any, Protocol

from src.rag.storage.fence import OwnershipLost

log = logging.getLogger(__name__)

#: First and longest pause between two tries of a lock another instance holds.
POLL_FIRST_SECONDS = 0.01
POLL_MAX_SECONDS = 0.2


class LockSession(Protocol):
    """The lock connection (PgOwnership): runs one query at a time, says which session ran it."""

    async def run_locked(self, query: Any, *, only_session: int | None = None) -> tuple[Any, int]: ...

    def session_alive(self, session: int) -> bool: ...


def _key(*parts: str) -> int:
    """A signed 32-bit advisory lock key (PostgreSQL's two-argument form takes two int4)."""
    digest = hashlib.blake2b(":".join(parts).encode(), digest_size=4).digest()
    return int.from_bytes(digest, "big", signed=True)


class PgGraphLocks:
    """The cross-instance merge and deletion locks of one workspace (see the module docstring)."""

    def __init__(self, session: LockSession, namespace: str, workspace: str) -> None:
        self.session = session
        self.namespace = namespace
        self.workspace = workspace
        #: The first half of every key: one class for the workspace's merge and turnstile keys, one
        #: for its entities (so an entity's key can never be the merge key).
        self.gate_class = _key("ragsvc-merge", namespace, workspace)
        self.entity_class = _key("ragsvc-entity", namespace, workspace)
        if self.entity_class == self.gate_class:
            self.entity_class ^= 1
        self.merge_key = 0
        self.turnstile_key = 1
        #: Times this process waited for a lock another instance held (metrics, tests).
        self.waits = 0

    def entity_keys(self, names: Iterable[str]) -> list[int]:
        return sorted({_key("ragsvc-entity", name) for name in names})

    async def _poll(self, attempt: int) -> None:
        self.waits += attempt == 0
        delay = min(POLL_MAX_SECONDS, POLL_FIRST_SECONDS * 2**attempt)
        await asyncio.sleep(random.uniform(delay / 2, delay))

    def _check(self, session: int) -> None:
        if not self.session.session_alive(session):
            raise OwnershipLost(f"the lock session of workspace {self.workspace!r} ended")

    @contextlib.asynccontextmanager
    async def merging(self, names: Iterable[str]) -> AsyncIterator[None]:
        """Hold the merge key (shared) and the keys of ``names`` (exclusive) around a merge."""
        keys = self.entity_keys(names)
        gate, entity = self.gate_class, self.entity_class
        merge_key, turnstile = self.merge_key, self.turnstile_key
        session: int | None = None
        held: list[int] = []  # entity keys held, a sorted prefix of ``keys``
        shared = False
        try:
            attempt = 0
            while not shared:

                async def enter(conn: Any) -> bool:
                    if not await conn.fetchval("SELECT pg_try_advisory_lock_shared($1, $2)", gate, turnstile):
                        return False
                    try:
                        return bool(
                            await conn.fetchval("SELECT pg_try_advisory_lock_shared($1, $2)", gate, merge_key)
                        )
                    finally:
                        await conn.fetchval("SELECT pg_advisory_unlock_shared($1, $2)", gate, turnstile)

                shared, session = await self.session.run_locked(enter)
                if not shared:
                    await self._poll(attempt)
                    attempt += 1
            attempt = 0
            while len(held) < len(keys):
                rest = keys[len(held) :]

                async def take(conn: Any, rest: list[int] = rest) -> list[bool]:
                    got = await conn.fetchval(
                        "SELECT array_agg(pg_try_advisory_lock($1, k) ORDER BY i) "
                        "FROM unnest($2::int[]) WITH ORDINALITY AS t(k, i)",
                        entity,
                        rest,
                    )
                    first_miss = next((i for i, ok in enumerate(got) if not ok), len(got))
                    beyond = [k for k, ok in zip(rest[first_miss:], got[first_miss:], strict=True) if ok]
                    if beyond:  # keep only the sorted prefix: no wait may point backwards
                        await conn.execute(
                            "SELECT pg_advisory_unlock($1, k) FROM unnest($2::int[]) k", entity, beyond
                        )
                    return got[:first_miss]

                got, now = await self.session.run_locked(take)
                if now != session:
                    raise OwnershipLost(f"the lock session of workspace {self.workspace!r} ended")
                held.extend(rest[: len(got)])
                if len(held) < len(keys):
                    await self._poll(attempt)
                    attempt += 1
                    self._check(session)
            self._check(session)
            yield
        finally:
            await self._release(session, held, shared=shared)

    @contextlib.asynccontextmanager
    async def exclusive(self) -> AsyncIterator[None]:
        """Hold the merge key alone (no merge of any instance runs meanwhile) around a deletion."""
        gate = self.gate_class
        session: int | None = None
        turnstile = merge = False
        try:
            attempt = 0
            while not merge:

                async def take(conn: Any, have_turnstile: bool = turnstile) -> tuple[bool, bool]:
                    if not have_turnstile:
                        if not await conn.fetchval(
                            "SELECT pg_try_advisory_lock($1, $2)", gate, self.turnstile_key
                        ):
                            return False, False
                    return True, bool(
                        await conn.fetchval("SELECT pg_try_advisory_lock($1, $2)", gate, self.merge_key)
                    )

                (turnstile, merge), now = await self.session.run_locked(take)
                if session is not None and now != session:
                    raise OwnershipLost(f"the lock session of workspace {self.workspace!r} ended")
                session = now
                if not merge:
                    await self._poll(attempt)
                    attempt += 1
            self._check(session)  # type: ignore[arg-type]
            yield
        finally:
            if session is not None and (turnstile or merge):

                async def release(conn: Any) -> None:
                    if merge:
                        await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", gate, self.merge_key)
                    if turnstile:
                        await conn.fetchval("SELECT pg_advisory_unlock($1, $2)", gate, self.turnstile_key)

                await self._run_release(session, release)

    async def _release(self, session: int | None, held: list[int], *, shared: bool) -> None:
        if session is None or (not held and not shared):
            return

        async def release(conn: Any) -> None:
            if held:
                await conn.execute(
                    "SELECT pg_advisory_unlock($1, k) FROM unnest($2::int[]) k", self.entity_class, held
                )
            if shared:
                await conn.fetchval(
                    "SELECT pg_advisory_unlock_shared($1, $2)", self.gate_class, self.merge_key
                )

        await self._run_release(session, release)

    async def _run_release(self, session: int, release: Any) -> None:
        """Unlock in the session that locked (a later session holds none of it: nothing to do).
        Shielded: a cancelled merge must still give its locks back, or they stay until the session
        ends. A failure to unlock ends the session (run_locked), which frees them all."""
        if not self.session.session_alive(session):
            return

        async def run() -> None:
            async def guarded(conn: Any) -> None:
                await release(conn)

            with contextlib.suppress(Exception):
                await self.session.run_locked(guarded, only_session=session)

        await asyncio.shield(asyncio.ensure_future(run()))
