"""Storage selection by environment, with LightRAG Server's variable names, validated at start-up.

`storage_kwargs_from_env(env)` reads (from ``Settings.lightrag_env``) LIGHTRAG_KV_STORAGE /
LIGHTRAG_VECTOR_STORAGE / LIGHTRAG_GRAPH_STORAGE / LIGHTRAG_DOC_STATUS_STORAGE (file storages when
unset), checks that each
name exists and fits its slot, that the variables it needs (POSTGRES_*, NEO4J_*, REDIS_URI, ...) are
set and that its driver package is installed, and returns the kwargs for `LightRAG(...)`.
Every problem is reported at start-up in one `StorageConfigError` that names the variable, instead
of surfacing on the first document.

`*_WORKSPACE` overrides (POSTGRES_WORKSPACE, REDIS_WORKSPACE, ...) are refused: LightRAG lets them
replace every instance's workspace, which would merge all tenants into one knowledge base.

LightRAG's `pipmaster` is stopped from pip-installing drivers at import time
(`lightrag_compat.block_runtime_installs`): a missing driver becomes an ImportError naming the
package to declare.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping
from typing import Any

from src.rag.lightrag_compat import (
    block_runtime_installs,
    fence_postgres,
    install_check_tables_lock,
    register_storage,
    storage_env_requirements,
    storage_implementations,
)
from src.rag.storage.fence import check_current_write

#: LightRAG(...) keyword -> (environment variable, LightRAG storage type, default). The defaults are
#: the embedded SQLite storages (src/rag/storage/embedded.py): LightRAG's file storages rewrite
#: whole files on the event loop after every pass, which does not scale with the knowledge base.
SLOTS: dict[str, tuple[str, str, str]] = {
    "kv_storage": ("LIGHTRAG_KV_STORAGE", "KV_STORAGE", "SqliteKVStorage"),
    "vector_storage": ("LIGHTRAG_VECTOR_STORAGE", "VECTOR_STORAGE", "SqliteVectorStorage"),
    "graph_storage": ("LIGHTRAG_GRAPH_STORAGE", "GRAPH_STORAGE", "SqliteGraphStorage"),
    "doc_status_storage": ("LIGHTRAG_DOC_STATUS_STORAGE", "DOC_STATUS_STORAGE", "SqliteDocStatusStorage"),
}

#: Variables that make LightRAG put every instance in one workspace (each tenant needs its own).
WORKSPACE_OVERRIDES = (
    "POSTGRES_WORKSPACE",
    "REDIS_WORKSPACE",
    "NEO4J_WORKSPACE",
    "MONGODB_WORKSPACE",
    "MILVUS_WORKSPACE",
    "QDRANT_WORKSPACE",
    "MEMGRAPH_WORKSPACE",
    "OPENSEARCH_WORKSPACE",
)

#: Storage name prefix -> importable driver modules (pip distribution name in brackets for the message).
DRIVERS: dict[str, list[tuple[str, str]]] = {
    "PG": [("asyncpg", "asyncpg"), ("pgvector", "pgvector")],
    "Redis": [("redis", "redis")],
    "Neo4J": [("neo4j", "neo4j")],
    "Memgraph": [("neo4j", "neo4j")],
    "Mongo": [("pymongo", "pymongo")],
    "Milvus": [("pymilvus", "pymilvus")],
    "Qdrant": [("qdrant_client", "qdrant-client")],
    "Faiss": [("faiss", "faiss-cpu")],
    "OpenSearch": [("opensearchpy", "opensearch-py")],
}

#: Our own storages, registered into LightRAG's tables by `register_own_storages()`.
OWN_STORAGES: list[tuple[str, str, str, list[str]]] = [
    (
        "GRAPH_STORAGE",
        "PGPlainGraphStorage",
        "src.rag.storage.pg_graph",
        ["POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DATABASE"],
    ),
]


class StorageConfigError(ValueError):
    """Start-up configuration of the storages is unknown or incomplete."""


def register_own_storages() -> None:
    from src.rag.storage.embedded import register_embedded_storages

    register_embedded_storages()
    for storage_type, name, module, env_vars in OWN_STORAGES:
        register_storage(storage_type, name, module, env_vars)


def _drivers_for(name: str) -> list[tuple[str, str]]:
    for prefix, drivers in DRIVERS.items():
        if name.startswith(prefix):
            return drivers
    return []


def storage_kwargs_from_env(env: Mapping[str, str]) -> dict[str, Any]:
    """Validate the storage configuration and return `{kv_storage, vector_storage, graph_storage,
    doc_status_storage}` for `LightRAG(...)`. Raises StorageConfigError listing every problem.

    With nothing set the result is the embedded SQLite storages.
    """
    block_runtime_installs()
    register_own_storages()
    problems: list[str] = []
    kwargs: dict[str, Any] = {}
    for keyword, (variable, storage_type, default) in SLOTS.items():
        name = (env.get(variable) or "").strip() or default
        kwargs[keyword] = name
        allowed = storage_implementations(storage_type)
        if name not in allowed:
            choices = ", ".join(allowed)
            problems.append(f"{variable}={name!r} is not a {storage_type}; choose one of: {choices}")
            continue
        required = storage_env_requirements(name)
        missing = [var for var in required if not (env.get(var) or "").strip()]
        if missing:
            problems.append(f"{variable}={name} needs the environment variable(s) {', '.join(missing)}")
        absent = [dist for module, dist in _drivers_for(name) if importlib.util.find_spec(module) is None]
        if absent:
            problems.append(
                f"{variable}={name} needs the Python package(s) {', '.join(absent)}, which are not installed"
            )
    if any(name.startswith("PG") for name in kwargs.values()):
        port = (env.get("POSTGRES_PORT") or "5432").strip()
        if not port.isdigit() or not 0 < int(port) < 65536:
            problems.append(f"POSTGRES_PORT={port!r} is not a TCP port number")
    for variable in WORKSPACE_OVERRIDES:
        if (env.get(variable) or "").strip():
            problems.append(
                f"{variable} is set: LightRAG would put every tenant into that one workspace; unset it "
                "(each tenant keeps its own workspace)"
            )
    if problems:
        raise StorageConfigError("Storage configuration invalid: " + "; ".join(problems))
    if any(name.startswith("PG") for name in kwargs.values()):
        install_check_tables_lock()  # LightRAG's table creation races between instances otherwise
        fence_postgres(check_current_write)  # a stale owner's writes are refused (fence.py)
    return kwargs
