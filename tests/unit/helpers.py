"""Record factory shared by the unit tests."""

from __future__ import annotations

import time
import uuid

from src.tasks.models import TaskKind, TaskRecord


def record(
    task_id: str | None = None,
    *,
    tenant: str = "default",
    doc_id: str | None = None,
    sha: str = "sha",
    priority: int = 5,
    created_at: float | None = None,
) -> TaskRecord:
    now = time.time() if created_at is None else created_at
    task_id = task_id or uuid.uuid4().hex
    return TaskRecord(
        task_id=task_id,
        tenant=tenant,
        priority=priority,
        doc_id=doc_id or f"doc-{task_id}",
        filename=f"{task_id}.txt",
        content_sha256=sha,
        created_at=now,
        updated_at=now,
    )


def query_record(
    task_id: str | None = None, *, tenant: str = "default", priority: int = 5, text: str = "what?"
) -> TaskRecord:
    """A query task (the query lane): no doc id, its spec in ``query``."""
    now = time.time()
    return TaskRecord(
        task_id=task_id or uuid.uuid4().hex,
        tenant=tenant,
        priority=priority,
        kind=TaskKind.QUERY,
        query={"text": text, "mode": "naive"},
        created_at=now,
        updated_at=now,
    )
