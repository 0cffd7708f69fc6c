"""The contract between this service and the installed LightRAG: every reach-in of
src/rag/lightrag_compat.py (and the prompt wording src/rag/prompts.py keys on) still has the name,
signature and behaviour we rely on. Run against another release (docs/lightrag-upgrade.md) it says,
test by test, what an upgrade has to change. Real LightRAG storages on temp dirs, no app.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import re
import tomllib
import uuid
from pathlib import Path
from typing import Any

import pytest
from lightrag import LightRAG, QueryParam
from lightrag.base import DocStatus

from src.rag import lightrag_compat as compat
from src.rag.knowledge import DocumentStatus
from tests.conftest import make_settings

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[1]


def _params(function: Any) -> set[str]:
    return set(inspect.signature(function).parameters)


@pytest.fixture
async def rag(tmp_path: Path) -> Any:
    from src.rag.builder import build_lightrag

    settings = make_settings(tmp_path, None, embedding_provider="hash")
    instance = await build_lightrag(settings, workspace=f"contract-{uuid.uuid4().hex[:8]}")
    try:
        yield instance
    finally:
        await instance.finalize_storages()


# ----------------------------------------------------------------------------- the version
def test_the_installed_lightrag_is_the_supported_release() -> None:
    """Fails on any other release: this file then lists what changed."""
    assert compat.installed_lightrag_version() == compat.SUPPORTED_LIGHTRAG


def test_the_supported_release_is_the_pin_of_pyproject() -> None:
    """Catches package metadata older than pyproject.toml (reinstall after changing the pin)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert f"lightrag-hku=={compat.SUPPORTED_LIGHTRAG}" in project["dependencies"]


def test_another_release_is_refused_with_a_clear_message() -> None:
    compat.check_lightrag_version(compat.SUPPORTED_LIGHTRAG)
    with pytest.raises(compat.UnsupportedLightRAG) as refused:
        compat.check_lightrag_version("1.5.7")
    message = str(refused.value)
    assert "lightrag-hku 1.5.7 is installed" in message
    assert f"lightrag-hku=={compat.SUPPORTED_LIGHTRAG}" in message


async def test_start_up_refuses_an_unsupported_lightrag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches a service that starts on a LightRAG release it was not checked against (before it
    touches Redis or the data dir)."""
    from src.wiring import start_services

    monkeypatch.setattr(compat, "installed_lightrag_version", lambda: "1.5.7")
    settings = make_settings(tmp_path, "redis://127.0.0.1:1/0")
    with pytest.raises(compat.UnsupportedLightRAG, match="1.5.7 is installed"):
        await start_services(settings)
    assert not settings.data_dir.exists()


def test_document_statuses_are_lightrags() -> None:
    assert {s.value for s in DocumentStatus} == {s.value for s in DocStatus}


# ----------------------------------------------------------------------------- lock state
async def test_a_held_namespace_lock_marks_itself_in_the_named_context_var(rag: LightRAG) -> None:
    """`in_own_task` strips the var of this name; a rename would strand lock state again."""
    lock = rag.doc_status._storage_lock
    async with lock:
        names = {var.name for var in contextvars.copy_context()}
    assert compat.LOCK_CONTEXT_VAR in names


async def test_in_own_task_runs_without_the_lock_marker(rag: LightRAG) -> None:
    lock = rag.doc_status._storage_lock

    async def names() -> set[str]:
        return {var.name for var in contextvars.copy_context()}

    async with lock:
        assert compat.LOCK_CONTEXT_VAR not in await compat.in_own_task(names())


# ----------------------------------------------------------------------------- storages
async def test_json_storages_keep_their_state_where_the_embedded_ones_share_it(tmp_path: Path) -> None:
    """Our embedded KV storage binds to LightRAG's namespace like `JsonKVStorage.initialize`, and
    the inherited read paths read the records it keeps."""
    from lightrag.kg.shared_storage import initialize_share_data
    from lightrag.utils import EmbeddingFunc

    initialize_share_data()

    class Probe(compat.JsonStorageState, compat.JsonKVStorage):
        pass

    async def embed(texts: list[str]) -> Any:
        raise AssertionError("not used")

    config = {"working_dir": str(tmp_path), "embedding_batch_num": 8}
    embedding = EmbeddingFunc(embedding_dim=4, func=embed)
    workspace = f"contract-{uuid.uuid4().hex[:8]}"
    theirs = compat.JsonKVStorage(
        namespace="full_docs", workspace=workspace, global_config=config, embedding_func=embedding
    )
    probe = Probe(
        namespace="text_chunks", workspace=workspace, global_config=config, embedding_func=embedding
    )
    assert probe.legacy_file.endswith("kv_store_text_chunks.json")
    await theirs.initialize()
    async with compat.join_namespace(probe) as created:
        assert created
    for attribute in ("_data", "_storage_lock", "storage_updated"):
        ours_type, their_type = (type(getattr(s, attribute)).__name__ for s in (probe, theirs))
        assert ours_type == their_type, attribute
    async with probe.records_lock:
        probe.records["k"] = {"content": "v"}
    assert (await probe.get_by_id("k"))["content"] == "v"
    assert await probe.filter_keys({"k", "other"}) == {"other"}


async def test_the_doc_status_snapshot_is_its_records(rag: LightRAG) -> None:
    await rag.doc_status.upsert({"d1": {"status": DocStatus.PENDING, "content_summary": "s"}})
    items = await compat.json_doc_status_items(rag.doc_status)
    assert items is not None and [k for k, _ in items] == ["d1"]
    assert await compat.json_doc_status_items(object()) is None


async def test_networkx_reads_the_graph_the_embedded_storage_sets(rag: LightRAG) -> None:
    import networkx as nx

    graph = rag.chunk_entity_relation_graph
    assert isinstance(graph, compat.NetworkXStorage) and isinstance(graph, compat.NetworkXState)
    replacement = nx.Graph()
    replacement.add_node("Ada", entity_type="person")
    graph.nx_graph = replacement
    assert await graph.has_node("Ada") and graph.legacy_graph_file.endswith(".graphml")
    assert (await graph.get_node("Ada"))["entity_type"] == "person"


def test_vector_storages_validate_their_embedding_function(tmp_path: Path) -> None:
    from src.rag.storage.embedded import SqliteVectorStorage

    config = {
        "working_dir": str(tmp_path),
        "embedding_batch_num": 8,
        "vector_db_storage_cls_kwargs": {"cosine_better_than_threshold": 0.2},
    }
    with pytest.raises(ValueError, match="embedding_func"):
        SqliteVectorStorage(namespace="chunks", workspace="w", global_config=config, embedding_func=None)


#: The public methods of the storages our embedded ones extend (src/rag/storage/embedded.py), as
#: reviewed: each write among them is tracked for the group commit, each read of a disk-backed
#: namespace falls back to SQLite. A method LightRAG adds is unreviewed: if it writes the records
#: directly, our storages never persist that write.
REVIEWED_STORAGE_METHODS = {
    "JsonKVStorage": {
        "delete", "drop", "filter_keys", "finalize", "get_by_id", "get_by_ids",
        "index_done_callback", "initialize", "is_empty", "upsert",
    },
    "JsonDocStatusStorage": {
        "delete", "drop", "filter_keys", "finalize", "get_all_status_counts", "get_by_id",
        "get_by_ids", "get_doc_by_file_path", "get_docs_by_status", "get_docs_by_statuses",
        "get_docs_by_track_id", "get_docs_paginated", "get_status_counts", "index_done_callback",
        "initialize", "is_empty", "upsert",
    },
    "NetworkXStorage": {
        "delete_node", "drop", "edge_degree", "edge_degrees_batch", "finalize", "get_all_edges",
        "get_all_labels", "get_all_nodes", "get_edge", "get_edges_batch", "get_knowledge_graph",
        "get_node", "get_node_edges", "get_nodes_batch", "get_nodes_edges_batch",
        "get_popular_labels", "has_edge", "has_node", "has_nodes_batch", "index_done_callback",
        "initialize", "load_nx_graph", "node_degree", "node_degrees_batch", "remove_edges",
        "remove_nodes", "search_labels", "upsert_edge", "upsert_edges_batch", "upsert_node",
        "upsert_nodes_batch", "write_nx_graph",
    },
    "BaseVectorStorage": {
        "delete", "delete_entity", "delete_entity_relation", "drop", "finalize", "get_by_id",
        "get_by_ids", "get_vectors_by_ids", "index_done_callback", "initialize", "query", "upsert",
    },
}  # fmt: skip


@pytest.mark.parametrize("name", sorted(REVIEWED_STORAGE_METHODS))
def test_the_storage_api_our_embedded_storages_extend_is_the_reviewed_one(name: str) -> None:
    """Catches e.g. a doc-status method that writes `_data` without `upsert` (1.5's
    `update_doc_status_fields`): the write would never reach SQLite."""
    from lightrag.base import BaseVectorStorage

    cls = {"BaseVectorStorage": BaseVectorStorage}.get(name) or getattr(compat, name)
    public = {n for n, _ in inspect.getmembers(cls, inspect.isfunction) if not n.startswith("_")}
    assert public == REVIEWED_STORAGE_METHODS[name], {
        "new": sorted(public - REVIEWED_STORAGE_METHODS[name]),
        "gone": sorted(REVIEWED_STORAGE_METHODS[name] - public),
    }


async def test_update_flags_have_a_value(rag: LightRAG) -> None:
    flag = await compat.update_flag("contract_ns", rag.workspace)
    assert hasattr(flag, "value")


def test_storage_tables_take_a_registration() -> None:
    from lightrag.kg import STORAGES, verify_storage_implementation

    name = f"ContractProbeStorage{uuid.uuid4().hex[:6]}"
    compat.register_storage("KV_STORAGE", name, "tests.nowhere", ["CONTRACT_VAR"])
    assert name in compat.storage_implementations("KV_STORAGE")
    assert STORAGES[name] == "tests.nowhere"
    assert compat.storage_env_requirements(name) == ["CONTRACT_VAR"]
    verify_storage_implementation("KV_STORAGE", name)  # LightRAG accepts it for the slot


# ----------------------------------------------------------------------------- run-time patches
def test_pipmaster_install_functions_are_blocked() -> None:
    import pipmaster

    assert hasattr(pipmaster, "install")
    compat.block_runtime_installs()
    with pytest.raises(compat.RuntimeInstallBlocked, match="declare"):
        pipmaster.install("some-package")


def test_postgres_reach_ins_exist_with_the_arguments_we_pass() -> None:
    compat.block_runtime_installs()
    from lightrag.kg.postgres_impl import ClientManager, PostgreSQLDB

    assert inspect.iscoroutinefunction(PostgreSQLDB.check_tables) and _params(PostgreSQLDB.check_tables) == {
        "self"
    }
    assert inspect.iscoroutinefunction(PostgreSQLDB._ensure_pool)
    assert {"self", "operation"} <= _params(PostgreSQLDB._run_with_retry)
    # fence_postgres wraps the operation (first argument) and passes the rest by keyword; every
    # statement of LightRAG's PG storages must reach the pool through it.
    retry = inspect.signature(PostgreSQLDB._run_with_retry).parameters
    assert list(retry)[:2] == ["self", "operation"]
    assert all(p.kind == p.KEYWORD_ONLY for name, p in retry.items() if name not in ("self", "operation"))
    for method in (PostgreSQLDB.execute, PostgreSQLDB.query):
        assert "self._run_with_retry(" in inspect.getsource(method), method
    from src.rag.storage.fence import check_current_write

    compat.fence_postgres(check_current_write)  # the check production installs (process-wide, once)
    assert getattr(PostgreSQLDB._run_with_retry, "_rag_fenced", False)
    assert "vector_storage" in _params(ClientManager.get_client)
    assert "db" in _params(ClientManager.release_client)
    compat.install_check_tables_lock()
    assert getattr(PostgreSQLDB.check_tables, "_rag_locked", False)


# ----------------------------------------------------------------------------- the LLM and embeddings
def test_the_limiter_adds_the_keyword_arguments_we_drop() -> None:
    from lightrag import utils

    source = inspect.getsource(utils.priority_limit_async_func_call)
    for name in compat.LIMITER_KWARGS:
        assert re.search(rf"\b{name}=", source), name


async def test_replaced_provider_functions_are_the_ones_lightrag_calls(rag: LightRAG) -> None:
    """Catches a release whose LLM calls no longer go through `llm_model_func` (1.5: role
    functions wrap the original at construction) or whose storages keep their own embedding."""
    calls: list[str] = []

    async def llm(prompt: str, **kwargs: Any) -> str:
        calls.append(prompt)
        return "an answer"

    compat.replace_provider_functions(rag, llm, rag.embedding_func)
    assert rag.chunks_vdb.embedding_func is rag.embedding_func
    await rag.ainsert("Ada Lovelace wrote the first program for the Analytical Engine.")
    assert calls, "LightRAG's extraction did not call the installed LLM function"
    calls.clear()
    await rag.aquery("Who wrote the first program?", param=QueryParam(mode="naive"))
    assert calls, "LightRAG's answer did not call the installed LLM function"


async def test_a_query_result_has_the_shape_we_read(rag: LightRAG) -> None:
    await rag.ainsert("Grace Hopper built the first compiler.")
    result = await rag.aquery_llm("Who built the first compiler?", param=QueryParam(mode="naive"))
    llm = result["llm_response"]
    assert {"content", "is_streaming"} <= set(llm) and isinstance(llm["content"], str)
    streamed = await rag.aquery_llm("Who built it?", param=QueryParam(mode="naive", stream=True))
    assert streamed["llm_response"]["is_streaming"] and "response_iterator" in streamed["llm_response"]
    assert {"status", "message"} <= set(result)


# ----------------------------------------------------------------------------- the per-document pipeline
def test_pipeline_stages_take_the_arguments_the_indexer_passes() -> None:
    assert {
        "chunks",
        "global_config",
        "pipeline_status",
        "pipeline_status_lock",
        "llm_response_cache",
        "text_chunks_storage",
    } <= _params(compat.extract_entities)
    assert {
        "chunk_results",
        "knowledge_graph_inst",
        "entity_vdb",
        "relationships_vdb",
        "global_config",
        "full_entities_storage",
        "full_relations_storage",
        "doc_id",
        "pipeline_status",
        "pipeline_status_lock",
        "llm_response_cache",
        "entity_chunks_storage",
        "relation_chunks_storage",
        "current_file_number",
        "total_files",
        "file_path",
    } <= _params(compat.merge_nodes_and_edges)


def test_the_merge_summarises_through_the_function_the_pre_summary_calls() -> None:
    """Catches a release whose merge summarises descriptions elsewhere or with other arguments: the
    pre-summary (src/rag/engine/presummary.py) would fill the cache with answers the merge never
    asks for, and every summary would be made twice. tests/test_presummary.py checks the lists."""
    from lightrag import operate

    assert compat.summarize_descriptions is operate._handle_entity_relation_summary
    assert list(inspect.signature(compat.summarize_descriptions).parameters) == [
        "description_type",
        "entity_or_relation_name",
        "description_list",
        "separator",
        "global_config",
        "llm_response_cache",
    ]
    for merge in (operate._merge_nodes_then_upsert, operate._merge_edges_then_upsert):
        source = inspect.getsource(merge)
        assert "await _handle_entity_relation_summary(" in source and "GRAPH_FIELD_SEP," in source
    assert compat.GRAPH_FIELD_SEP == operate.GRAPH_FIELD_SEP


async def test_extraction_calls_the_documents_own_llm_function(rag: LightRAG) -> None:
    """Catches a release whose stages take their LLM elsewhere than `global_config` (1.5:
    ``role_llm_funcs``): the indexer could no longer stop one document's calls."""
    from lightrag.utils import compute_mdhash_id

    calls: list[str] = []
    real = rag.llm_model_func

    async def own(prompt: str, *args: Any, **kwargs: Any) -> Any:
        calls.append(prompt)
        return await real(prompt, *args, **kwargs)

    text = "Ada Lovelace worked with Charles Babbage in London."
    chunk = {"content": text, "tokens": 12, "chunk_order_index": 0, "full_doc_id": "d", "file_path": "f"}
    results = await compat.extract_entities(
        {compute_mdhash_id(text, prefix="chunk-"): chunk},
        global_config=compat.document_global_config(rag, own),
        pipeline_status=compat.new_pipeline_status(),
        pipeline_status_lock=asyncio.Lock(),
        llm_response_cache=rag.llm_response_cache,
        text_chunks_storage=rag.text_chunks,
    )
    assert calls and len(results) == 1


def test_our_pipeline_status_has_every_key_the_stages_use() -> None:
    from lightrag import operate

    used = set(re.findall(r'pipeline_status\["(\w+)"\]', inspect.getsource(operate)))
    assert used <= set(compat.new_pipeline_status()), used - set(compat.new_pipeline_status())


async def test_a_busy_pipeline_refuses_deletes_with_the_status_we_retry_on(rag: LightRAG) -> None:
    from lightrag.kg.shared_storage import get_namespace_data

    status = await get_namespace_data("pipeline_status", workspace=rag.workspace)
    status["busy"] = True
    try:
        result = await rag.adelete_by_doc_id("any-doc")
    finally:
        status["busy"] = False
    assert result.status == compat.DELETE_REFUSED_WHILE_BUSY


def test_deletes_reach_the_deleted_document_only_through_the_storages_a_view_replaces() -> None:
    """purges.py deletes a joint document held in replaced storages of a `deletion_view`: a release
    that reads the document through another storage (or not through ``self``) would miss it."""
    for function in (LightRAG.adelete_by_doc_id, LightRAG._update_delete_retry_state):
        source = inspect.getsource(function)
        used = set(re.findall(r"self\.(\w+)\.\w+\(\s*\[?doc_id", source))
        assert used <= set(compat.DELETION_DOCUMENT_STORAGES), used
    assert set(
        re.findall(r"self\.(\w+)\.\w+\(\s*\[?doc_id", inspect.getsource(LightRAG.adelete_by_doc_id))
    ) == set(compat.DELETION_DOCUMENT_STORAGES)


async def test_a_deletion_view_shares_every_other_storage(rag: LightRAG) -> None:
    marker = object()
    view = compat.deletion_view(rag, {"doc_status": marker})
    assert view.doc_status is marker and rag.doc_status is not marker
    assert (
        view.text_chunks is rag.text_chunks
        and view.chunk_entity_relation_graph is rag.chunk_entity_relation_graph
    )
    with pytest.raises(ValueError):
        compat.deletion_view(rag, {"text_chunks": marker})


async def test_a_built_instance_chunks_with_the_function_the_chunking_child_mirrors(rag: LightRAG) -> None:
    """The chunking child (src/rag/engine/chunk_child.py) reproduces `chunking_by_token_size` with our
    tokenizer; an instance that chunks otherwise would silently fall back to the thread."""
    from src.rag.tokenizer import lossless_encoding_name

    assert compat.chunks_by_default_chunking(rag)
    assert lossless_encoding_name(rag.tokenizer) == "o200k_base"
    other = type("Rag", (), {"chunking_func": staticmethod(lambda *a: [])})()
    assert not compat.chunks_by_default_chunking(other)  # type: ignore[arg-type]


async def test_persist_all_asks_every_storage(rag: LightRAG) -> None:
    assert _params(LightRAG._insert_done) >= {"self"}
    await compat.persist_all(rag)


def test_the_file_path_rule_the_indexer_mirrors() -> None:
    """`indexer._resolve_path` mirrors LightRAG's private `_resolve_doc_file_path` (the doc-status
    path first, then full_docs', placeholders skipped)."""
    from types import SimpleNamespace

    from lightrag.lightrag import _resolve_doc_file_path

    from src.rag.engine.indexer import _resolve_path

    for status_path, stored_path in [
        ("a.txt", "b.txt"),
        ("", "b.txt"),
        ("unknown_source", "c.txt"),
        ("no-file-path", None),
        (None, None),
        ("  d.txt ", None),
    ]:
        theirs = _resolve_doc_file_path(
            status_doc=SimpleNamespace(file_path=status_path),
            content_data={"file_path": stored_path} if stored_path else None,
        )
        assert _resolve_path(status_path, stored_path) == theirs, (status_path, stored_path)


# ----------------------------------------------------------------------------- the prompt wording
def test_every_prompt_marker_we_key_on_is_in_lightrags_prompts() -> None:
    """Catches reworded prompts (1.5 rewrote the extraction prompt): the offline LLM and the mock
    would no longer recognise what they are asked."""
    from lightrag.prompt import PROMPTS

    from src.rag import prompts

    texts = "\n".join(v for v in PROMPTS.values() if isinstance(v, str))
    texts += "\n".join(x for v in PROMPTS.values() if isinstance(v, list) for x in v if isinstance(x, str))
    markers = [
        *prompts._GLEAN_MARKERS,
        prompts._EXTRACT_MARKER,
        prompts._EXTRACT_SYSTEM_MARKER,
        *prompts._SUMMARY_MARKERS,
        *prompts._KEYWORD_MARKERS,
        prompts.CONTEXT_MARKER,
        "<Input Text>",
        "<Entity_types>",
        "<Output>",
    ]
    missing = [marker for marker in markers if marker not in texts]
    assert missing == []
    assert PROMPTS["DEFAULT_TUPLE_DELIMITER"] == prompts.TUPLE_DELIMITER
    assert PROMPTS["DEFAULT_COMPLETION_DELIMITER"] == prompts.COMPLETION_DELIMITER


def test_raganything_writes_multimodal_chunks_with_the_template_we_call() -> None:
    """src/rag/engine/modal.py writes picture/table/equation chunks through RAG-Anything's private
    `_apply_chunk_template` (kind, item, description), and the modal processors it drives describe
    an item with `generate_chunk_sections(item, kind, item_info, entity_name)`."""
    import inspect

    from raganything import RAGAnything
    from raganything.modalprocessors import BaseModalProcessor
    from raganything.prompt import PROMPTS

    from src.rag.lightrag_compat import multimodal_chunk_text

    template = inspect.signature(RAGAnything._apply_chunk_template)
    assert list(template.parameters)[1:] == ["content_type", "original_item", "description"]
    sections = inspect.signature(BaseModalProcessor.generate_chunk_sections)
    assert list(sections.parameters)[1:] == ["modal_content", "content_type", "item_info", "entity_name"]
    assert {"QUERY_IMAGE_DESCRIPTION", "QUERY_IMAGE_ANALYST_SYSTEM", "QUERY_ENHANCEMENT_SUFFIX"} <= set(
        PROMPTS
    )
    text = multimodal_chunk_text(RAGAnything.__new__(RAGAnything), "equation", {"text": "E=mc^2"}, "energy")
    assert "E=mc^2" in text and "energy" in text


def test_the_installed_webui_fits_our_patches() -> None:
    """Catches a lightrag-hku whose built WebUI sends its API requests differently: served as is,
    its requests would reach our own root API instead of /lightrag."""
    from src.rag.webui import PATCHES, WebUiBundle

    bundle = WebUiBundle.load()
    assert bundle.patched, "no script of the WebUI talks to the API?"
    served = b"".join(bundle.patched.values())
    for old, new, _ in PATCHES:
        assert old not in served and new in served
    assert bundle.file("index.html") is not None
    assert bundle.file("../lightrag_server.py") is None  # nothing outside the bundle is served
