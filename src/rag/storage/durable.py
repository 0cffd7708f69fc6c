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
    database = workspace_dir / DB_FILE_NAME
    if database.exists():
        try:
            con = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
            try:
                row = con.execute(
                    "SELECT value FROM kv WHERE ns = ? AND id = ?", (DOC_STATUS_NAMESPACE, doc_id)
                ).fetchone()
            finally:
                con.close()
        except sqlite3.OperationalError:  # no table yet: nothing was ever flushed
            return None
        return json.loads(row[0]) if row else None
    legacy = workspace_dir / f"kv_store_{DOC_STATUS_NAMESPACE}.json"
    if legacy.exists():
        return json.loads(legacy.read_text(encoding="utf-8")).get(doc_id)
    return None
