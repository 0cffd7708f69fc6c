"""LightRAG graph storage on plain PostgreSQL tables (no Apache AGE).

Why: LightRAG's `PGGraphStorage` needs Apache AGE, which many managed PostgreSQL services and
this machine lack. Nodes and edges are JSONB rows keyed by (workspace, graph, id) and
(workspace, graph, source, target) with source < target (sorted in Python, code-point order), so an
edge is undirected like NetworkX's `nx.Graph`. `get_knowledge_graph` is a breadth-first search in
one recursive CTE; label search uses a pg_trgm GIN index. Connections come from LightRAG's
process-wide `ClientManager` pool, shared with PGKV/PGVector/PGDocStatus.

Semantics follow NetworkXStorage (the behavioural suite in tests/test_graph_storage.py runs
against both): upserts merge properties, `upsert_edge` creates missing endpoints with no
properties, degrees count a self-loop twice.

One module (~540 lines): `BaseGraphStorage` has 28 methods, all of them over the same two tables.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar, final

import asyncpg
from lightrag.base import BaseGraphStorage
from lightrag.types import KnowledgeGraph, KnowledgeGraphEdge, KnowledgeGraphNode
from lightrag.utils import logger

from src.rag.lightrag_compat import (
    get_data_init_lock,
    install_check_tables_lock,
    postgres_client,
    register_storage,
    release_postgres_client,
    run_with_retry,
)
from src.rag.storage.fence import check_write

T = TypeVar("T")

STORAGE_NAME = "PGPlainGraphStorage"
NODES = "lightrag_plain_graph_nodes"
EDGES = "lightrag_plain_graph_edges"
#: Any constant shared by every instance: schema creation is serialised across processes.
SCHEMA_LOCK_KEY = 0x5047_4752_4150_48  # "PGGRAPH"

SCHEMA = [
    "CREATE EXTENSION IF NOT EXISTS pg_trgm",
    f"""CREATE TABLE IF NOT EXISTS {NODES} (
        workspace text COLLATE "C" NOT NULL,
        graph text COLLATE "C" NOT NULL,
        id text COLLATE "C" NOT NULL,
        properties jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (workspace, graph, id))""",
    f"""CREATE TABLE IF NOT EXISTS {EDGES} (
        workspace text COLLATE "C" NOT NULL,
        graph text COLLATE "C" NOT NULL,
        source text COLLATE "C" NOT NULL,
        target text COLLATE "C" NOT NULL,
        properties jsonb NOT NULL DEFAULT '{{}}'::jsonb,
        updated_at timestamptz NOT NULL DEFAULT now(),
        PRIMARY KEY (workspace, graph, source, target),
        CHECK (source <= target))""",
    f"CREATE INDEX IF NOT EXISTS {EDGES}_target_idx ON {EDGES} (workspace, graph, target)",
    f"CREATE INDEX IF NOT EXISTS {NODES}_id_trgm_idx ON {NODES} USING gin (id gin_trgm_ops)",
]

# Degree of every node of one graph: a self-loop counts twice (source and target), as in NetworkX.
DEGREES_CTE = f"""
    ends AS (
        SELECT source AS id FROM {EDGES} WHERE workspace = $1 AND graph = $2
        UNION ALL
        SELECT target AS id FROM {EDGES} WHERE workspace = $1 AND graph = $2
    ),
    degrees AS (SELECT id, count(*) AS degree FROM ends GROUP BY id)"""


# LightRAG's table creation races between instances starting together: serialised.
install_check_tables_lock()


def _pair(a: str, b: str) -> tuple[str, str]:
    """The storage key of an undirected edge."""
    return (a, b) if a <= b else (b, a)


def _props(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    return json.loads(value) if isinstance(value, str) else dict(value)


def _merge_rows(rows: list[tuple[Any, dict[str, Any]]]) -> dict[Any, dict[str, Any]]:
    """Merge duplicate keys of one batch in order (one INSERT may not touch a row twice)."""
    merged: dict[Any, dict[str, Any]] = {}
    for key, data in rows:
        merged.setdefault(key, {}).update(data)
    return dict(sorted(merged.items()))  # a fixed lock order keeps concurrent batches deadlock-free


@final
@dataclass
class PGPlainGraphStorage(BaseGraphStorage):
    """`BaseGraphStorage` on two plain PostgreSQL tables, one row set per (workspace, namespace)."""

    #: LightRAG's `PostgreSQLDB` client, shared with its PG storages.
    db: Any = field(default=None)

    def __post_init__(self) -> None:
        self.graph = self.namespace

    async def initialize(self) -> None:
        async with get_data_init_lock():
            if self.db is None:
                vector_storage = self.global_config.get("vector_storage")
                self.db = await postgres_client(vector_storage)
            # Same priority as LightRAG's PG storages so all four agree; src.rag.storage.selection
            # refuses POSTGRES_WORKSPACE because it would merge every tenant into one workspace.
            if self.db.workspace:
                logger.warning(
                    "POSTGRES_WORKSPACE=%s overrides workspace %r of %s",
                    self.db.workspace,
                    self.workspace,
                    STORAGE_NAME,
                )
                self.workspace = self.db.workspace
            elif not self.workspace:
                self.workspace = "default"
            await self._run(self._create_schema)

    @staticmethod
    async def _create_schema(conn: asyncpg.Connection) -> None:
        """IF NOT EXISTS alone races (two sessions can both pass the catalog check): serialise it."""
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK_KEY)
            for statement in SCHEMA:
                await conn.execute(statement)

    async def finalize(self) -> None:
        if self.db is not None:
            await release_postgres_client(self.db)
            self.db = None

    async def _run(self, operation: Callable[[asyncpg.Connection], Awaitable[T]]) -> T:
        if self.db is None:
            raise RuntimeError(f"{STORAGE_NAME} used before initialize()")
        return await run_with_retry(self.db, operation)

    async def _fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        return await self._run(lambda conn: conn.fetch(sql, self.workspace, self.graph, *args))

    async def _fetchval(self, sql: str, *args: Any) -> Any:
        return await self._run(lambda conn: conn.fetchval(sql, self.workspace, self.graph, *args))

    async def _execute(self, sql: str, *args: Any) -> None:
        async def op(conn: asyncpg.Connection) -> None:
            await conn.execute(sql, self.workspace, self.graph, *args)

        await self._run(op)

    # ----------------------------------------------------------------- reads

    async def has_node(self, node_id: str) -> bool:
        return bool(
            await self._fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {NODES} WHERE workspace = $1 AND graph = $2 AND id = $3)",
                node_id,
            )
        )

    async def has_nodes_batch(self, node_ids: list[str]) -> set[str]:
        if not node_ids:
            return set()
        rows = await self._fetch(
            f"SELECT id FROM {NODES} WHERE workspace = $1 AND graph = $2 AND id = ANY($3::text[])",
            list(node_ids),
        )
        return {row["id"] for row in rows}

    async def has_edge(self, source_node_id: str, target_node_id: str) -> bool:
        source, target = _pair(source_node_id, target_node_id)
        return bool(
            await self._fetchval(
                f"SELECT EXISTS (SELECT 1 FROM {EDGES} WHERE workspace = $1 AND graph = $2"
                " AND source = $3 AND target = $4)",
                source,
                target,
            )
        )

    async def get_node(self, node_id: str) -> dict[str, str] | None:
        value = await self._fetchval(
            f"SELECT properties FROM {NODES} WHERE workspace = $1 AND graph = $2 AND id = $3", node_id
        )
        return None if value is None else _props(value)

    async def get_nodes_batch(self, node_ids: list[str]) -> dict[str, dict]:
        if not node_ids:
            return {}
        rows = await self._fetch(
            f"SELECT id, properties FROM {NODES}"
            " WHERE workspace = $1 AND graph = $2 AND id = ANY($3::text[])",
            list(node_ids),
        )
        found = {row["id"]: _props(row["properties"]) for row in rows}
        return {node_id: found[node_id] for node_id in node_ids if node_id in found}

    async def node_degrees_batch(self, node_ids: list[str]) -> dict[str, int]:
        if not node_ids:
            return {}
        rows = await self._fetch(
            f"""SELECT id, count(*) AS degree FROM (
                    SELECT source AS id FROM {EDGES}
                    WHERE workspace = $1 AND graph = $2 AND source = ANY($3::text[])
                    UNION ALL
                    SELECT target AS id FROM {EDGES}
                    WHERE workspace = $1 AND graph = $2 AND target = ANY($3::text[])
                ) AS ends GROUP BY id""",
            list(set(node_ids)),
        )
        degrees = {row["id"]: int(row["degree"]) for row in rows}
        return {node_id: degrees.get(node_id, 0) for node_id in node_ids}

    async def node_degree(self, node_id: str) -> int:
        return (await self.node_degrees_batch([node_id]))[node_id]

    async def edge_degree(self, src_id: str, tgt_id: str) -> int:
        degrees = await self.node_degrees_batch([src_id, tgt_id])
        return degrees[src_id] + degrees[tgt_id]

    async def edge_degrees_batch(self, edge_pairs: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        degrees = await self.node_degrees_batch([node for pair in edge_pairs for node in pair])
        return {(src, tgt): degrees[src] + degrees[tgt] for src, tgt in edge_pairs}

    async def get_edge(self, source_node_id: str, target_node_id: str) -> dict[str, str] | None:
        source, target = _pair(source_node_id, target_node_id)
        value = await self._fetchval(
            f"SELECT properties FROM {EDGES}"
            " WHERE workspace = $1 AND graph = $2 AND source = $3 AND target = $4",
            source,
            target,
        )
        return None if value is None else _props(value)

    async def get_edges_batch(self, pairs: list[dict[str, str]]) -> dict[tuple[str, str], dict]:
        if not pairs:
            return {}
        keys = [_pair(pair["src"], pair["tgt"]) for pair in pairs]
        rows = await self._fetch(
            f"""SELECT e.source, e.target, e.properties
                FROM unnest($3::text[], $4::text[]) AS k(source, target)
                JOIN {EDGES} e ON e.workspace = $1 AND e.graph = $2 AND e.source = k.source
                                AND e.target = k.target""",
            [key[0] for key in keys],
            [key[1] for key in keys],
        )
        found = {(row["source"], row["target"]): _props(row["properties"]) for row in rows}
        return {
            (pair["src"], pair["tgt"]): found[key]
            for pair, key in zip(pairs, keys, strict=True)
            if key in found
        }

    async def get_nodes_edges_batch(self, node_ids: list[str]) -> dict[str, list[tuple[str, str]]]:
        if not node_ids:
            return {}
        rows = await self._fetch(
            f"""SELECT source, target FROM {EDGES}
                WHERE workspace = $1 AND graph = $2 AND (source = ANY($3::text[]) OR target = ANY($3::text[]))
                ORDER BY source, target""",
            list(set(node_ids)),
        )
        wanted = set(node_ids)
        edges: dict[str, list[tuple[str, str]]] = {node_id: [] for node_id in node_ids}
        for row in rows:
            source, target = row["source"], row["target"]
            if source in wanted:
                edges[source].append((source, target))
            if target in wanted and target != source:
                edges[target].append((target, source))
        return edges

    async def get_node_edges(self, source_node_id: str) -> list[tuple[str, str]] | None:
        if not await self.has_node(source_node_id):
            return None
        return (await self.get_nodes_edges_batch([source_node_id]))[source_node_id]

    async def get_all_labels(self) -> list[str]:
        rows = await self._fetch(f"SELECT id FROM {NODES} WHERE workspace = $1 AND graph = $2")
        return sorted(row["id"] for row in rows)

    async def get_all_nodes(self) -> list[dict]:
        rows = await self._fetch(
            f"SELECT id, properties FROM {NODES} WHERE workspace = $1 AND graph = $2 ORDER BY id"
        )
        return [{**_props(row["properties"]), "id": row["id"]} for row in rows]

    async def get_all_edges(self) -> list[dict]:
        rows = await self._fetch(
            f"SELECT source, target, properties FROM {EDGES} WHERE workspace = $1 AND graph = $2"
            " ORDER BY source, target"
        )
        return [
            {**_props(row["properties"]), "source": row["source"], "target": row["target"]} for row in rows
        ]

    async def get_popular_labels(self, limit: int = 300) -> list[str]:
        rows = await self._fetch(
            f"""WITH {DEGREES_CTE}
                SELECT n.id FROM {NODES} n LEFT JOIN degrees d ON d.id = n.id
                WHERE n.workspace = $1 AND n.graph = $2
                ORDER BY coalesce(d.degree, 0) DESC, n.id LIMIT $3""",
            max(0, int(limit)),
        )
        return [row["id"] for row in rows]

    async def search_labels(self, query: str, limit: int = 50) -> list[str]:
        """Substring match served by the pg_trgm index, ranked like NetworkXStorage.search_labels."""
        needle = query.lower().strip()
        if not needle:
            return []
        pattern = "%" + needle.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        rows = await self._fetch(
            f"""SELECT id, CASE
                    WHEN lower(id) = $4 THEN 1000
                    WHEN starts_with(lower(id), $4) THEN 500
                    ELSE 100 - char_length(id)
                         + CASE WHEN strpos(lower(id), ' ' || $4) > 0 OR strpos(lower(id), '_' || $4) > 0
                                THEN 50 ELSE 0 END
                END AS score
                FROM {NODES}
                WHERE workspace = $1 AND graph = $2 AND id ILIKE $3
                ORDER BY score DESC, id LIMIT $5""",
            pattern,
            needle,
            max(0, int(limit)),
        )
        return [row["id"] for row in rows]

    async def get_knowledge_graph(
        self, node_label: str, max_depth: int = 3, max_nodes: int | None = None
    ) -> KnowledgeGraph:
        """BFS from `node_label` (or the highest-degree nodes for `*`), capped like NetworkXStorage.

        Nodes are ranked by (BFS depth, degree desc): when more than `max_nodes` are reachable
        within `max_depth`, the nearest and best-connected ones are kept and `is_truncated` is set.
        """
        limit = int(self.global_config.get("max_graph_nodes", 1000))
        if max_nodes is not None:
            limit = min(int(max_nodes), limit)
        limit = max(0, limit)
        result = KnowledgeGraph()
        if node_label == "*":
            rows = await self._fetch(
                f"""WITH {DEGREES_CTE}
                    SELECT n.id, n.properties FROM {NODES} n LEFT JOIN degrees d ON d.id = n.id
                    WHERE n.workspace = $1 AND n.graph = $2
                    ORDER BY coalesce(d.degree, 0) DESC, n.id LIMIT $3""",
                limit + 1,
            )
        else:
            rows = await self._fetch(
                f"""WITH RECURSIVE
                    adjacency AS (
                        SELECT source AS a, target AS b FROM {EDGES} WHERE workspace = $1 AND graph = $2
                        UNION ALL
                        SELECT target, source FROM {EDGES} WHERE workspace = $1 AND graph = $2
                    ),
                    walk(id, depth) AS (
                        SELECT id, 0 FROM {NODES} WHERE workspace = $1 AND graph = $2 AND id = $3
                        UNION
                        SELECT adjacency.b, walk.depth + 1 FROM walk JOIN adjacency ON adjacency.a = walk.id
                        WHERE walk.depth < $4
                    ),
                    reached AS (SELECT id, min(depth) AS depth FROM walk GROUP BY id),
                    {DEGREES_CTE.strip()}
                    SELECT n.id, n.properties FROM reached r
                    JOIN {NODES} n ON n.workspace = $1 AND n.graph = $2 AND n.id = r.id
                    LEFT JOIN degrees d ON d.id = r.id
                    ORDER BY r.depth, coalesce(d.degree, 0) DESC, r.id LIMIT $5""",
                node_label,
                max(0, int(max_depth)),
                limit + 1,
            )
            if not rows:
                logger.warning("[%s] Node %s not found in the graph", self.workspace, node_label)
                return result
        if len(rows) > limit:
            result.is_truncated = True
            rows = rows[:limit]
        ids = [row["id"] for row in rows]
        for row in rows:
            result.nodes.append(
                KnowledgeGraphNode(id=row["id"], labels=[row["id"]], properties=_props(row["properties"]))
            )
        edge_rows = await self._fetch(
            f"""SELECT source, target, properties FROM {EDGES}
                WHERE workspace = $1 AND graph = $2 AND source = ANY($3::text[]) AND target = ANY($3::text[])
                ORDER BY source, target""",
            ids,
        )
        for row in edge_rows:
            result.edges.append(
                KnowledgeGraphEdge(
                    id=f"{row['source']}-{row['target']}",
                    type="DIRECTED",
                    source=row["source"],
                    target=row["target"],
                    properties=_props(row["properties"]),
                )
            )
        return result

    # ---------------------------------------------------------------- writes

    async def upsert_node(self, node_id: str, node_data: dict[str, str]) -> None:
        await self.upsert_nodes_batch([(node_id, node_data)])

    async def upsert_nodes_batch(self, nodes: list[tuple[str, dict[str, str]]]) -> None:
        check_write(self.workspace)  # a stale owner must not merge (src/rag/storage/fence.py)
        if not nodes:
            return
        merged = _merge_rows(list(nodes))
        await self._execute(
            f"""INSERT INTO {NODES} (workspace, graph, id, properties)
                SELECT $1, $2, k.id, k.properties::jsonb
                FROM unnest($3::text[], $4::text[]) AS k(id, properties)
                ON CONFLICT (workspace, graph, id)
                DO UPDATE SET properties = {NODES}.properties || EXCLUDED.properties, updated_at = now()""",
            list(merged),
            [json.dumps(data, ensure_ascii=False) for data in merged.values()],
        )

    async def upsert_edge(self, source_node_id: str, target_node_id: str, edge_data: dict[str, str]) -> None:
        await self.upsert_edges_batch([(source_node_id, target_node_id, edge_data)])

    async def upsert_edges_batch(self, edges: list[tuple[str, str, dict[str, str]]]) -> None:
        """Missing endpoints are created without properties, as `nx.Graph.add_edge` does."""
        check_write(self.workspace)  # a stale owner must not merge (src/rag/storage/fence.py)
        if not edges:
            return
        merged = _merge_rows([(_pair(src, tgt), data) for src, tgt, data in edges])
        endpoints = sorted({node for key in merged for node in key})
        sources = [key[0] for key in merged]
        targets = [key[1] for key in merged]
        payloads = [json.dumps(data, ensure_ascii=False) for data in merged.values()]

        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    f"""INSERT INTO {NODES} (workspace, graph, id)
                        SELECT $1, $2, k.id FROM unnest($3::text[]) AS k(id)
                        ON CONFLICT (workspace, graph, id) DO NOTHING""",
                    self.workspace,
                    self.graph,
                    endpoints,
                )
                await conn.execute(
                    f"""INSERT INTO {EDGES} (workspace, graph, source, target, properties)
                        SELECT $1, $2, k.source, k.target, k.properties::jsonb
                        FROM unnest($3::text[], $4::text[], $5::text[]) AS k(source, target, properties)
                        ON CONFLICT (workspace, graph, source, target)
                        DO UPDATE SET properties = {EDGES}.properties || EXCLUDED.properties,
                                      updated_at = now()""",
                    self.workspace,
                    self.graph,
                    sources,
                    targets,
                    payloads,
                )

        await self._run(op)

    async def delete_node(self, node_id: str) -> None:
        await self.remove_nodes([node_id])

    async def remove_nodes(self, nodes: list[str]) -> None:
        """Deletes the nodes and every edge touching them, atomically."""
        check_write(self.workspace)  # a stale owner must not merge (src/rag/storage/fence.py)
        if not nodes:
            return
        ids = sorted(set(nodes))

        async def op(conn: asyncpg.Connection) -> None:
            async with conn.transaction():
                await conn.execute(
                    f"DELETE FROM {EDGES} WHERE workspace = $1 AND graph = $2"
                    " AND (source = ANY($3::text[]) OR target = ANY($3::text[]))",
                    self.workspace,
                    self.graph,
                    ids,
                )
                await conn.execute(
                    f"DELETE FROM {NODES} WHERE workspace = $1 AND graph = $2 AND id = ANY($3::text[])",
                    self.workspace,
                    self.graph,
                    ids,
                )

        await self._run(op)

    async def remove_edges(self, edges: list[tuple[str, str]]) -> None:
        check_write(self.workspace)  # a stale owner must not merge (src/rag/storage/fence.py)
        if not edges:
            return
        keys = sorted({_pair(src, tgt) for src, tgt in edges})
        await self._execute(
            f"""DELETE FROM {EDGES} e USING unnest($3::text[], $4::text[]) AS k(source, target)
                WHERE e.workspace = $1 AND e.graph = $2 AND e.source = k.source AND e.target = k.target""",
            [key[0] for key in keys],
            [key[1] for key in keys],
        )

    async def index_done_callback(self) -> None:
        """Every write is committed when it returns: nothing to flush."""

    async def drop(self) -> dict[str, str]:
        """Deletes this workspace's graph only; other workspaces in the same tables stay."""
        try:

            async def op(conn: asyncpg.Connection) -> None:
                async with conn.transaction():
                    for table in (EDGES, NODES):
                        await conn.execute(
                            f"DELETE FROM {table} WHERE workspace = $1 AND graph = $2",
                            self.workspace,
                            self.graph,
                        )

            await self._run(op)
            return {"status": "success", "message": "data dropped"}
        except Exception as exc:  # the contract reports failures instead of raising
            logger.error("[%s] Error dropping graph %s: %s", self.workspace, self.graph, exc)
            return {"status": "error", "message": str(exc)}


register_storage(
    "GRAPH_STORAGE", STORAGE_NAME, __name__, ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DATABASE"]
)
