"""Task vocabulary shared by the store, the runner and the API."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})
LIVE_STATUSES = frozenset({TaskStatus.PENDING, TaskStatus.PROCESSING})


class Stage(StrEnum):
    """Where a task is in its life; progress percentages are attached by the ingestor."""

    SAVED = "saved"
    QUEUED = "queued"
    PARSING = "parsing"
    CHUNKING = "chunking"
    EXTRACTING = "extracting"
    MERGING = "merging"
    DONE = "done"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    FILE = "file"
    TEXT = "text"


class TaskRecord(BaseModel):
    """One ingestion task as stored in a Redis hash (all values are strings there)."""

    task_id: str
    kind: TaskKind = TaskKind.FILE
    doc_id: str
    filename: str
    file_size: int = 0
    content_sha256: str = ""
    #: Upload file name inside the uploads dir (uuid based; never user controlled).
    stored_name: str = ""
    status: TaskStatus = TaskStatus.PENDING
    stage: str = Stage.SAVED
    progress: float = 0.0
    created_at: float
    updated_at: float
    started_at: float | None = None
    finished_at: float | None = None
    result: dict[str, Any] | None = None
    error: str | None = None
    #: Number of times the task has been claimed; also the fencing epoch of the current attempt.
    attempt: int = 0
    owner: str | None = None
    lease_until: float | None = None
    expires_at: float | None = None

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        if "result" in data:
            data["result"] = json.loads(data["result"])
        return cls.model_validate(data)

    def to_redis(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.model_dump(mode="json").items():
            if value is None:
                out[key] = ""
            elif key == "result":
                out[key] = json.dumps(value)
            else:
                out[key] = str(value)
        return out
