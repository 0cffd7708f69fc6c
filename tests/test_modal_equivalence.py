"""Pictures, tables and equations indexed inside our task (src/rag/engine/modal.py + the
DocumentIndexer) give the records RAG-Anything's own ``insert_content_list`` writes: the same
chunks, the same entities (each item's own entity among them) and the same relations (the
``belongs_to`` links included), on real storages, with the same deterministic models."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from src.rag.builder import build_lightrag
from src.rag.engine.indexer import DocumentIndexer
from src.rag.engine.modal import ModalDescriber, split_content
from src.rag.parsers import build_raganything
from tests.conftest import make_settings
from tests.multimodal_docs import text_image
from tests.test_indexer_equivalence import LLMControl

# One event loop for the module: RAG-Anything's initialisation binds LightRAG's process-wide
# pipeline lock to the loop it first runs on.
pytestmark = [pytest.mark.integration, pytest.mark.timeout(300), pytest.mark.asyncio(loop_scope="module")]


async def fake_vision(
    prompt: str, system_prompt: str | None = None, image_data: Any = None, **kwargs: Any
) -> str:
    """A deterministic vision model: names the picture by the caption it was told about."""
    assert image_data, "the picture's bytes must reach the vision model"
    caption = "Manhole cover" if "Manhole" in prompt else "picture"
    return json.dumps(
        {
            "detailed_description": f"A photo: {caption} missing on Donghu Street.",
            "entity_info": {
                "entity_name": f"{caption} photo",
                "entity_type": "image",
                "summary": f"{caption} photo",
            },
        }
    )


def content_list(picture: Path) -> list[dict[str, Any]]:
    return [
        {
            "type": "text",
            "text": "Donghu Street inspection. The Harbor Authority inspected Donghu Street.",
            "page_idx": 0,
        },
        {
            "type": "image",
            "img_path": str(picture),
            "image_caption": ["Manhole cover missing"],
            "page_idx": 0,
        },
        {
            "type": "table",
            "table_body": "| Street | Hazards |\n|---|---|\n| Donghu Street | 12 |",
            "table_caption": ["Hazards by street"],
            "page_idx": 1,
        },
        {"type": "equation", "text": "r = \\frac{h}{n}", "text_format": "latex", "page_idx": 1},
    ]


async def _rag(tmp_path: Path, name: str, control: LLMControl | None = None):
    settings = make_settings(tmp_path, None, embedding_provider="hash", entity_extract_max_gleaning=0)
    wrap = control.wrap if control else None
    rag = await build_lightrag(settings, workspace=f"{name}-{uuid.uuid4().hex[:8]}", llm_wrapper=wrap)
    return rag, build_raganything(rag, settings, fake_vision)


async def _view(rag: Any, doc_id: str) -> dict[str, Any]:
    status = await rag.doc_status.get_by_id(doc_id)
    chunk_ids = status["chunks_list"]
    chunks = await rag.text_chunks.get_by_ids(chunk_ids)
    graph = rag.chunk_entity_relation_graph
    nodes = {n["entity_id"]: n.get("entity_type") for n in await graph.get_all_nodes()}
    edges = {tuple(sorted((e["source"], e["target"]))) for e in await graph.get_all_edges()}
    return {
        "chunks": sorted(c["content"] for c in chunks if c),
        "modal": sorted(
            (c["original_type"], c["modal_entity_name"]) for c in chunks if c and c.get("is_multimodal")
        ),
        "nodes": nodes,
        "edges": edges,
    }


async def test_our_task_writes_what_insert_content_list_writes(tmp_path: Path) -> None:
    picture = tmp_path / "manhole.png"
    picture.write_bytes(text_image(["Manhole cover missing"]))
    items_list = content_list(picture)
    ours, ours_ra = await _rag(tmp_path, "ours")
    theirs, theirs_ra = await _rag(tmp_path, "theirs")
    try:
        text, items = split_content(items_list)
        describer = ModalDescriber(ours, ours_ra, vision_func=fake_vision, llm_is_model=True)
        modal = await describer.describe(items_list, items)
        await DocumentIndexer(ours).index(
            "doc-1", text, file_path="inspection.pdf", modal_chunks=[m.as_dict() for m in modal]
        )
        await theirs_ra.insert_content_list(items_list, file_path="inspection.pdf", doc_id="doc-1")

        mine, reference = await _view(ours, "doc-1"), await _view(theirs, "doc-1")
        assert mine["chunks"] == reference["chunks"]
        assert mine["modal"] == reference["modal"]
        assert [t for t, _ in mine["modal"]] == ["equation", "image", "table"]
        assert mine["nodes"] == reference["nodes"]
        assert mine["edges"] == reference["edges"]
        assert mine["nodes"]["Manhole cover photo (image)"] == "image"  # RAG-Anything appends the type
        assert any("Manhole cover photo (image)" in edge for edge in mine["edges"])  # belongs_to links
    finally:
        await ours.finalize_storages()
        await theirs.finalize_storages()


async def test_an_interrupted_document_resumes_from_its_stored_descriptions_without_duplicates(
    tmp_path: Path,
) -> None:
    """Catches: a restart (the task's coroutine stopped mid-extraction, as a kill -9 leaves it)
    describing the pictures again or indexing a multimodal chunk twice."""
    picture = tmp_path / "manhole.png"
    picture.write_bytes(text_image(["Manhole cover missing"]))
    items_list = content_list(picture)
    control = LLMControl()
    ours, ours_ra = await _rag(tmp_path, "ours", control)
    theirs, theirs_ra = await _rag(tmp_path, "theirs")
    calls: list[str] = []

    async def counted_vision(prompt: str, **kwargs: Any) -> str:
        calls.append(prompt)
        return await fake_vision(prompt, **kwargs)

    try:
        text, items = split_content(items_list)
        describer = ModalDescriber(ours, ours_ra, vision_func=counted_vision, llm_is_model=True)
        modal = [m.as_dict() for m in await describer.describe(items_list, items)]
        assert len(calls) == 1
        control.hold("Image Content Analysis")  # the picture's chunk reaches entity extraction
        attempt = asyncio.create_task(
            DocumentIndexer(ours).index("doc-1", text, file_path="inspection.pdf", modal_chunks=modal)
        )
        await asyncio.wait_for(control.entered["Image Content Analysis"].wait(), 60)
        attempt.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await attempt
        control.release("Image Content Analysis")
        status = await ours.doc_status.get_by_id("doc-1")
        assert status["status"] != "processed"

        # A new attempt knows only the doc id: text and descriptions come from full_docs.
        await DocumentIndexer(ours).index("doc-1", None, file_path="inspection.pdf")
        assert len(calls) == 1, "the picture was not described again"
        await theirs_ra.insert_content_list(items_list, file_path="inspection.pdf", doc_id="doc-1")
        mine, reference = await _view(ours, "doc-1"), await _view(theirs, "doc-1")
        assert mine == reference
    finally:
        await ours.finalize_storages()
        await theirs.finalize_storages()
