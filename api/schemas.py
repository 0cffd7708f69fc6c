"""Request and response bodies of the public HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field, StringConstraints

from src.core.defaults import DEFAULT_PRIORITY, MAX_PRIORITY, MIN_PRIORITY

QueryMode = Literal["naive", "local", "global", "hybrid", "mix", "bypass"]

#: Bounds of what a query may carry besides its text (the total is bounded too: MAX_QUERY_INPUT_CHARS).
MAX_HISTORY_MESSAGES = 100
MAX_MESSAGE_CHARS = 20_000
MAX_USER_PROMPT_CHARS = 4000
MAX_KEYWORDS = 50
MAX_KEYWORD_CHARS = 200
MAX_CONTEXT_TOKENS = 1_000_000


class TaskAccepted(BaseModel):
    message: str
    task_id: str
    doc_id: str
    filename: str
    file_size: int
    status: str = "pending"
    status_url: str
    #: True when the request matched an existing task (same content or same Idempotency-Key);
    #: task_id then points to that task and nothing new was queued.
    duplicate: bool = False


class TaskView(BaseModel):
    task_id: str
    priority: int = DEFAULT_PRIORITY
    doc_id: str
    filename: str
    file_size: int
    kind: str
    status: str
    stage: str
    progress: float
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    expires_at: str | None
    attempt: int
    failures: int
    cancel_requested: bool
    not_before: str | None
    history: list[dict[str, Any]]
    result: dict[str, Any] | None
    error: str | None
    callback_url: str | None = None
    webhook: dict[str, Any] | None = None
    #: A query task's request (kind "query"): query text, mode and options.
    query: dict[str, Any] | None = None


class TaskList(BaseModel):
    total: int
    offset: int
    limit: int
    tasks: list[TaskView]


class CancelResult(BaseModel):
    message: str
    task_id: str
    status: str


class TextInsert(BaseModel):
    text: str = Field(min_length=1, description="raw text to index")
    #: Checked by the service's one doc-id validator (the same answer as on every other route).
    doc_id: str | None = None
    filename: str | None = Field(default=None, max_length=255, description="label used in citations")
    callback_url: str | None = Field(
        default=None, description="POST a signed JSON event here when the task ends"
    )
    priority: int = Field(
        default=DEFAULT_PRIORITY,
        ge=MIN_PRIORITY,
        le=MAX_PRIORITY,
        description=f"{MIN_PRIORITY} (bulk) .. {MAX_PRIORITY} (interactive); higher runs first",
    )


class ChatMessage(BaseModel):
    role: Literal["user", "assistant", "system"]
    content: str = Field(default="", max_length=MAX_MESSAGE_CHARS)


Keyword = Annotated[str, StringConstraints(min_length=1, max_length=MAX_KEYWORD_CHARS)]


class QueryOptions(BaseModel):
    """LightRAG Server's query options (its `QueryRequest`), bounded."""

    only_need_context: bool = False
    only_need_prompt: bool = Field(default=False, description="answer with the prompt the LLM would get")
    top_k: int | None = Field(default=None, ge=1, le=200)
    chunk_top_k: int | None = Field(default=None, ge=1, le=200)
    response_type: str | None = Field(default=None, max_length=100)
    max_entity_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    max_relation_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    max_total_tokens: int | None = Field(default=None, ge=1, le=MAX_CONTEXT_TOKENS)
    hl_keywords: list[Keyword] = Field(
        default_factory=list, max_length=MAX_KEYWORDS, description="high-level retrieval keywords"
    )
    ll_keywords: list[Keyword] = Field(
        default_factory=list, max_length=MAX_KEYWORDS, description="low-level retrieval keywords"
    )
    conversation_history: list[ChatMessage] = Field(
        default_factory=list,
        max_length=MAX_HISTORY_MESSAGES,
        description="earlier turns, sent to the LLM for context (not used for retrieval)",
    )
    user_prompt: str | None = Field(default=None, max_length=MAX_USER_PROMPT_CHARS)
    enable_rerank: bool | None = Field(
        default=None, description="rerank retrieved chunks (default: when a reranker is configured)"
    )
    include_references: bool = Field(default=False, description="add `references` to the answer")
    include_chunk_content: bool = Field(default=False, description="each reference's chunk texts")
    #: A picture attached to the question, as seed 000 sends it: a `data:image/...;base64,` URL
    #: (or raw base64). `images` takes several.
    image_base64: str | None = None
    images: list[str] = Field(default_factory=list, max_length=32)

    def attached_images(self) -> list[str]:
        return ([self.image_base64] if self.image_base64 else []) + list(self.images)


class QueryRequest(QueryOptions):
    query: str = Field(min_length=1, max_length=8000)
    mode: QueryMode = "hybrid"


class ReferenceOut(BaseModel):
    reference_id: str
    file_path: str
    content: list[str] | None = None


class QueryDataOut(BaseModel):
    """LightRAG Server's `/query/data` body: the retrieval behind an answer."""

    status: str
    message: str
    data: dict[str, Any] = Field(description="entities, relationships, chunks, references")
    metadata: dict[str, Any]


class QueryTaskAccepted(BaseModel):
    message: str
    task_id: str
    kind: str = "query"
    status: str = "pending"
    priority: int
    status_url: str


class QueryResponse(BaseModel):
    response: str
    mode: QueryMode
    only_need_context: bool
    llm: str
    #: With `include_references`: the sources behind the answer.
    references: list[ReferenceOut] | None = None


class QueueStats(BaseModel):
    tenant: str
    counts: dict[str, int]
    pending: int
    running: int
    running_here: int
    capacity: int
    instance_id: str


class DocumentDeleted(BaseModel):
    doc_id: str
    status: str
    message: str


class DocumentSummary(BaseModel):
    """One knowledge-base document as LightRAG's doc-status storage records it."""

    doc_id: str
    status: str
    chunks_count: int | None = None
    content_summary: str | None = None
    content_length: int | None = None
    file_path: str | None = None
    track_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    error_msg: str | None = None


class DocumentList(BaseModel):
    #: Documents matching the status filter.
    total: int
    limit: int
    offset: int
    #: Documents per LightRAG status over the whole knowledge base.
    counts: dict[str, int]
    documents: list[DocumentSummary]


class BatchFileError(BaseModel):
    """A file of a batch that was refused, with the answer `POST /insert` would have given it."""

    filename: str
    status_code: int
    error: str = Field(description="the stable error code, e.g. too_large, unsupported_type")
    detail: str


class BatchTaskAccepted(BaseModel):
    filename: str
    task_id: str
    doc_id: str
    status: str
    #: True when the file's content was already a task (earlier in this batch or before it).
    duplicate: bool = False


class BatchAccepted(BaseModel):
    message: str
    batch_id: str
    status_url: str
    tasks: list[BatchTaskAccepted]
    errors: list[BatchFileError]


class BatchTaskView(BaseModel):
    filename: str
    task_id: str
    doc_id: str
    duplicate: bool = False
    status: str = Field(description="a task status, or `expired` once its record's TTL ended")
    stage: str | None
    progress: float
    error: str | None
    result: dict[str, Any] | None = None


class BatchView(BaseModel):
    batch_id: str
    created_at: str
    total: int = Field(description="accepted files")
    counts: dict[str, int] = Field(description="accepted files per task status (and `expired`)")
    progress: float = Field(description="mean progress of the files, finished ones at 100")
    done: bool = Field(description="every task is completed, failed, cancelled or expired")
    tasks: list[BatchTaskView]
    errors: list[BatchFileError]


class BatchCancelTask(BaseModel):
    filename: str
    task_id: str
    outcome: Literal["cancelled", "cancelling", "finished", "expired"]
    status: str | None


class BatchCancelResult(BaseModel):
    message: str
    batch_id: str
    counts: dict[str, int] = Field(description="files per outcome")
    tasks: list[BatchCancelTask]
