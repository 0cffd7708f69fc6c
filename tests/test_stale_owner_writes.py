"""A stale owner writes nothing: LightRAG's own PostgreSQL storages refuse a write made for a
workspace this instance no longer owns (src/rag/storage/fence.py, `lightrag_compat.fence_postgres`),
the lock is distrusted before the server can free it, and the task store finds the tenants whose
documents run on other instances (what the runner's takeover loop looks at).

Real PostgreSQL (tests/pg.py) and Redis; the process-level proof is tests/test_failover.py."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import pytest

from src.ingestion.ownership import PgOwnership
from src.rag.storage.fence import OwnershipLost, check_current_write, register_write_fence, writing_into
from src.tasks.keys import QUERY_LANE
from src.tasks.models import TaskKind
from src.tasks.store import TaskStore
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.unit.conftest import make_store, redis, store  # noqa: F401  (fixtures)
from tests.unit.helpers import record

pytestmark = pytest.mark.integration


async def test_lightrag_pg_writes_for_a_workspace_no_longer_owned_are_refused(
    pg_env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: a resumed stale owner upserting chunks, LLM-cache entries or doc status through
    LightRAG's PG storages (no LLM call and no graph write stands in the way) after another
    instance took the workspace."""
    from lightrag.kg.postgres_impl import PGKVStorage
    from lightrag.kg.shared_storage import initialize_share_data

    from src.rag.lightrag_compat import fence_postgres

    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    initialize_share_data()
    fence_postgres(check_current_write)
    fence_postgres(check_current_write)  # idempotent: one check per operation, not two
    owned = {"ws-stale"}
    remove = register_write_fence(lambda ws: ws in owned)
    config = {"embedding_batch_num": 8}
    kv = PGKVStorage(namespace="full_docs", workspace="ws-stale", global_config=config, embedding_func=None)
    try:
        await kv.initialize()
        with writing_into("ws-stale"):
            await kv.upsert({"doc-a": {"content": "first", "file_path": "a.txt"}})
        owned.clear()  # the lock is gone: another instance owns the workspace now
        with writing_into("ws-stale"), pytest.raises(OwnershipLost):
            await kv.upsert({"doc-b": {"content": "late", "file_path": "b.txt"}})
        with writing_into("ws-stale"), pytest.raises(OwnershipLost):
            await kv.delete(["doc-a"])
        # Outside a document's work (a query) nothing is fenced: reads go on.
        assert (await kv.get_by_id("doc-a"))["content"] == "first"
        assert await kv.get_by_id("doc-b") is None
    finally:
        remove()
        await kv.drop()
        await kv.finalize()


class SlowConnection:
    """An asyncpg stand-in whose answers take ``delay`` seconds (a slow network, a loaded server)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay

    async def execute(self, *args: Any) -> None:
        await asyncio.sleep(self.delay)

    async def fetchval(self, *args: Any) -> Any:
        await asyncio.sleep(self.delay)
        return True

    def is_closed(self) -> bool:
        return False

    def terminate(self) -> None:
        pass


async def test_the_lock_is_trusted_from_when_the_ping_was_sent_not_answered() -> None:
    """Catches: freshness counted from the answer. The server's idle timer starts when it answers,
    which can be long before the answer arrives; counted from arrival, a stalled owner could still
    trust (and write under) a lock the server has already freed."""

    async def connect() -> SlowConnection:
        return SlowConnection(0.3)

    ownership = PgOwnership(
        connect, instance_id="slow", workspace_for=lambda t: f"ws-{t}", lock_timeout=1.0, ping_seconds=0.2
    )
    assert await ownership.try_acquire("t1")  # connects (slowly) first
    sent = time.monotonic()
    assert await ownership.try_acquire("t2")
    assert sent <= ownership._last_ok < sent + 0.25  # when the request left, not when its answer came
    # Trusted for lock_timeout - ping_seconds from the send: 0.8 s, of which the answer took 0.3.
    await asyncio.sleep(0.55)
    assert not ownership.owns("t2")


async def test_tenants_running_elsewhere(make_store: Callable[..., TaskStore]) -> None:  # noqa: F811
    """Catches: the takeover loop missing a lost owner's running documents (or chasing queries,
    which need no owner, or this instance's own tasks)."""
    tasks = make_store()
    for tenant, doc in (("acme", "d1"), ("globex", "d2"), ("initech", "d3")):
        await tasks.create(record(tenant=tenant, doc_id=doc))
    assert await tasks.tenants_running_elsewhere("me") == []
    assert await tasks.claim("dead", 30, ["acme"])
    assert await tasks.claim("me", 30, ["globex"])
    await tasks.create(record(tenant="umbrella").model_copy(update={"kind": TaskKind.QUERY, "doc_id": ""}))
    assert await tasks.claim("other", 30, ["umbrella"], QUERY_LANE)
    assert await tasks.tenants_running_elsewhere("me") == ["acme"]
    assert await tasks.tenants_running_elsewhere("dead") == ["globex"]
