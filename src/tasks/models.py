"""Task vocabulary shared by the store, the runner and the API.

Every outcome a store call can report is an enum member here, so callers match on names instead of
bare strings; the Lua scripts return exactly these values (StrEnum, so the wire value is the name's
string and JSON the API exposes is unchanged).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from pydantic import BaseModel

from src.core.defaults import DEFAULT_PRIORITY, DEFAULT_TENANT
from src.tasks.keys import INGEST_LANE, QUERY_KIND, QUERY_LANE


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


class AttemptOutcome(StrEnum):
    """How one attempt ended, as written to the record's ``history`` (exposed by the API)."""

    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    #: Transient error: requeued with backoff.
    RETRY = "retry"
    #: Shutdown or restart: handed back without counting as a failure (unless found at restart).
    INTERRUPTED = "interrupted"
    #: Its worker stopped renewing the lease; the sweeper took it back.
    LEASE_EXPIRED = "lease-expired"


class CreateOutcome(StrEnum):
    CREATED = "created"
    #: The same content is already live or completed under this doc id: point to that task.
    DUPLICATE = "duplicate"
    #: The Idempotency-Key already names a live or completed task: point to it.
    IDEMPOTENT = "idempotent"
    #: The Idempotency-Key was first used for a different request (another fingerprint).
    IDEMPOTENCY_MISMATCH = "idempotency-mismatch"
    #: The doc id is marked "being deleted" (DELETE /documents runs): nothing is created.
    DELETING = "deleting"
    #: The doc id is held by a live task with other content.
    CONFLICT = "conflict"
    #: The whole queue is full.
    BUSY = "busy"
    #: This tenant's queue is full.
    TENANT_BUSY = "tenant-busy"
    #: A record with this task id exists already.
    EXISTS = "exists"


class DeleteMark(StrEnum):
    """What marking a doc id "being deleted" found (`TaskStore.mark_deleting`)."""

    MARKED = "marked"
    #: A live task holds the doc id: nothing marked.
    LIVE = "live"
    #: Another deletion of it runs already.
    DELETING = "deleting"


class CancelOutcome(StrEnum):
    #: Never ran: cancelled at once.
    CANCELLED = "cancelled"
    #: Runs now or ran before: marked cancelling; a worker stops it and purges its partial data.
    CANCELLING = "cancelling"
    #: A cancel was already under way (a repeated request).
    ALREADY_CANCELLING = "already-cancelling"
    #: Completed, failed or cancelled: nothing to cancel.
    ALREADY_FINAL = "already-final"
    MISSING = "missing"


class HeartbeatResult(StrEnum):
    RENEWED = "renewed"
    #: This attempt no longer owns the task (another epoch or owner, or it is not running).
    LOST = "lost"
    #: Renewed, but a cancel was requested (possibly through another instance).
    CANCEL_REQUESTED = "cancel-requested"


class FinishOutcome(StrEnum):
    OK = "ok"
    #: A newer attempt owns the task (epoch fence).
    STALE = "stale"
    MISSING = "missing"
    #: A cancel arrived meanwhile: the caller must finish the cancel instead.
    CANCELLING = "cancelling"
    #: The task was handed back to the queue (pending) meanwhile.
    NOT_RUNNING = "not-running"
    #: The task already reached a final state.
    ALREADY_FINAL = "already-final"


class RequeueOutcome(StrEnum):
    REQUEUED = "requeued"
    #: Its failures reached the limit: recorded as failed (dead letter).
    DEAD_LETTERED = "dead-lettered"
    #: Not running any more (finished or pending); only the stray running entry was dropped.
    SKIPPED = "skipped"
    #: Already handed back (no owner), e.g. a cancelling task waiting for a worker.
    QUEUED = "queued"
    NOT_OWNER = "not-owner"
    STALE = "stale"
    #: Its lease has not lapsed (a sweeper raced a heartbeat).
    ALIVE = "alive"


class TaskKind(StrEnum):
    FILE = "file"
    TEXT = "text"
    #: A query answered in the background (POST /query/async); it waits in the query lane.
    QUERY = QUERY_KIND
    #: DELETE /documents/{id} received by an instance that does not own the workspace, carried out
    #: by the owner (``purge_doc_id`` names the document; the task itself holds no doc id).
    PURGE = "purge"


class TaskRecord(BaseModel):
    """One task as stored in a Redis hash (all values are strings there): a document to index
    (kind file/text) or a query to answer (kind query: no document; ``query`` holds its spec)."""

    task_id: str
    #: Owner of the task; every read and write of the API is scoped to it.
    tenant: str = DEFAULT_TENANT
    #: MIN_PRIORITY .. MAX_PRIORITY (src/core/defaults.py); higher priorities are admitted first.
    priority: int = DEFAULT_PRIORITY
    kind: TaskKind = TaskKind.FILE
    doc_id: str = ""
    filename: str = ""
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
    #: A query task's request (text, mode, ...), bounded by the API's QueryRequest validation.
    query: dict[str, Any] | None = None
    #: The document a purge task deletes, and whether the LLM answers cached for it go too.
    purge_doc_id: str = ""
    purge_llm_cache: bool = False
    #: New content for a document the knowledge base holds: re-indexed beside it, then swapped in.
    replaces: bool = False

    @property
    def lane(self) -> str:
        """The queue lane the task waits in (src/tasks/keys.py): queries apart from documents."""
        return QUERY_LANE if self.kind == TaskKind.QUERY else INGEST_LANE

    @classmethod
    def from_redis(cls, raw: dict[str, str]) -> TaskRecord:
        data: dict[str, Any] = {k: v for k, v in raw.items() if v != ""}
        for key in _JSON_FIELDS:
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
            elif key in _JSON_FIELDS:
                out[key] = json.dumps(value)
            elif key == "cancel_requested":
                out[key] = "1" if value else "0"
            else:
                out[key] = str(value)
        return out


#: Record fields stored as JSON text in the hash.
_JSON_FIELDS = ("result", "history", "webhook", "query")


@dataclass(frozen=True)
class CreateResult:
    kind: CreateOutcome
    #: The new task, or the existing task the caller should be pointed to ('' when the queue is full).
    task_id: str

    @property
    def created(self) -> bool:
        return self.kind == CreateOutcome.CREATED


@dataclass(frozen=True)
class CancelResult:
    outcome: CancelOutcome
    #: The task's status after the call, or 'missing' (the API echoes it in its 409 answer).
    status: str

    @property
    def accepted(self) -> bool:
        """True when this call moved the task (to cancelled, or to cancelling for a worker to finish)."""
        return self.outcome in (CancelOutcome.CANCELLED, CancelOutcome.CANCELLING)
