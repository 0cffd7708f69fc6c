"""One behavioural suite for LightRAG graph storages, run against every implementation in IMPLEMENTATIONS.

The reference is LightRAG's NetworkXStorage (the embedded default); any other implementation must
behave the same on everything LightRAG relies on. To add an implementation, write an async builder
`(ctx, workspace) -> initialised storage` and add one `Impl(...)` line to IMPLEMENTATIONS.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from lightrag.base import BaseGraphStorage
from lightrag.kg.shared_storage import initialize_share_data

from tests.pg import pg_env  # noqa: F401  (session fixture: a private PostgreSQL server)

pytestmark = pytest.mark.integration

NAMESPACE = "chunk_entity_relation"


@dataclass
class GraphContext:
    """What a builder may use: a tmp dir, the fixtures it declared, the test's monkeypatch."""

    tmp_path: Path
    fixtures: dict[str, Any]
    monkeypatch: pytest.MonkeyPatch
    global_config: dict[str, Any] = field(default_factory=dict)


Builder = Callable[[GraphContext, str], Awaitable[BaseGraphStorage]]


@dataclass(frozen=True)
class Impl:
    name: str
    build: Builder
    fixtures: tuple[str, ...] = ()


async def build_networkx(ctx: GraphContext, workspace: str) -> BaseGraphStorage:
    from lightrag.kg.networkx_impl import NetworkXStorage

    storage = NetworkXStorage(
        namespace=NAMESPACE, workspace=workspace, global_config=ctx.global_config, embedding_func=None
    )
    await storage.initialize()
    return storage


async def build_sqlite(ctx: GraphContext, workspace: str) -> BaseGraphStorage:
    from src.rag.storage.embedded import SqliteGraphStorage

    storage = SqliteGraphStorage(
        namespace=NAMESPACE, workspace=workspace, global_config=ctx.global_config, embedding_func=None
    )
    await storage.initialize()
    return storage


async def build_pg_plain(ctx: GraphContext, workspace: str) -> BaseGraphStorage:
    for name, value in ctx.fixtures["pg_env"].items():
        ctx.monkeypatch.setenv(name, value)
    ctx.monkeypatch.delenv("POSTGRES_WORKSPACE", raising=False)
    from src.rag.storage.pg_graph import PGPlainGraphStorage

    storage = PGPlainGraphStorage(
        namespace=NAMESPACE, workspace=workspace, global_config=ctx.global_config, embedding_func=None
    )
    await storage.initialize()
    return storage


IMPLEMENTATIONS = [
    Impl("networkx", build_networkx),
    Impl("sqlite", build_sqlite),
    Impl("pg-plain", build_pg_plain, fixtures=("pg_env",)),
]


@pytest.fixture(params=IMPLEMENTATIONS, ids=lambda impl: impl.name)
async def make_graph(
    request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[Callable[[str], Awaitable[BaseGraphStorage]]]:
    """`await make_graph("a")` -> a storage for workspace "a" (unique per test, so a shared DB is clean)."""
    impl: Impl = request.param
    initialize_share_data()
    ctx = GraphContext(
        tmp_path=tmp_path,
        fixtures={name: request.getfixturevalue(name) for name in impl.fixtures},
        monkeypatch=monkeypatch,
        global_config={"working_dir": str(tmp_path), "max_graph_nodes": 1000, "vector_storage": None},
    )
    run = uuid.uuid4().hex[:8]
    created: list[BaseGraphStorage] = []

    async def make(workspace: str = "ws") -> BaseGraphStorage:
        storage = await impl.build(ctx, f"{workspace}_{run}")
        created.append(storage)
        return storage

    yield make
    for storage in created:
        await storage.drop()
        await storage.finalize()


@pytest.fixture
async def graph(make_graph: Callable[[str], Awaitable[BaseGraphStorage]]) -> BaseGraphStorage:
    return await make_graph("ws")


def node(name: str, **extra: str) -> dict[str, str]:
    return {"entity_id": name, "entity_type": "thing", "description": f"about {name}", **extra}


async def build_tree(graph: BaseGraphStorage) -> None:
    """A-B, A-C, A-D, B-E, B-H, E-F: degrees A3 B3 E2 C1 D1 H1 F1."""
    for name in "ABCDEFH":
        await graph.upsert_node(name, node(name))
    for src, tgt in [("A", "B"), ("C", "A"), ("A", "D"), ("B", "E"), ("H", "B"), ("E", "F")]:
        await graph.upsert_edge(src, tgt, {"weight": "1.0", "description": f"{src}->{tgt}"})


def edge_set(kg: Any) -> set[tuple[str, str]]:
    return {tuple(sorted((edge.source, edge.target))) for edge in kg.edges}


async def test_node_upsert_get_has_and_merge(graph: BaseGraphStorage) -> None:
    """Catches: lost or replaced properties (upsert merges like nx add_node), wrong missing-node answers."""
    assert await graph.get_node("Alice") is None
    assert not await graph.has_node("Alice")
    await graph.upsert_node("Alice", {"entity_id": "Alice", "description": "first"})
    await graph.upsert_node("Alice", {"description": "second", "entity_type": "person"})
    assert await graph.has_node("Alice")
    expected = {"entity_id": "Alice", "description": "second", "entity_type": "person"}
    assert await graph.get_node("Alice") == expected


async def test_unicode_and_quotes_survive(graph: BaseGraphStorage) -> None:
    """Catches: escaping bugs on names LightRAG extracts from Chinese text and quoted titles."""
    name = '北京 "大学"\\ it\'s'
    await graph.upsert_node(name, node(name, description="位于海淀区"))
    await graph.upsert_edge(name, "清华", {"description": "邻居"})
    assert (await graph.get_node(name))["description"] == "位于海淀区"
    assert (await graph.get_edge("清华", name)) == {"description": "邻居"}


async def test_edges_are_undirected(graph: BaseGraphStorage) -> None:
    """Catches: edges stored per direction (a second row for B->A, or B->A not found)."""
    await graph.upsert_node("A", node("A"))
    await graph.upsert_node("B", node("B"))
    await graph.upsert_edge("B", "A", {"weight": "1.0", "description": "first"})
    assert await graph.has_edge("A", "B") and await graph.has_edge("B", "A")
    await graph.upsert_edge("A", "B", {"description": "second", "keywords": "k"})
    assert await graph.get_edge("B", "A") == {"weight": "1.0", "description": "second", "keywords": "k"}
    assert await graph.get_edge("A", "B") == await graph.get_edge("B", "A")
    assert len(await graph.get_all_edges()) == 1
    assert await graph.get_edge("A", "C") is None
    assert not await graph.has_edge("A", "C")


async def test_upsert_edge_creates_missing_endpoints(graph: BaseGraphStorage) -> None:
    """Catches: dangling edges whose endpoints are not nodes (degree and BFS would disagree)."""
    await graph.upsert_edge("X", "Y", {"description": "x-y"})
    assert await graph.has_node("X") and await graph.has_node("Y")
    assert await graph.get_node("Y") == {}
    assert await graph.node_degree("Y") == 1


async def test_degrees(graph: BaseGraphStorage) -> None:
    """Catches: degree counting one direction only, or errors for unknown nodes."""
    await build_tree(graph)
    assert await graph.node_degree("A") == 3
    assert await graph.node_degree("B") == 3
    assert await graph.node_degree("F") == 1
    assert await graph.node_degree("nobody") == 0
    assert await graph.edge_degree("A", "B") == 6
    assert await graph.edge_degree("F", "E") == 3
    assert await graph.edge_degree("F", "nobody") == 1


async def test_get_node_edges(graph: BaseGraphStorage) -> None:
    """Catches: edges listed only where the node is the stored source, or wrong orientation."""
    await build_tree(graph)
    await graph.upsert_node("lonely", node("lonely"))
    assert set(await graph.get_node_edges("B")) == {("B", "A"), ("B", "E"), ("B", "H")}
    assert set(await graph.get_node_edges("A")) == {("A", "B"), ("A", "C"), ("A", "D")}
    assert await graph.get_node_edges("lonely") == []
    assert await graph.get_node_edges("nobody") is None


async def test_batch_reads(graph: BaseGraphStorage) -> None:
    """Catches: batch methods that drop, duplicate or mis-key results versus the single calls."""
    await build_tree(graph)
    nodes = await graph.get_nodes_batch(["A", "F", "nobody"])
    assert set(nodes) == {"A", "F"} and nodes["F"] == node("F")
    assert await graph.node_degrees_batch(["A", "E", "nobody"]) == {"A": 3, "E": 2, "nobody": 0}
    assert await graph.edge_degrees_batch([("A", "B"), ("F", "E")]) == {("A", "B"): 6, ("F", "E"): 3}
    pairs = [{"src": "B", "tgt": "A"}, {"src": "E", "tgt": "F"}, {"src": "A", "tgt": "F"}]
    edges = await graph.get_edges_batch(pairs)
    assert set(edges) == {("B", "A"), ("E", "F")}
    assert edges[("B", "A")]["description"] == "A->B"
    node_edges = await graph.get_nodes_edges_batch(["E", "nobody"])
    assert set(node_edges["E"]) == {("E", "B"), ("E", "F")}
    assert node_edges["nobody"] == []
    assert await graph.has_nodes_batch(["A", "nobody", "H"]) == {"A", "H"}
    assert await graph.get_nodes_batch([]) == {}


async def test_batch_writes(graph: BaseGraphStorage) -> None:
    """Catches: batch upserts that fail on duplicate keys in one batch or do not merge."""
    await graph.upsert_nodes_batch([("P", {"a": "1"}), ("Q", {"a": "2"}), ("P", {"b": "3"})])
    assert await graph.get_node("P") == {"a": "1", "b": "3"}
    await graph.upsert_edges_batch([("P", "Q", {"w": "1"}), ("Q", "P", {"d": "x"}), ("Q", "R", {"w": "2"})])
    assert await graph.get_edge("P", "Q") == {"w": "1", "d": "x"}
    assert await graph.has_node("R")
    assert len(await graph.get_all_edges()) == 2


async def test_delete_node_removes_its_edges(graph: BaseGraphStorage) -> None:
    """Catches: edges left behind after their node is deleted (they would resurrect in BFS/degrees)."""
    await build_tree(graph)
    await graph.delete_node("B")
    assert not await graph.has_node("B")
    assert not await graph.has_edge("A", "B") and not await graph.has_edge("E", "B")
    assert await graph.node_degree("A") == 2
    assert await graph.node_degree("E") == 1
    await graph.delete_node("nobody")  # no error
    await graph.remove_nodes(["A", "F", "nobody"])
    assert await graph.get_all_labels() == ["C", "D", "E", "H"]
    assert await graph.get_all_edges() == []


async def test_remove_edges_either_direction(graph: BaseGraphStorage) -> None:
    """Catches: remove_edges matching only the stored direction."""
    await build_tree(graph)
    await graph.remove_edges([("B", "A"), ("E", "F"), ("C", "F")])
    assert not await graph.has_edge("A", "B") and not await graph.has_edge("E", "F")
    assert await graph.has_node("A") and await graph.has_node("F")
    assert len(await graph.get_all_edges()) == 4


async def test_labels_nodes_and_edges_listing(graph: BaseGraphStorage) -> None:
    """Catches: unsorted labels, missing id/source/target keys in the listings."""
    await build_tree(graph)
    assert await graph.get_all_labels() == ["A", "B", "C", "D", "E", "F", "H"]
    all_nodes = {item["id"]: item for item in await graph.get_all_nodes()}
    assert set(all_nodes) == set("ABCDEFH") and all_nodes["C"]["entity_type"] == "thing"
    all_edges = await graph.get_all_edges()
    assert {tuple(sorted((e["source"], e["target"]))) for e in all_edges} == {
        ("A", "B"), ("A", "C"), ("A", "D"), ("B", "E"), ("B", "H"), ("E", "F"),
    }  # fmt: skip
    assert all("description" in e for e in all_edges)


async def test_knowledge_graph_depth(graph: BaseGraphStorage) -> None:
    """Catches: BFS that ignores max_depth, follows edges one way only, or returns edges to outside nodes."""
    await build_tree(graph)
    kg = await graph.get_knowledge_graph("A", max_depth=1)
    assert {n.id for n in kg.nodes} == {"A", "B", "C", "D"}
    assert edge_set(kg) == {("A", "B"), ("A", "C"), ("A", "D")}
    assert not kg.is_truncated
    kg = await graph.get_knowledge_graph("F", max_depth=2)
    assert {n.id for n in kg.nodes} == {"F", "E", "B"}
    kg = await graph.get_knowledge_graph("A", max_depth=3)
    assert {n.id for n in kg.nodes} == set("ABCDEFH")
    assert len(kg.edges) == 6
    a = next(n for n in kg.nodes if n.id == "A")
    assert a.labels == ["A"] and a.properties["entity_type"] == "thing"
    edge = next(e for e in kg.edges if {e.source, e.target} == {"B", "E"})
    assert edge.properties["description"] == "B->E"
    assert (await graph.get_knowledge_graph("A", max_depth=0)).nodes[0].id == "A"


async def test_knowledge_graph_max_nodes_prefers_near_and_connected(graph: BaseGraphStorage) -> None:
    """Catches: truncation not in (depth, degree) order, or a missing is_truncated flag."""
    await build_tree(graph)
    kg = await graph.get_knowledge_graph("A", max_depth=3, max_nodes=2)
    assert {n.id for n in kg.nodes} == {"A", "B"} and kg.is_truncated
    assert edge_set(kg) == {("A", "B")}
    kg = await graph.get_knowledge_graph("A", max_depth=3, max_nodes=5)
    assert {n.id for n in kg.nodes} == {"A", "B", "C", "D", "E"} and kg.is_truncated


async def test_knowledge_graph_star_and_missing(graph: BaseGraphStorage) -> None:
    """Catches: `*` not ranking by degree, or an error instead of an empty graph for an unknown label."""
    await build_tree(graph)
    kg = await graph.get_knowledge_graph("*", max_nodes=2)
    assert {n.id for n in kg.nodes} == {"A", "B"} and kg.is_truncated
    assert edge_set(kg) == {("A", "B")}
    kg = await graph.get_knowledge_graph("*", max_nodes=100)
    assert len(kg.nodes) == 7 and len(kg.edges) == 6 and not kg.is_truncated
    missing = await graph.get_knowledge_graph("nobody")
    assert missing.nodes == [] and missing.edges == []


async def test_popular_labels(graph: BaseGraphStorage) -> None:
    """Catches: popularity not by degree, limit ignored."""
    await build_tree(graph)
    popular = await graph.get_popular_labels(limit=3)
    assert set(popular[:2]) == {"A", "B"} and popular[2] == "E"
    assert len(await graph.get_popular_labels(limit=100)) == 7


async def test_search_labels(graph: BaseGraphStorage) -> None:
    """Catches: case-sensitive search, wrong ranking, LIKE wildcards in the query matching everything."""
    for name in ["Apple", "Apple Pie", "Pineapple", "Big Apple Corp", "Banana", "100% juice", "a_b"]:
        await graph.upsert_node(name, node(name))
    assert await graph.search_labels("apple") == ["Apple", "Apple Pie", "Big Apple Corp", "Pineapple"]
    assert await graph.search_labels("APPLE", limit=2) == ["Apple", "Apple Pie"]
    assert await graph.search_labels("%") == ["100% juice"]
    assert await graph.search_labels("_") == ["a_b"]
    assert await graph.search_labels("   ") == []
    assert await graph.search_labels("cherry") == []


async def test_drop_empties_and_storage_stays_usable(graph: BaseGraphStorage) -> None:
    """Catches: drop leaving rows behind or breaking later writes."""
    await build_tree(graph)
    assert await graph.drop() == {"status": "success", "message": "data dropped"}
    assert await graph.get_all_labels() == []
    assert await graph.get_all_edges() == []
    await graph.upsert_edge("N", "M", {"d": "1"})
    await graph.index_done_callback()
    assert await graph.get_all_labels() == ["M", "N"]


async def test_workspaces_are_isolated(make_graph: Callable[[str], Awaitable[BaseGraphStorage]]) -> None:
    """Catches: a tenant seeing, counting or deleting another tenant's graph in the same database."""
    one = await make_graph("tenant_one")
    two = await make_graph("tenant_two")
    await build_tree(one)
    await two.upsert_edge("A", "Z", {"description": "two's edge"})
    assert await two.get_all_labels() == ["A", "Z"]
    assert await two.node_degree("A") == 1
    assert await two.get_node("A") == {}
    assert not await two.has_edge("A", "B")
    assert await two.search_labels("b") == []
    assert {n.id for n in (await two.get_knowledge_graph("A", max_depth=3)).nodes} == {"A", "Z"}
    await two.drop()
    assert len(await one.get_all_labels()) == 7
    assert await one.node_degree("A") == 3


async def _connect(env: dict[str, str], database: str) -> Any:
    import asyncpg

    return await asyncpg.connect(
        host=env["POSTGRES_HOST"],
        port=int(env["POSTGRES_PORT"]),
        user=env["POSTGRES_USER"],
        password=env["POSTGRES_PASSWORD"],
        database=database,
    )


@pytest.mark.parametrize("round_", range(3))
async def test_pg_schema_creation_is_safe_under_concurrency(pg_env: dict[str, str], round_: int) -> None:  # noqa: F811
    """Catches: instances initialising a fresh database at once failing with DuplicateTable /
    unique violations (plain CREATE ... IF NOT EXISTS races in PostgreSQL's catalog)."""
    from src.rag.storage.pg_graph import EDGES, NODES, PGPlainGraphStorage

    database = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = await _connect(pg_env, pg_env["POSTGRES_DATABASE"])
    await admin.execute(f"CREATE DATABASE {database}")
    conns = [await _connect(pg_env, database) for _ in range(8)]
    try:
        await asyncio.gather(*(PGPlainGraphStorage._create_schema(conn) for conn in conns))
        tables = await conns[0].fetch(
            "SELECT tablename FROM pg_tables WHERE tablename = ANY($1::text[])", [NODES, EDGES]
        )
        assert {row["tablename"] for row in tables} == {NODES, EDGES}
    finally:
        for conn in conns:
            await conn.close()
        await admin.execute(f"DROP DATABASE {database}")
        await admin.close()


async def test_lightrag_check_tables_is_safe_under_concurrency(
    pg_env: dict[str, str],  # noqa: F811
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: LightRAG's own check_tables (no IF NOT EXISTS) failing with DuplicateTableError when
    several instances (separate pools, as separate processes have) initialise a fresh database."""
    from lightrag.kg.postgres_impl import ClientManager, PostgreSQLDB

    import src.rag.storage.pg_graph  # noqa: F401  (installs the lock)

    database = f"fresh_{uuid.uuid4().hex[:10]}"
    admin = await _connect(pg_env, pg_env["POSTGRES_DATABASE"])
    await admin.execute(f"CREATE DATABASE {database}")
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("POSTGRES_DATABASE", database)
    monkeypatch.setenv("POSTGRES_MAX_CONNECTIONS", "4")
    dbs = [PostgreSQLDB(ClientManager.get_config(vector_storage="PGVectorStorage")) for _ in range(4)]
    try:

        async def start(db: PostgreSQLDB) -> None:
            await db.initdb()
            await db.check_tables()

        await asyncio.gather(*(start(db) for db in dbs))
        count = await dbs[0].pool.fetchval(
            "SELECT count(*) FROM pg_tables WHERE tablename IN ('lightrag_doc_full', 'lightrag_doc_status')"
        )
        assert count == 2
    finally:
        for db in dbs:
            if db.pool is not None:
                await db.pool.close()
        await admin.execute(f"DROP DATABASE {database}")
        await admin.close()


async def test_pg_storage_errors_are_clear(make_graph: Callable[[str], Awaitable[BaseGraphStorage]]) -> None:
    """Catches: a finalised PG storage failing obscurely (AttributeError on None) instead of saying
    it is not initialised, and drop() raising instead of reporting {"status": "error"}."""
    storage = await make_graph("closed")
    from src.rag.storage.pg_graph import PGPlainGraphStorage

    if not isinstance(storage, PGPlainGraphStorage):
        pytest.skip("PostgreSQL-specific error paths")
    await storage.finalize()
    with pytest.raises(RuntimeError, match="before initialize"):
        await storage.has_node("A")
    result = await storage.drop()
    assert result["status"] == "error" and "before initialize" in result["message"]
    await storage.initialize()  # the fixture's teardown drops and finalises it again
