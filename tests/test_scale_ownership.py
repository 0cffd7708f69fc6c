"""Workspace ownership (src/ingestion/ownership.py) against a real PostgreSQL, and the claim gate of
the task store against the real Redis: the pieces the multi-instance process tests rely on."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from src.ingestion.ownership import (
    LocalOwnership,
    OwnershipConfigError,
    OwnershipLost,
    PgOwnership,
    build_ownership,
    lock_key,
    pg_connector,
)
from src.rag.errors import WorkspaceOwnedElsewhere
from src.rag.storage.fence import fence_llm
from src.tasks.store import TaskStore
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.unit.conftest import make_store, redis, store  # noqa: F401  (fixtures)
from tests.unit.helpers import record

pytestmark = pytest.mark.integration

EXTRACT_PROMPT = "---Task---\nExtract entities and relationships from the input text\n<Input Text>\n```\nx```"


def make(
    pg: dict[str, str], instance: str, *, lock_timeout: float = 1.5, ping: float = 0.3, live: int = 1
) -> PgOwnership:
    async def live_instances() -> int:
        return live

    return PgOwnership(
        pg_connector(pg), instance_id=instance, workspace_for=lambda t: f"ws-{t}", namespace="unit-own:",
        lock_timeout=lock_timeout, ping_seconds=ping, idle_release_seconds=0.2, live_instances=live_instances,
    )  # fmt: skip


@pytest.fixture
async def pair(pg_env: dict[str, str]) -> AsyncIterator[tuple[PgOwnership, PgOwnership]]:  # noqa: F811
    a, b = make(pg_env, "a"), make(pg_env, "b")
    await a.start()
    await b.start()
    yield a, b
    await a.stop()
    await b.stop()


async def test_one_owner_per_workspace_and_a_closed_session_frees_it(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: two instances owning one workspace, and a lock that outlives its holder."""
    a, b = pair
    assert await a.try_acquire("t1")
    assert not await b.try_acquire("t1")
    assert a.owns("t1") and not b.owns("t1")
    assert a.claimable() == ["t1"] and b.claimable() == []
    await a.stop()  # a dead instance: its session ends
    assert await b.try_acquire("t1")


async def test_a_stalled_owner_loses_the_lock_and_notices_when_it_resumes(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: a SIGSTOPped owner keeping its workspaces (no idle_session_timeout), and a resumed
    owner that goes on ingesting without noticing that another instance took over."""
    a, b = pair
    lost: list[str] = []

    async def on_lost(tenant: str) -> None:
        lost.append(tenant)

    a.add_listener(on_lost=on_lost)
    assert await a.try_acquire("t1")
    assert a._pinger is not None
    a._pinger.cancel()  # the stall: no more pings from a
    with pytest.raises(asyncio.CancelledError):
        await a._pinger
    for _ in range(100):
        if await b.try_acquire("t1"):
            break
        await asyncio.sleep(0.1)
    assert b.owns("t1"), "the server should have ended the stalled owner's session"
    assert not a.owns("t1"), "a resumed owner must distrust a lock it could not confirm"
    a._pinger = asyncio.create_task(a._ping_loop())  # the owner resumes
    for _ in range(50):
        if lost:
            break
        await asyncio.sleep(0.1)
    assert lost == ["t1"]
    assert a.claimable() == []


async def test_idle_workspaces_are_released_and_the_share_is_bounded(pg_env: dict[str, str]) -> None:  # noqa: F811
    """Catches: one instance grabbing every workspace with work (no spreading), and an owner that
    never lets go of a workspace it has no work for."""
    two = make(pg_env, "x", live=2)
    await two.start()
    try:
        assert await two.acquire_more(["p", "q"], {}, free_slots=2)
        assert len(two.owned()) == 1
        assert not await two.acquire_more(["p", "q"], {}, free_slots=2), "fair share is 1 of 2"
        assert not await two.acquire_more(["r"], {}, free_slots=0), "no free slot, no new workspace"
        await asyncio.sleep(0.3)
        await two.acquire_more([], {}, free_slots=2)
        assert two.owned() == [], "a workspace without work is released"
    finally:
        await two.stop()


async def test_fence_stops_ingestion_calls_only(pg_env: dict[str, str]) -> None:  # noqa: F811
    """Catches: a resumed stale owner making extraction calls (and then merge writes), or queries on
    a non-owner being refused."""
    calls: list[str] = []

    async def llm(prompt: str, **kwargs: Any) -> str:
        calls.append(prompt)
        return "ok"

    owned = {"yes": False}
    fenced = fence_llm(llm, lambda: owned["yes"])
    with pytest.raises(OwnershipLost):
        await fenced(EXTRACT_PROMPT, system_prompt="")
    assert await fenced("What is Zorblax?", system_prompt="answer") == "ok"
    owned["yes"] = True
    assert await fenced(EXTRACT_PROMPT) == "ok"
    assert len(calls) == 2


def test_configuration_errors_and_backend_choice(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: shared storages started without PostgreSQL credentials, a ping slower than the
    timeout it must beat, and file storages not staying single-owner."""
    with pytest.raises(OwnershipConfigError, match="POSTGRES_PASSWORD"):
        pg_connector({"POSTGRES_USER": "u", "POSTGRES_DATABASE": "d"})
    with pytest.raises(OwnershipConfigError, match="OWNER_PING_SECONDS"):
        PgOwnership(lambda: None, instance_id="i", workspace_for=str, lock_timeout=2, ping_seconds=1)
    from tests.conftest import make_settings

    settings = make_settings(tmp_path, None)
    assert isinstance(build_ownership(settings, "i", "p:", workspace_for=str, env={}), LocalOwnership)
    env = {
        "LIGHTRAG_KV_STORAGE": "PGKVStorage",
        "POSTGRES_USER": "u",
        "POSTGRES_PASSWORD": "p",
        "POSTGRES_DATABASE": "d",
    }
    assert isinstance(build_ownership(settings, "i", "p:", workspace_for=str, env=env), PgOwnership)
    assert lock_key("p:", "ws") == lock_key("p:", "ws") != lock_key("p:", "ws2")


async def test_writes_on_a_workspace_owned_elsewhere_are_refused(tmp_path) -> None:
    """Catches: DELETE /documents on a non-owner running LightRAG's deletion beside the owner."""
    from src.core.metrics import Metrics
    from src.rag.engine.tenant_engines import TenantEngines
    from tests.conftest import make_settings

    async def refuse(tenant: str) -> bool:
        return False

    engines = TenantEngines(
        make_settings(tmp_path, None),
        Metrics(),
        max_cached=2,
        idle_seconds=60,
        owns=lambda t: False,
        acquire=refuse,
    )
    with pytest.raises(WorkspaceOwnedElsewhere):
        async with engines.use_for_ingestion("acme"):
            pass
    from api.errors import http_error_for

    assert http_error_for(WorkspaceOwnedElsewhere("x")).status == 503


async def test_claim_takes_only_tasks_of_the_given_tenants(make_store: Callable[..., TaskStore]) -> None:  # noqa: F811
    """Catches: an instance claiming a task of a workspace it does not own."""
    store = make_store()  # noqa: F811
    await store.create(record("a1", tenant="a"))
    await store.create(record("b1", tenant="b"))
    assert await store.claim("me", 60, tenants=[]) is None
    assert sorted(await store.tenants_with_pending()) == ["a", "b"]
    claimed = await store.claim("me", 60, tenants=["b"])
    assert claimed is not None and claimed.task_id == "b1"
    assert await store.claim("me", 60, tenants=["b"]) is None
    assert await store.tenants_with_pending() == ["a"]
    claimed = await store.claim("me", 60)
    assert claimed is not None and claimed.task_id == "a1"
    await store.touch_instance("me")
    await store.touch_instance("you")
    assert await store.live_instances() == 2


class Gate:
    """A claim gate with a fixed set of owned tenants that can take one more tenant on demand."""

    def __init__(
        self, owned: set[str], grantable: set[str] = frozenset(), alive: set[str] = frozenset()
    ) -> None:
        self.owned = set(owned)
        self.grantable = set(grantable)
        #: Instances whose lock session lives.
        self.alive = set(alive)

    async def holders_alive(self, instance_ids: list[str]) -> set[str] | None:
        return {i for i in instance_ids if i in self.alive}

    async def begin_guest(self, tenant: str) -> bool:
        return False

    def end_guest(self, tenant: str) -> None:
        pass

    def claimable(self) -> list[str] | None:
        return sorted(self.owned)

    async def acquire_more(self, pending: list[str], running: dict[str, int], free_slots: int) -> bool:
        for tenant in pending:
            if tenant in self.grantable and tenant not in self.owned:
                self.owned.add(tenant)
                return True
        return False


async def test_runner_claims_only_owned_tenants_and_hands_back_on_loss(
    make_store: Callable[..., TaskStore],  # noqa: F811
) -> None:
    """Catches: a gated runner running another owner's task, an idle runner never taking a free
    workspace, and a lost workspace's task left running (or counted as a failure) on this instance."""
    from src.tasks.models import TaskStatus
    from src.tasks.runner import TaskRunner
    from tests.unit.test_runner import FakeHandler, _config, wait_for

    store = make_store()  # noqa: F811
    handler = FakeHandler(default="block")
    gate = Gate({"mine"}, grantable={"free"})
    runner = TaskRunner(store, handler, _config(), "inst-g", gate=gate)
    await store.create(record("theirs1", tenant="theirs"))
    await store.create(record("mine1", tenant="mine"))
    await runner.start()
    try:
        await asyncio.wait_for(handler.started_event("mine1").wait(), 10)
        await store.create(record("free1", tenant="free"))
        await asyncio.wait_for(handler.started_event("free1").wait(), 10)  # took the free workspace
        assert (await store.get("theirs1")).status == TaskStatus.PENDING
        gate.owned.discard("mine")  # the ownership backend drops the tenant, then tells the runner
        assert runner.abandon_tenant("mine") == 1
        back = await wait_for(store, "mine1", lambda r: r.status == TaskStatus.PENDING)
        assert back.failures == 0 and back.owner in ("", None)
        assert back.history[-1]["outcome"] == "interrupted"
    finally:
        handler.release.set()
        await runner.stop(grace_seconds=0)


async def test_new_owner_requeues_tasks_held_by_the_previous_owner(
    make_store: Callable[..., TaskStore],  # noqa: F811
) -> None:
    """Catches: a takeover that waits for the dead owner's leases to lapse (or steals live tasks of
    other tenants, or of a guest whose lock session lives: it indexes them legitimately)."""
    from src.tasks.models import TaskStatus
    from src.tasks.runner import TaskRunner
    from tests.unit.test_runner import FakeHandler, _config

    store = make_store()  # noqa: F811
    await store.create(record("dead1", tenant="t"))
    await store.create(record("guest1", tenant="t"))
    await store.create(record("other1", tenant="u"))
    assert (await store.claim("dead-instance", 600, tenants=["t"])).task_id == "dead1"
    assert (await store.claim("live-guest", 600, tenants=["t"])).task_id == "guest1"
    assert (await store.claim("live-instance", 600, tenants=["u"])).task_id == "other1"
    gate = Gate(set(), alive={"live-guest", "live-instance"})
    runner = TaskRunner(store, FakeHandler(), _config(), "new-owner", gate=gate)
    assert await runner.reclaim_tenant("t") == 1
    assert (await store.get("dead1")).status == TaskStatus.PENDING
    assert (await store.get("guest1")).status == TaskStatus.PROCESSING
    assert (await store.get("other1")).status == TaskStatus.PROCESSING
    gate.alive.discard("live-guest")  # its session ended (killed, or stalled past the timeout)
    assert await runner.reclaim_tenant("t") == 1
    assert (await store.get("guest1")).status == TaskStatus.PENDING


async def test_graph_writes_into_a_workspace_not_owned_are_refused(
    pg_env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: a stalled owner resuming mid-merge and upserting entities into a workspace another
    instance owns by now (the merge needs no LLM call, so only the storage can refuse it)."""
    from lightrag.kg.shared_storage import initialize_share_data

    from src.rag.storage.fence import check_write, register_write_fence
    from src.rag.storage.pg_graph import PGPlainGraphStorage

    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    initialize_share_data()
    owned = {"ws-fence"}
    remove = register_write_fence(lambda ws: ws in owned)
    graph = PGPlainGraphStorage(
        namespace="chunk_entity_relation",
        workspace="ws-fence",
        global_config={"embedding_batch_num": 8},
        embedding_func=None,
    )
    try:
        await graph.initialize()
        await graph.upsert_node("A", {"entity_id": "A", "source_id": "c1"})
        owned.clear()  # the workspace moved to another instance
        with pytest.raises(OwnershipLost):
            await graph.upsert_node("B", {"entity_id": "B", "source_id": "c2"})
        with pytest.raises(OwnershipLost):
            await graph.remove_nodes(["A"])
        assert await graph.has_node("A") and not await graph.has_node("B")  # reads still work
    finally:
        remove()
        check_write("ws-fence")  # no fence left: every write allowed again
        await graph.drop()
        await graph.finalize()


async def test_taking_an_owned_workspace_again_does_not_stack_the_lock(
    pair: tuple[PgOwnership, PgOwnership],
) -> None:
    """Catches: a second pg_try_advisory_lock on the same session (locks stack), after which one
    release leaves the workspace locked for good."""
    a, b = pair
    assert await a.try_acquire("t2")
    assert await a.try_acquire("t2")
    a._last_ok -= 100  # a moment of doubt (the loop was blocked): held but unconfirmed
    assert not await a.try_acquire("t2")
    a._last_ok = time.monotonic()
    await a.release("t2")
    assert await b.try_acquire("t2")
