"""One page of a knowledge base's documents from LightRAG's doc-status storage, newest first.

Why not `get_docs_paginated` alone: LightRAG's JSON-family storages (ours, `SqliteDocStatusStorage`,
extends `JsonDocStatusStorage`) build a `DocProcessingStatus` for every record and sort them all on
the event loop, and every storage clamps pages to 10..200 records on page boundaries. Here the
in-memory storages are read as a shallow snapshot under their lock (references only, no copy of
the records) and filtered, counted and partially sorted (a heap of ``offset + limit``) in a worker
thread; a page holds only the listed fields (never the content). Other storages (PostgreSQL, ...)
sort in their database: the page is assembled from their fixed-size pages.
"""

from __future__ import annotations

import asyncio
import heapq
from dataclasses import asdict
from typing import Any

from lightrag.base import DocStatus, DocStatusStorage

from src.rag.engine.versions import is_version
from src.rag.knowledge import (
    NEWEST_FIRST,
    DocumentOrder,
    DocumentPage,
    DocumentRecord,
    DocumentStatus,
    SortField,
)
from src.rag.lightrag_compat import json_doc_status_items

#: The page size of LightRAG's own `get_docs_paginated` (its maximum).
_STORAGE_PAGE = 200


async def list_documents(
    storage: DocStatusStorage,
    status: DocumentStatus | None,
    limit: int,
    offset: int,
    order: DocumentOrder = NEWEST_FIRST,
) -> DocumentPage:
    items = await json_doc_status_items(storage)
    if items is not None:
        return await asyncio.to_thread(_page_of, items, status, limit, offset, order)
    return await _from_database(storage, status, limit, offset, order)


def page_of_records(
    items: list[tuple[str, dict[str, Any]]],
    status: DocumentStatus | None,
    limit: int,
    offset: int,
    order: DocumentOrder = NEWEST_FIRST,
) -> DocumentPage:
    """The page of records read elsewhere (an api-role instance reads the workers' durable rows,
    src/rag/storage/durable.py). Blocking: call it in a thread."""
    return _page_of(items, status, limit, offset, order)


def _sort_key(order: DocumentOrder, doc_id: str, record: dict[str, Any]) -> str:
    if order.field == SortField.ID:
        return doc_id
    return str(record.get(order.field.value) or "")


def _page_of(
    items: list[tuple[str, dict[str, Any]]],
    status: DocumentStatus | None,
    limit: int,
    offset: int,
    order: DocumentOrder = NEWEST_FIRST,
) -> DocumentPage:
    counts = dict.fromkeys((s.value for s in DocumentStatus), 0)
    wanted = status.value if status is not None else None
    # (created_at, doc_id, record): doc ids are unique, so records themselves are never compared.
    matching: list[tuple[str, str, dict[str, Any]]] = []
    for doc_id, record in items:
        if is_version(doc_id):
            continue  # a re-index's internal record (src/rag/engine/versions.py), not a document
        value = _name(record.get("status"))
        counts[value] = counts.get(value, 0) + 1
        if wanted is None or value == wanted:
            matching.append((_sort_key(order, doc_id, record), doc_id, record))
    pick = heapq.nlargest if order.descending else heapq.nsmallest
    newest = pick(offset + limit, matching)[offset:]
    return DocumentPage(
        len(matching), counts, [DocumentRecord.from_stored(doc_id, record) for _, doc_id, record in newest]
    )


async def _from_database(
    storage: DocStatusStorage, status: DocumentStatus | None, limit: int, offset: int, order: DocumentOrder
) -> DocumentPage:
    rows: list[DocumentRecord] = []
    total = 0
    first, last = offset // _STORAGE_PAGE + 1, (offset + limit - 1) // _STORAGE_PAGE + 1
    for page in range(first, last + 1):
        docs, total = await storage.get_docs_paginated(
            status_filter=DocStatus(status.value) if status is not None else None,
            page=page,
            page_size=_STORAGE_PAGE,
            sort_field=order.field.value,
            sort_direction="desc" if order.descending else "asc",
        )
        rows.extend(
            DocumentRecord.from_stored(doc_id, asdict(doc)) for doc_id, doc in docs if not is_version(doc_id)
        )
        if len(docs) < _STORAGE_PAGE:
            break
    start = offset - (first - 1) * _STORAGE_PAGE
    counts = dict.fromkeys((s.value for s in DocumentStatus), 0)
    for name, count in (await storage.get_status_counts()).items():
        counts[_name(name)] = int(count)
    return DocumentPage(total, counts, rows[start : start + limit])


def _name(status: Any) -> str:
    """A status as its value: records hold `DocStatus` members or plain strings (and on Python 3.11
    ``str()`` of a str-mixin enum member is ``"DocStatus.PROCESSED"``, not its value)."""
    return str(getattr(status, "value", status) or "")
