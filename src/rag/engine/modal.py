"""Pictures, tables and equations of a document → RAG-Anything's multimodal chunks, inside our task.

RAG-Anything's ``insert_content_list`` runs its modal processors (``ImageModalProcessor``,
``TableModalProcessor``, ``EquationModalProcessor``, ``GenericModalProcessor``) after the text: each
item gets a description and an entity from the LLM (tables, equations) or the vision model
(pictures), becomes a chunk written with RAG-Anything's chunk template, is run through entity
extraction, and its extracted entities are linked to the item's entity by ``belongs_to``
relations. Here the descriptions are made by the same processors (so by the same prompts) inside
the document's task, where ``call_context`` carries its priority and tenant to the LLM and vision
schedulers; the chunks then go through our ``DocumentIndexer`` with the document's text chunks
(``ModalChunk``), so cancel, purge, delete and resume treat them like any chunk.

Without a vision model a picture is not "described" by anything: its description is what OCR read
and what can be said of the file (``describe_image``). With the offline LLM stand-in, tables and
equations are described the same honest way (their caption, header and formula), not by a model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from typing import Any

from lightrag import LightRAG
from lightrag.utils import compute_mdhash_id
from raganything.modalprocessors import (
    EquationModalProcessor,
    GenericModalProcessor,
    ImageModalProcessor,
    TableModalProcessor,
)
from raganything.utils import separate_content_with_page_map

from src.rag.lightrag_compat import multimodal_chunk_text
from src.rag.parsing.content import ContentList, describe_image

log = logging.getLogger(__name__)

ItemProgress = Callable[[int, int], Awaitable[None]]
#: RAG-Anything names a model-made entity "<name> (<type>)" (ImageModalProcessor._parse_response).
_SUMMARY_CHARS = 300
#: Items of one document described at once (RAG-Anything uses max_parallel_insert, 2 by default).
DESCRIBE_CONCURRENCY = 8


@dataclass(frozen=True)
class ModalChunk:
    """One picture/table/equation as the chunk RAG-Anything would write, and its own entity."""

    content: str
    entity_name: str
    entity_type: str
    summary: str
    original_type: str
    page_idx: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> ModalChunk:
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__})


def split_content(content_list: ContentList) -> tuple[str, ContentList]:
    """(the text, the multimodal items) as RAG-Anything separates them (with their section path,
    neighbour text and list index, which its prompts use)."""
    text, items, _ = separate_content_with_page_map(content_list)
    return text, items


def _offline_description(item: dict[str, Any], number: int) -> tuple[str, dict[str, str]]:
    """What can be said of an item without a model (no vision model / the offline LLM)."""
    kind = str(item.get("type"))
    page = int(item.get("page_idx") or 0) + 1
    if kind == "image":
        description = describe_image(item)
        caption = " ".join(item.get("image_caption") or [])
        first_line = (item.get("ocr_text") or "").strip().split("\n", 1)[0][:40]
        label = caption or (
            f"picture p{page} #{number}: {first_line}" if first_line else f"picture p{page} #{number}"
        )
    elif kind == "table":
        caption = " ".join(item.get("table_caption") or [])
        body = str(item.get("table_body") or "")
        header = body.split("\n", 1)[0].strip()
        description = f"Table on page {page}" + (f": {caption}" if caption else "") + f". Columns: {header}"
        label = caption or f"table p{page} #{number}"
    elif kind == "equation":
        latex = str(item.get("text") or item.get("latex") or "")
        description = f"Equation on page {page}: {latex}"
        label = f"equation p{page} #{number}"
    else:
        description = f"{kind} content on page {page}: {str(item.get('content', item))[:500]}"
        label = f"{kind} p{page} #{number}"
    entity = {
        "entity_name": f"{label} ({kind})",
        "entity_type": kind,
        "summary": description[:_SUMMARY_CHARS],
    }
    return description, entity


class ModalDescriber:
    """Describes a document's multimodal items with RAG-Anything's processors (or honestly, offline)."""

    def __init__(
        self,
        rag: LightRAG,
        rag_anything: Any,
        *,
        vision_func: Callable[..., Awaitable[str]] | None,
        llm_is_model: bool,
    ) -> None:
        self.rag = rag
        self.rag_anything = rag_anything
        self.vision_func = vision_func
        self.llm_is_model = llm_is_model
        self._processors: dict[str, Any] | None = None

    def _processor(self, kind: str) -> Any:
        if self._processors is None:
            llm = self.rag.llm_model_func
            self._processors = {
                "image": ImageModalProcessor(self.rag, self.vision_func or llm),
                "table": TableModalProcessor(self.rag, llm),
                "equation": EquationModalProcessor(self.rag, llm),
                "generic": GenericModalProcessor(self.rag, llm),
            }
        return self._processors.get(kind) or self._processors["generic"]

    def uses_model(self, kind: str) -> bool:
        return self.vision_func is not None if kind == "image" else self.llm_is_model

    async def describe(
        self, content_list: ContentList, items: ContentList, on_item: ItemProgress | None = None
    ) -> list[ModalChunk]:
        """One ModalChunk per item, in document order. Items are described concurrently (at most
        DESCRIBE_CONCURRENCY at once; the LLM and vision schedulers bound the calls in flight);
        model calls run in the caller's task context (its priority, tenant); cancelling the
        caller stops them all."""
        semaphore = asyncio.Semaphore(DESCRIBE_CONCURRENCY)
        done = 0

        async def one(number: int, item: dict[str, Any]) -> ModalChunk:
            nonlocal done
            async with semaphore:
                chunk = await self._describe_one(content_list, number, item)
            done += 1
            if on_item is not None:
                await on_item(done, len(items))
            return chunk

        tasks = [asyncio.ensure_future(one(n, item)) for n, item in enumerate(items, 1)]
        try:
            return list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            raise

    async def _describe_one(self, content_list: ContentList, number: int, item: dict[str, Any]) -> ModalChunk:
        kind = str(item.get("type") or "generic")
        if self.uses_model(kind):
            processor = self._processor(kind)
            processor.set_content_source(content_list, "minerU")
            item_info = {
                "page_idx": item.get("page_idx", 0),
                "index": item.get("_content_list_index", number - 1),
                "type": kind,
            }
            [section] = (await processor.generate_chunk_sections(item, kind, item_info, None))[:1]
            description, entity = section["description"], section["entity_info"]
        else:
            description, entity = _offline_description(item, number)
        return ModalChunk(
            content=multimodal_chunk_text(self.rag_anything, kind, item, description),
            entity_name=str(entity["entity_name"]),
            entity_type=str(entity.get("entity_type") or kind),
            summary=str(entity.get("summary") or description),
            original_type=kind,
            page_idx=int(item.get("page_idx") or 0),
        )


#: Where a document's multimodal chunks are kept in its full_docs record (so a resumed attempt
#: indexes the same chunks without asking a model again).
MODAL_KEY = "multimodal_chunks"


def modal_chunk_records(
    raw: list[dict[str, Any]], doc_id: str, file_path: str, offset: int, tokenizer: Any
) -> tuple[dict[str, dict[str, Any]], dict[str, ModalChunk]]:
    """The chunk records RAG-Anything's ``_convert_to_lightrag_chunks_type_aware`` writes (ordered
    after the text chunks), and each chunk's ModalChunk."""
    records: dict[str, dict[str, Any]] = {}
    owners: dict[str, ModalChunk] = {}
    for position, entry in enumerate(raw):
        chunk = ModalChunk.from_dict(entry)
        chunk_id = compute_mdhash_id(chunk.content, prefix="chunk-")
        records[chunk_id] = {
            "content": chunk.content,
            "tokens": len(tokenizer.encode(chunk.content)),
            "full_doc_id": doc_id,
            "chunk_order_index": offset + position,
            "file_path": file_path,
            "llm_cache_list": [],
            "is_multimodal": True,
            "modal_entity_name": chunk.entity_name,
            "original_type": chunk.original_type,
            "page_idx": chunk.page_idx,
        }
        owners[chunk_id] = chunk
    return records, owners


def link_modal_entities(
    chunk_ids: list[str], chunk_results: list[Any], owners: dict[str, ModalChunk], file_path: str
) -> list[Any]:
    """Add each multimodal chunk's own entity, and a ``belongs_to`` relation from every entity
    extracted from that chunk to it (RAG-Anything's ``_batch_add_belongs_to_relations_type_aware``),
    to the extraction results, so the merge writes them like any entity and relation of the
    document (under LightRAG's keyed locks; deleted with the document)."""
    now = int(time.time())
    linked = []
    for chunk_id, (nodes, edges) in zip(chunk_ids, chunk_results, strict=True):
        owner = owners.get(chunk_id)
        if owner is not None:
            name = owner.entity_name
            for entity in [n for n in nodes if n != name]:
                edges.setdefault((entity, name), []).append(
                    {
                        "src_id": entity,
                        "tgt_id": name,
                        "weight": 10.0,
                        "description": f"Entity {entity} belongs to {name}",
                        "keywords": "belongs_to,part_of,contained_in",
                        "source_id": chunk_id,
                        "file_path": file_path,
                        "timestamp": now,
                    }
                )
            nodes.setdefault(name, []).append(
                {
                    "entity_name": name,
                    "entity_type": owner.entity_type,
                    "description": owner.summary,
                    "source_id": chunk_id,
                    "file_path": file_path,
                    "timestamp": now,
                }
            )
        linked.append((nodes, edges))
    return linked
