"""What a workspace's knowledge base holds on disk, and the comparison of two of them.

The promise of a cancel storm, with or without a restart in the middle of its purges, is that the
knowledge base then equals one that only ever indexed the completed documents. "Equals" is checked
here once for every test that makes that promise: the entities and relations with the chunk ids
their graph records name (`source_id`) and the chunk ids tracked for them (`entity_chunks`,
`relation_chunks`), the text chunks, the ids in the three vector stores, and each document's status
and chunk list. Descriptions are not compared: they are summaries whose wording depends on the
order in which the documents were merged.

Read from the embedded SQLite store of a stopped service (every record it flushed, nothing only in
memory): what a restart would find; or from PostgreSQL (`pg_knowledge`), where several instances
share one workspace.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from src.rag.storage.sqlite_store import DB_FILE_NAME, db_path_for, read_kv_namespace

#: LightRAG's separator of the chunk ids in a graph record's `source_id`.
GRAPH_FIELD_SEP = "<SEP>"
VECTOR_NAMESPACES = ("chunks", "entities", "relationships")


@dataclass(frozen=True)
class Knowledge:
    #: entity -> the chunk ids its graph node names
    nodes: dict[str, frozenset[str]]
    #: (entity, entity), sorted -> the chunk ids the graph edge names
    edges: dict[tuple[str, str], frozenset[str]]
    entity_chunks: dict[str, frozenset[str]]
    relation_chunks: dict[tuple[str, str], frozenset[str]]
    #: chunk id -> its record (content, full_doc_id, ...)
    chunks: dict[str, dict[str, Any]]
    #: vector namespace -> the ids it holds
    vectors: dict[str, frozenset[str]]
    #: doc id -> (status, its chunk ids)
    documents: dict[str, tuple[str, frozenset[str]]]

    def mentions(self, marker: str) -> list[str]:
        """Chunks and entities that still carry ``marker`` (a document's unique word)."""
        found = [cid for cid, c in self.chunks.items() if marker in str(c.get("content", ""))]
        return found + [name for name in self.nodes if marker.lower() in name.lower()]


def _sources(value: Any) -> frozenset[str]:
    return frozenset(c for c in str(value or "").split(GRAPH_FIELD_SEP) if c)


def _pair(src: str, tgt: str) -> tuple[str, str]:
    first, second = sorted((src, tgt))
    return first, second


def stored_knowledge(workspace_dir: Path) -> Knowledge:
    """The knowledge base of one workspace as its SQLite store holds it (the service stopped)."""
    con = sqlite3.connect(f"file:{workspace_dir / DB_FILE_NAME}?mode=ro", uri=True)
    try:
        node_rows = con.execute("SELECT id, data FROM graph_nodes").fetchall()
        edge_rows = con.execute("SELECT src, tgt, data FROM graph_edges").fetchall()
        vector_rows = con.execute("SELECT ns, id FROM vectors").fetchall()
    finally:
        con.close()
    vectors: dict[str, set[str]] = {ns: set() for ns in VECTOR_NAMESPACES}
    for ns, vector_id in vector_rows:
        vectors.setdefault(ns, set()).add(vector_id)
    relation_chunks = read_kv_namespace(workspace_dir, "relation_chunks")
    return Knowledge(
        nodes={name: _sources(json.loads(data).get("source_id")) for name, data in node_rows},
        edges={_pair(s, t): _sources(json.loads(data).get("source_id")) for s, t, data in edge_rows},
        entity_chunks={
            name: frozenset(v.get("chunk_ids") or [])
            for name, v in read_kv_namespace(workspace_dir, "entity_chunks").items()
        },
        relation_chunks={
            _pair(*key.split(GRAPH_FIELD_SEP, 1)): frozenset(v.get("chunk_ids") or [])
            for key, v in relation_chunks.items()
        },
        chunks={cid: c for cid, c in read_kv_namespace(workspace_dir, "text_chunks").items() if c},
        vectors={ns: frozenset(ids) for ns, ids in vectors.items()},
        documents={
            doc_id: (str(d.get("status")), frozenset(d.get("chunks_list") or []))
            for doc_id, d in read_kv_namespace(workspace_dir, "doc_status").items()
            if d
        },
    )


def pg_knowledge(pg: dict[str, str], workspace: str) -> Knowledge:
    """The knowledge base of ``workspace`` as PostgreSQL holds it (LightRAG's PG storages and our
    PGPlainGraphStorage; ``pg`` holds the POSTGRES_* variables)."""
    import asyncio

    import asyncpg

    async def read() -> dict[str, list]:
        conn = await asyncpg.connect(
            host=pg["POSTGRES_HOST"], port=int(pg["POSTGRES_PORT"]), user=pg["POSTGRES_USER"],
            password=pg["POSTGRES_PASSWORD"], database=pg["POSTGRES_DATABASE"],
        )  # fmt: skip
        try:
            tables = [
                r["table_name"]
                for r in await conn.fetch(
                    "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
                )
            ]

            def vdb(kind: str) -> str:
                return next(t for t in tables if t.startswith(f"lightrag_vdb_{kind}"))

            queries = {
                "nodes": "SELECT id, properties->>'source_id' AS src FROM lightrag_plain_graph_nodes "
                "WHERE workspace = $1",
                "edges": "SELECT source, target, properties->>'source_id' AS src "
                "FROM lightrag_plain_graph_edges WHERE workspace = $1",
                "entity_chunks": "SELECT id, chunk_ids FROM lightrag_entity_chunks WHERE workspace = $1",
                "relation_chunks": "SELECT id, chunk_ids FROM lightrag_relation_chunks WHERE workspace = $1",
                "chunks": "SELECT id, full_doc_id, content FROM lightrag_doc_chunks WHERE workspace = $1",
                "documents": "SELECT id, status, chunks_list FROM lightrag_doc_status WHERE workspace = $1",
                **{
                    f"vdb_{ns}": f"SELECT id FROM {vdb(kind)} WHERE workspace = $1"
                    for ns, kind in zip(VECTOR_NAMESPACES, ("chunks", "entity", "relation"), strict=True)
                },
            }
            return {
                name: [dict(r) for r in await conn.fetch(sql, workspace)] for name, sql in queries.items()
            }
        finally:
            await conn.close()

    rows = asyncio.run(read())

    def ids(value: Any) -> frozenset[str]:
        return frozenset(json.loads(value) if isinstance(value, str) else value or [])

    return Knowledge(
        nodes={r["id"]: _sources(r["src"]) for r in rows["nodes"]},
        edges={_pair(r["source"], r["target"]): _sources(r["src"]) for r in rows["edges"]},
        entity_chunks={r["id"]: ids(r["chunk_ids"]) for r in rows["entity_chunks"]},
        relation_chunks={
            _pair(*r["id"].split(GRAPH_FIELD_SEP, 1)): ids(r["chunk_ids"]) for r in rows["relation_chunks"]
        },
        chunks={r["id"]: {"full_doc_id": r["full_doc_id"], "content": r["content"]} for r in rows["chunks"]},
        vectors={ns: frozenset(r["id"] for r in rows[f"vdb_{ns}"]) for ns in VECTOR_NAMESPACES},
        documents={r["id"]: (str(r["status"]), ids(r["chunks_list"])) for r in rows["documents"]},
    )


async def workspace_dir(svc: Any, tenant: str = "default") -> Path:
    """Where an in-process service (tests.helpers.start_service) keeps ``tenant``'s store."""
    async with svc.services.engines.use(tenant) as engine:
        rag = engine.rag
        return db_path_for({"working_dir": rag.working_dir}, rag.workspace).parent


def _show(value: Any) -> str:
    return repr(sorted(value) if isinstance(value, frozenset) else value)


def _differences(name: str, actual: dict, reference: dict, limit: int = 5) -> list[str]:
    out = []
    for key in sorted(set(actual) | set(reference), key=str):
        have, want = actual.get(key), reference.get(key)
        if have == want:
            continue
        if isinstance(have, frozenset) and isinstance(want, frozenset):
            out.append(f"{name}[{key!r}]: extra {_show(have - want)}, missing {_show(want - have)}")
        else:
            out.append(f"{name}[{key!r}]: {_show(have)} != reference {_show(want)}")
    return out[:limit] + ([f"{name}: {len(out) - limit} more"] if len(out) > limit else [])


def assert_same_knowledge(actual: Knowledge, reference: Knowledge) -> None:
    """``actual`` holds exactly what ``reference`` holds (see the module docstring); fails with the
    first differences of each part."""
    problems: list[str] = []
    problems += _differences("nodes", actual.nodes, reference.nodes)
    problems += _differences("edges", actual.edges, reference.edges)
    problems += _differences("entity_chunks", actual.entity_chunks, reference.entity_chunks)
    problems += _differences("relation_chunks", actual.relation_chunks, reference.relation_chunks)
    problems += _differences(
        "chunks", {"ids": frozenset(actual.chunks)}, {"ids": frozenset(reference.chunks)}
    )
    problems += _differences("vectors", actual.vectors, reference.vectors)
    problems += _differences("documents", actual.documents, reference.documents)
    assert not problems, "the knowledge bases differ:\n" + "\n".join(problems)


def assert_forgotten(knowledge: Knowledge, markers: Iterable[str]) -> None:
    """Nothing of the documents with these unique words is left (no chunk, no entity)."""
    left = {marker: found for marker in markers if (found := knowledge.mentions(marker))}
    assert not left, f"left of documents that should be gone: {left}"
