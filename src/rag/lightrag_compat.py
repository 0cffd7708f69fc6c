"""Every LightRAG internal this service relies on, named once, each with why we need it.

"Internal" means what LightRAG does not promise to keep: private attributes and methods, its
internal modules (`lightrag.operate`, `lightrag.kg.*`), the shape of its configuration and status
dicts, and the places where we patch it at run time. Public API (`LightRAG`, `QueryParam`,
`lightrag.base` types, `lightrag.utils` helpers) is imported where it is used, inside `src/rag`.

tests/test_lightrag_contract.py checks every name here against the installed LightRAG (that it
exists, takes the arguments we pass, behaves as we rely on), so an upgrade that changes one fails
there, by name. One reliance lives elsewhere on purpose: the wording of LightRAG's prompts, in
`src/rag/prompts.py`, which the benchmark mock LLM shares without importing LightRAG; the
contract test checks it too. docs/lightrag-upgrade.md says what 1.5 changes here.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import copy
import functools
import importlib.metadata
import re
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable
from dataclasses import asdict
from typing import Any, TypeVar

import networkx as nx
import pipmaster
from lightrag import LightRAG
from lightrag import kg as lightrag_kg
from lightrag.base import StorageNameSpace

# The description summary `merge_nodes_and_edges` makes for each entity and relation under its keyed
# lock (`_merge_nodes_then_upsert` / `_merge_edges_then_upsert` call it), and the pieces those two use
# to build the description list they hand it: src/rag/engine/presummary.py builds the same list and
# makes the same (cached) call before the merge, outside the locks.
from lightrag.constants import GRAPH_FIELD_SEP, SOURCE_IDS_LIMIT_METHOD_KEEP

# The storage classes our embedded storages subclass (src/rag/storage/embedded.py), for their read
# paths and result shapes: see `JsonStorageState` and `NetworkXState` for the state they share.
from lightrag.kg.json_doc_status_impl import JsonDocStatusStorage
from lightrag.kg.json_kv_impl import JsonKVStorage
from lightrag.kg.networkx_impl import NetworkXStorage

# LightRAG's process-wide namespace data, locks and flags, which its JSON storages bind to.
from lightrag.kg.shared_storage import (
    get_data_init_lock,
    get_namespace_data,
    get_namespace_lock,
    get_update_flag,
    try_initialize_namespace,
)
from lightrag.operate import _handle_entity_relation_summary as summarize_descriptions

# LightRAG's default chunking: when a LightRAG instance still uses it, a big text is cut the same
# way in a child process (src/rag/engine/chunking.py; tests/test_chunking_child.py compares them).
from lightrag.operate import chunking_by_token_size as _default_chunking

# The two stages of LightRAG's per-document pipeline that the indexer runs itself (one document,
# owned by its task, instead of LightRAG's batch pass); their keyword arguments are checked by the
# contract test.
from lightrag.operate import extract_entities, merge_nodes_and_edges
from lightrag.utils import apply_source_ids_limit, make_relation_chunk_key, merge_source_ids

__all__ = [
    "DELETE_REFUSED_WHILE_BUSY",
    "GRAPH_FIELD_SEP",
    "SOURCE_IDS_LIMIT_METHOD_KEEP",
    "DELETION_DOCUMENT_STORAGES",
    "LIMITER_KWARGS",
    "LOCK_CONTEXT_VAR",
    "SUPPORTED_LIGHTRAG",
    "JsonDocStatusStorage",
    "JsonKVStorage",
    "JsonStorageState",
    "NetworkXStorage",
    "NetworkXState",
    "UnsupportedLightRAG",
    "apply_source_ids_limit",
    "block_runtime_installs",
    "check_lightrag_version",
    "deletion_view",
    "chunks_by_default_chunking",
    "document_global_config",
    "extract_entities",
    "fence_postgres",
    "get_data_init_lock",
    "in_own_task",
    "installed_lightrag_version",
    "json_doc_status_items",
    "join_namespace",
    "make_relation_chunk_key",
    "merge_nodes_and_edges",
    "merge_source_ids",
    "new_pipeline_status",
    "persist_all",
    "postgres_client",
    "release_postgres_client",
    "run_with_retry",
    "install_check_tables_lock",
    "RuntimeInstallBlocked",
    "register_storage",
    "replace_provider_functions",
    "storage_env_requirements",
    "storage_implementations",
    "summarize_descriptions",
    "update_flag",
    "validate_embedding_func",
]

_T = TypeVar("_T")

# ----------------------------------------------------------------------------- the version
#: The one distribution whose internals this module names.
LIGHTRAG_DISTRIBUTION = "lightrag-hku"
#: Our own distribution: its requirement on LightRAG (pyproject.toml) states the supported release.
SERVICE_DISTRIBUTION = "rag-ingest-service"


class UnsupportedLightRAG(RuntimeError):
    """The installed LightRAG is not the release this module was checked against."""


def _pinned_version() -> str:
    """The release our package metadata pins LightRAG to (``lightrag-hku==X``): stated once, in
    pyproject.toml, read back through importlib.metadata."""
    for requirement in importlib.metadata.requires(SERVICE_DISTRIBUTION) or []:
        match = re.fullmatch(r"lightrag-hku\s*==\s*([\w.]+)", requirement.split(";")[0].strip())
        if match:
            return match.group(1)
    raise UnsupportedLightRAG(f"{SERVICE_DISTRIBUTION} does not pin {LIGHTRAG_DISTRIBUTION} to one release")


#: The LightRAG release the reach-ins below were checked against.
SUPPORTED_LIGHTRAG = _pinned_version()


def installed_lightrag_version() -> str:
    return importlib.metadata.version(LIGHTRAG_DISTRIBUTION)


def check_lightrag_version(installed: str | None = None) -> None:
    """Refuse to start on another LightRAG release than the supported one: the reach-ins here
    would fail later, in the middle of a document (some silently: see docs/lightrag-upgrade.md)."""
    installed = installed or installed_lightrag_version()
    if installed != SUPPORTED_LIGHTRAG:
        raise UnsupportedLightRAG(
            f"{LIGHTRAG_DISTRIBUTION} {installed} is installed, but this service supports "
            f"{LIGHTRAG_DISTRIBUTION}=={SUPPORTED_LIGHTRAG} only: it relies on LightRAG internals "
            "(src/rag/lightrag_compat.py) that other releases change. Install "
            f"{LIGHTRAG_DISTRIBUTION}=={SUPPORTED_LIGHTRAG} (see docs/lightrag-upgrade.md)."
        )


# ----------------------------------------------------------------------------- lock state
#: The name LightRAG gives the ContextVar in which a `NamespaceLock` (e.g. a JSON storage's lock)
#: marks itself held. Why we care: LightRAG clears it only after its release, which awaits a
#: shield; a cancel landing there (a user's cancel of a running task) leaves the var set in the
#: cancelled task's context, and the next use of the same lock in that context raises
#: `RuntimeError('NamespaceLock already acquired in current coroutine context')`: the purge after
#: a cancel crashed and the task stayed `cancelling` until its lease expired twice.
LOCK_CONTEXT_VAR = "lock_ctx"


def _context_without_lock_state() -> contextvars.Context:
    """A copy of the current context (log fields and all) minus LightRAG's lock-held markers."""
    clean = contextvars.Context()
    for var, value in contextvars.copy_context().items():
        if var.name != LOCK_CONTEXT_VAR:
            clean.run(var.set, value)
    return clean


async def in_own_task(work: Coroutine[Any, Any, _T]) -> _T:
    """Run ``work`` in a child task started without LightRAG's lock state: lock state a cancel
    strands there dies with it. Cancelling the caller cancels the child (an awaited task is
    cancelled with its awaiter)."""
    return await asyncio.create_task(work, context=_context_without_lock_state())


# ----------------------------------------------------------------------------- storages: state
class JsonStorageState:
    """The state LightRAG's JSON storages (`JsonKVStorage`, `JsonDocStatusStorage`) keep.

    Why: our embedded storages (src/rag/storage/embedded.py) subclass them to keep their read
    paths (same results, same thresholds) and replace only persistence, so they share the base
    class's state: the records dict `_data`, the namespace lock `_storage_lock` that guards it, and
    the JSON file `_file_name` that an old knowledge base is imported from.
    """

    namespace: str
    workspace: str
    storage_updated: Any
    _data: Any
    _storage_lock: Any
    _file_name: str

    @property
    def records(self) -> dict[str, Any]:
        return self._data

    @property
    def records_lock(self) -> Any:
        return self._storage_lock

    @property
    def legacy_file(self) -> str:
        return self._file_name


@contextlib.asynccontextmanager
async def join_namespace(storage: JsonStorageState) -> AsyncIterator[bool]:
    """Bind a JSON storage to LightRAG's process-wide namespace data, lock and update flag, as
    `JsonKVStorage.initialize` does; yields True when this call created the namespace (the caller
    then loads it, still under LightRAG's data-init lock)."""
    namespace, workspace = storage.namespace, storage.workspace
    storage._storage_lock = get_namespace_lock(namespace, workspace=workspace)
    storage.storage_updated = await get_update_flag(namespace, workspace=workspace)
    async with get_data_init_lock():
        created = await try_initialize_namespace(namespace, workspace=workspace)
        storage._data = await get_namespace_data(namespace, workspace=workspace)
        yield created


async def json_doc_status_items(storage: Any) -> list[tuple[str, dict[str, Any]]] | None:
    """A shallow snapshot (references, no copies) of an in-memory JSON doc-status storage's
    records, taken under its lock; None for other storages (they page in their database).

    Why: LightRAG's `get_docs_paginated` builds an object per record and sorts them all on the
    event loop; the listing filters and sorts a snapshot in a worker thread instead."""
    # (An embedded namespace whose memory is only a write-back buffer, `_on_disk`, is no snapshot:
    # doc status is not one today.)
    if not isinstance(storage, JsonDocStatusStorage) or getattr(storage, "_on_disk", False):
        return None
    async with storage._storage_lock:
        return list(storage._data.items())


class NetworkXState:
    """The state LightRAG's `NetworkXStorage` keeps: the graph `_graph`, read by every inherited
    method (through `_get_graph`), and the GraphML file `_graphml_xml_file` an old knowledge base is
    imported from. Why: our embedded graph storage subclasses it for the same reason as the JSON
    ones (see `JsonStorageState`)."""

    storage_updated: Any
    _graph: Any
    _graphml_xml_file: str
    _storage_lock: Any

    def init_graph_state(self, graphml_file: str) -> None:
        """What `NetworkXStorage.__post_init__` sets, without reading the GraphML file."""
        self._graphml_xml_file = graphml_file
        self._storage_lock = None
        self.storage_updated = None
        self._graph = nx.Graph()

    @property
    def nx_graph(self) -> nx.Graph:
        return self._graph

    @nx_graph.setter
    def nx_graph(self, graph: nx.Graph) -> None:
        self._graph = graph

    @property
    def legacy_graph_file(self) -> str:
        return self._graphml_xml_file


def validate_embedding_func(storage: Any) -> None:
    """`BaseVectorStorage._validate_embedding_func`: LightRAG asks every vector storage to call it
    first in ``__post_init__`` (a missing embedding function fails at construction)."""
    storage._validate_embedding_func()


async def update_flag(namespace: str, workspace: str) -> Any:
    """LightRAG's per-namespace "changed by another process" flag, which storages expose as
    ``storage_updated`` (LightRAG's pipeline reads it)."""
    return await get_update_flag(namespace, workspace=workspace)


# ----------------------------------------------------------------------------- storages: tables
def storage_implementations(storage_type: str) -> list[str]:
    """The storage class names LightRAG accepts for a slot (``KV_STORAGE``, ...)."""
    return lightrag_kg.STORAGE_IMPLEMENTATIONS[storage_type]["implementations"]


def storage_env_requirements(name: str) -> list[str]:
    """The environment variables LightRAG requires for a storage class."""
    return list(lightrag_kg.STORAGE_ENV_REQUIREMENTS.get(name, []))


def register_storage(storage_type: str, name: str, module: str, env_vars: Iterable[str] = ()) -> None:
    """Add a storage class to LightRAG's tables so `LightRAG(<slot>=name)` finds it (idempotent).

    Why: LightRAG resolves storages by name through module-level tables (`lightrag.kg.STORAGES`,
    `STORAGE_IMPLEMENTATIONS`, `STORAGE_ENV_REQUIREMENTS`); there is no registration API."""
    implementations = storage_implementations(storage_type)
    if name not in implementations:
        implementations.append(name)
    lightrag_kg.STORAGES[name] = module  # an absolute module path: lazy_external_import ignores the package
    lightrag_kg.STORAGE_ENV_REQUIREMENTS[name] = list(env_vars)


# ----------------------------------------------------------------------------- run-time patches
_PIP_FUNCTIONS = (
    "install",
    "install_if_missing",
    "install_edit",
    "install_requirements",
    "install_multiple",
    "install_multiple_if_not_installed",
    "install_version",
    "install_or_update",
    "install_or_update_multiple",
    "ensure_packages",
    "ensure_requirements",
    "async_install",
    "async_install_if_missing",
    "async_ensure_packages",
    "async_ensure_requirements",
)


class RuntimeInstallBlocked(ImportError):
    """LightRAG tried to pip-install a package while the service runs."""


def block_runtime_installs() -> None:
    """Make every `pipmaster` install function raise instead of running pip (idempotent).

    Why: LightRAG's storage modules call `pm.install(...)` at import time when a driver is missing;
    in a service that would change the environment at run time (and fail offline)."""
    for name in _PIP_FUNCTIONS:
        current = getattr(pipmaster, name, None)
        if current is None or getattr(current, "_rag_blocked", False):
            continue

        def refuse(*args: Any, _name: str = name, **kwargs: Any) -> Any:
            package = args[0] if args else kwargs.get("package") or kwargs.get("packages")
            raise RuntimeInstallBlocked(
                f"LightRAG asked pipmaster.{_name}({package!r}) at run time; this service never installs "
                f"packages while running: declare {package!r} as a dependency in pyproject.toml"
            )

        refuse._rag_blocked = True  # type: ignore[attr-defined]
        setattr(pipmaster, name, refuse)


#: Serialises LightRAG's own PostgreSQL table creation (`PostgreSQLDB.check_tables`) across
#: instances: any constant shared by every instance.
LIGHTRAG_SCHEMA_LOCK_KEY = 0x5047_4C52_5343_48  # "PGLRSCH"


def install_check_tables_lock() -> None:
    """Run LightRAG's `PostgreSQLDB.check_tables` under a cluster-wide advisory lock (idempotent).

    Why: check_tables probes each table and creates it without IF NOT EXISTS, so instances that
    start together on a fresh database fail with DuplicateTableError. The lock is session-level on
    one pooled connection (`_ensure_pool` opens LightRAG's pool); check_tables itself runs on
    others, so the pool needs at least two connections (LightRAG's default is 50)."""
    block_runtime_installs()  # the PostgreSQL module pip-installs its drivers when they are missing
    from lightrag.kg.postgres_impl import PostgreSQLDB

    original = PostgreSQLDB.check_tables
    if getattr(original, "_rag_locked", False):
        return

    async def check_tables(self: Any) -> None:
        await self._ensure_pool()
        assert self.pool is not None
        async with self.pool.acquire() as conn:
            # Poll rather than block: check_tables may CREATE INDEX CONCURRENTLY, which waits for
            # every open statement, including a session blocked in pg_advisory_lock (a deadlock).
            while True:  # noqa: ASYNC110 (the lock lives in another process: nothing to await but time)
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LIGHTRAG_SCHEMA_LOCK_KEY):
                    break
                await asyncio.sleep(0.05)
            try:
                await original(self)
            finally:
                await conn.execute("SELECT pg_advisory_unlock($1)", LIGHTRAG_SCHEMA_LOCK_KEY)

    check_tables._rag_locked = True  # type: ignore[attr-defined]
    PostgreSQLDB.check_tables = check_tables  # type: ignore[method-assign]


def fence_postgres(check: Callable[[], None]) -> None:
    """Call ``check()`` before every operation LightRAG's PostgreSQL storages run on a pooled
    connection, including each retry (idempotent; ``check`` raises to refuse).

    Why: with several instances, only a workspace's owner may write into it; an owner resuming
    from a stall must send nothing more once its lock may be gone (src/rag/storage/fence.py).
    Every read and write of LightRAG's PG storages goes through `PostgreSQLDB._run_with_retry`
    (`execute`, `query` and the storages' batched upserts), which hands the operation a connection:
    the check runs right before the operation uses it."""
    block_runtime_installs()
    from lightrag.kg.postgres_impl import PostgreSQLDB

    original = PostgreSQLDB._run_with_retry
    if getattr(original, "_rag_fenced", False):
        return

    @functools.wraps(original)
    async def run_with_retry(self: Any, operation: Callable[[Any], Any], **kwargs: Any) -> Any:
        async def fenced(connection: Any) -> Any:
            check()
            return await operation(connection)

        return await original(self, fenced, **kwargs)

    run_with_retry._rag_fenced = True  # type: ignore[attr-defined]
    PostgreSQLDB._run_with_retry = run_with_retry  # type: ignore[method-assign]


async def postgres_client(vector_storage: str | None) -> Any:
    """LightRAG's process-wide PostgreSQL client (`kg.postgres_impl.ClientManager`): our graph
    storage shares the pool of LightRAG's PG storages instead of opening its own."""
    block_runtime_installs()
    from lightrag.kg.postgres_impl import ClientManager

    return await ClientManager.get_client(vector_storage=vector_storage)


async def release_postgres_client(db: Any) -> None:
    from lightrag.kg.postgres_impl import ClientManager

    await ClientManager.release_client(db)


async def run_with_retry(db: Any, operation: Callable[[Any], Coroutine[Any, Any, _T]]) -> _T:
    """Run ``operation(connection)`` on LightRAG's PostgreSQL pool with its retry of transient
    connection errors (`PostgreSQLDB._run_with_retry`). Why: our plain-table graph storage shares
    LightRAG's pool (one pool per process for all four storages) and its reconnect policy."""
    return await db._run_with_retry(operation)


# ----------------------------------------------------------------------------- the LLM and embeddings
#: Keyword arguments LightRAG's own limiter (`utils.priority_limit_async_func_call`) adds to every
#: LLM and embedding call; our scheduled functions, which replace the limiter, drop them.
LIMITER_KWARGS = ("_priority", "_timeout", "_queue_timeout")


def replace_provider_functions(rag: LightRAG, llm_func: Callable[..., Any], embedding_func: Any) -> None:
    """Install our LLM and embedding functions in place of the ones `LightRAG.__post_init__`
    wrapped in its limiter (whose worker tasks lose the caller's context, so priorities could not
    reach our scheduler).

    Where LightRAG reads them afterwards: ``self.llm_model_func`` at call time, through
    ``asdict(self)`` (so assigning the attribute is enough; it must be a plain function, ``asdict``
    deep-copies it); ``self.embedding_func`` and each storage's ``embedding_func``, captured at
    construction (vector upserts/queries, ``text_chunks.embedding_func`` for query embeddings)."""
    rag.llm_model_func = llm_func
    rag.embedding_func = embedding_func
    for value in list(vars(rag).values()):
        if isinstance(value, StorageNameSpace) and getattr(value, "embedding_func", None) is not None:
            value.embedding_func = embedding_func


# ----------------------------------------------------------------------------- the per-document pipeline
def chunks_by_default_chunking(rag: LightRAG) -> bool:
    """Whether ``rag.chunking_func`` is LightRAG's own ``chunking_by_token_size`` (not one the
    operator configured), whose chunks src/rag/engine/chunk_child.py reproduces."""
    return rag.chunking_func is _default_chunking


def document_global_config(rag: LightRAG, llm_func: Callable[..., Any]) -> dict[str, Any]:
    """The ``global_config`` LightRAG's stages (`extract_entities`, `merge_nodes_and_edges`) read,
    with ``llm_func`` as the LLM of this one document. Why: `process_document` builds it as
    ``asdict(self)`` and the stages take their LLM from ``global_config["llm_model_func"]``; the
    indexer gives each document its own, cancellable, LLM function there."""
    config = asdict(rag)
    config["llm_model_func"] = llm_func
    return config


def new_pipeline_status() -> dict[str, Any]:
    """A private pipeline-status dict of the shape LightRAG's stages read and write: they check
    ``cancellation_requested`` at each chunk, entity and relation and log into the messages.
    ``busy`` stays False: it is never the workspace's shared flag (which `adelete_by_doc_id`
    refuses to run beside)."""
    return {
        "busy": False,
        "cancellation_requested": False,
        "latest_message": "",
        "history_messages": deque(maxlen=100),
    }


#: `DeletionResult.status` of `adelete_by_doc_id` while LightRAG's pipeline ``busy`` flag is set.
DELETE_REFUSED_WHILE_BUSY = "not_allowed"


#: The storages through which `adelete_by_doc_id` (and its `_update_delete_retry_state`) reach the
#: document being deleted by its id; everything else it finds from the chunk ids and entity/relation
#: lists read there.
DELETION_DOCUMENT_STORAGES = ("doc_status", "full_docs", "full_entities", "full_relations")


def deletion_view(rag: LightRAG, storages: dict[str, Any]) -> LightRAG:
    """A shallow copy of ``rag`` with some of its DELETION_DOCUMENT_STORAGES replaced, so that
    `adelete_by_doc_id` on it deletes a document that exists only in the replacements (the joint
    document of a purge pass, src/rag/engine/purges.py) while every other storage is ``rag``'s own.
    Relies on `adelete_by_doc_id` reaching those storages only as attributes of ``self``."""
    unknown = set(storages) - set(DELETION_DOCUMENT_STORAGES)
    if unknown:
        raise ValueError(f"not a storage of the deleted document: {sorted(unknown)}")
    view = copy.copy(rag)
    for name, storage in storages.items():
        setattr(view, name, storage)
    return view


async def persist_all(rag: LightRAG) -> None:
    """Ask every storage to persist, as LightRAG's private `_insert_done` does after each document
    (used when no group commit is given: storages chosen with LIGHTRAG_*_STORAGE)."""
    await rag._insert_done()


# --------------------------------------------------------------------------------- RAG-Anything
# Multimodal items (src/rag/engine/modal.py) are written exactly as RAG-Anything's own pipeline
# writes them; the chunk text comes from its private template method so the two never drift.


def multimodal_chunk_text(rag_anything: Any, kind: str, item: dict[str, Any], description: str) -> str:
    """RAG-Anything 1.4.3's ``RAGAnything._apply_chunk_template``: the chunk ``insert_content_list``
    writes for an image / table / equation / generic item with its description."""
    return str(rag_anything._apply_chunk_template(kind, item, description))
