"""Task vocabulary shared by the store, the runner and the API."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Any

from pydantic import BaseModel


class TaskStatus(StrEnum):
    PENDING = "pending"
    PROCESSING = "processing"
    #: A running task asked to stop: its LLM work is being stopped and its partial data removed.
    CANCELLING = "cancelling"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED})


class Stage(StrEnum):
    """Where a task is in its life; progress percentages are attached by the ingestor."""

    SAVED = "saved"
    QUEUED = "queued"
    PARSING = "parsing"
    CHUNKING = "chunking"
    EXTRACTING = "extracting"
    MERGING = "merging"
    DONE = "done"
    CLEANUP = "cleanup"
    RETRY_WAIT = "retry-wait"
    FAILED = "failed"
    CANCELLED = "cancelled"


class TaskKind(StrEnum):
    FILE = "file"
    TEXT = "text"


class TaskRecord(BaseModel):
    """One ingestion task as stored in a Redis hash (all values are strings there)."""

    task_id: str
    #: Owner of the task; every read and write of the API is scoped to it.
    tenant: str = "default"
    #: 0 (lowest) .. 9 (highest); higher priorities are admitted first.
    priority: int = 5
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
    #: Failed attempts so far (crashes, lost leases, transient errors); bounded by MAX_ATTEMPTS.
    failures: int = 0
    owner: str | None = None
    lease_until: float | None = None
    expires_at: float | None = None
    #: Set when a cancel arrived while the task was running (or before a resumed attempt).
    cancel_requested: bool = False
    #: Earliest time a retried task may run again (backoff).
    not_before: float | None = None
    #: One entry per finished attempt: attempt, owner, started_at, ended_at, outcome, error.
    history: list[dict[str, Any]] = []
    #: Where to POST the signed completion event, and what happened when we did.
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        for key in ("result", "history", "webhook"):
            if key in data:
                data[key] = json.loads(data[key])
        if isinstance(data.get("history"), dict):  # Lua's cjson encodes an empty list as {}
            data["history"] = []
        if "cancel_requested" in data:
            data["cancel_requested"] = data["cancel_requested"] == "1"
        return cls.model_validate(data)

    def to_redis(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for key, value in self.model_dump(mode="json").items():
            if value is None:
                out[key] = ""
            elif key in ("result", "history", "webhook"):
                out[key] = json.dumps(value)
            elif key == "cancel_requested":
                out[key] = "1" if value else "0"
            else:
                out[key] = str(value)
        return out
