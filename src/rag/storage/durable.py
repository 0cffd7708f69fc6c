"""Reading a workspace's doc status from disk, without loading its knowledge base.

An api-role instance (ROLE=api) must not answer from a LightRAG instance of its own while the
storages are process-local (the embedded SQLite ones, or LightRAG's JSON files): the workers'
in-memory state moves on without it. What the workers have made durable is on disk, though; a
document's task is reported completed only after the flush that wrote its doc-status row.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from src.rag.storage.sqlite_store import DB_FILE_NAME

DOC_STATUS_NAMESPACE = "doc_status"


def read_doc_status(workspace_dir: Path, doc_id: str) -> dict[str, Any] | None:
    """The durable doc-status record of ``doc_id`` (SQLite store, else LightRAG's JSON file), or
    None. Blocking: call it in a thread."""
    rows = _rows(workspace_dir, doc_id)
    return rows[0][1] if rows else None


def read_doc_statuses(workspace_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    """Every durable doc-status record of the workspace, as (doc id, record). Blocking."""
    return _rows(workspace_dir, None)


def _rows(workspace_dir: Path, doc_id: str | None) -> list[tuple[str, dict[str, Any]]]:
    database = workspace_dir / DB_FILE_NAME
    if database.exists():
        sql, args = "SELECT id, value FROM kv WHERE ns = ?", (DOC_STATUS_NAMESPACE,)
        if doc_id is not None:
            sql, args = sql + " AND id = ?", (DOC_STATUS_NAMESPACE, doc_id)
        try:
            con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
            try:
                rows = con.execute(sql, args).fetchall()
            finally:
                con.close()
        except sqlite3.OperationalError:  # no table yet: nothing was ever flushed
            return []
        return [(key, json.loads(value)) for key, value in rows]
    legacy = workspace_dir / f"kv_store_{DOC_STATUS_NAMESPACE}.json"
    if legacy.exists():
        records = json.loads(legacy.read_text(encoding="utf-8"))
        if doc_id is not None:
            return [(doc_id, records[doc_id])] if doc_id in records else []
        return list(records.items())
    return []
