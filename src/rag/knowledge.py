"""The knowledge-base interface: what the service may ask of a tenant's knowledge base, in our types.

The service layer, the task handler and the routes talk to `KnowledgeBases` only; no LightRAG or
RAG-Anything type crosses it, so moving to another LightRAG release (or replacing a part of it) is
work inside `src/rag`. Two implementations:

- `src/rag/engine/local.py` (`LocalKnowledgeBases`): LightRAG and RAG-Anything loaded in this
  process, one per tenant; every role that runs tasks, and an api-role instance on shared storages;
- `src/rag/delegated.py` (`DelegatedKnowledgeBases`): an api-role instance whose knowledge bases
  live in the workers' processes (embedded storages): answers come from a worker through the query
  lane, document reads from the rows the workers made durable, writes are refused.

"Index a document" takes a `DocumentContent`, RAG-Anything's *content list* (text, image, table and
equation items), or a stored file that the knowledge base parses into one: the multimodal path
feeds its items through the same entry.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field, fields
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol

from src.core.defaults import DEFAULT_PRIORITY, DEFAULT_TENANT


class DocumentStatus(StrEnum):
    """Where a document is in its knowledge base (the values LightRAG records)."""

    PENDING = "pending"
    PROCESSING = "processing"
    PREPROCESSED = "preprocessed"
    PROCESSED = "processed"
    FAILED = "failed"

    @classmethod
    def of(cls, value: Any) -> DocumentStatus:
        """A stored status, whether a member of LightRAG's enum or its plain value."""
        return cls(str(getattr(value, "value", value)))


@dataclass(frozen=True)
class DocumentRecord:
    """One document as its knowledge base records it (never its content)."""

    doc_id: str
    status: DocumentStatus
    chunks_count: int | None = None
    content_summary: str | None = None
    content_length: int | None = None
    file_path: str | None = None
    track_id: str | None = None
    created_at: str | None = None
    updated_at: str | None = None
    #: The failure message of a FAILED document.
    error_msg: str | None = None

    @classmethod
    def from_stored(cls, doc_id: str, stored: Mapping[str, Any]) -> DocumentRecord:
        """From a doc-status record as stored (a dict with LightRAG's field names)."""
        known = {f.name for f in fields(cls)} - {"doc_id", "status"}
        return cls(
            doc_id=doc_id,
            status=DocumentStatus.of(stored.get("status")),
            **{name: stored.get(name) for name in known},
        )

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "status": self.status.value}


@dataclass(frozen=True)
class DocumentPage:
    #: Documents matching the status filter (all of them without one).
    total: int
    #: Documents per status over the whole knowledge base (every status present, 0 or more).
    counts: dict[str, int]
    documents: list[DocumentRecord]


class SortField(StrEnum):
    """What a document listing is sorted by (LightRAG Server's `sort_field`)."""

    CREATED_AT = "created_at"
    UPDATED_AT = "updated_at"
    ID = "id"
    FILE_PATH = "file_path"


@dataclass(frozen=True)
class DocumentOrder:
    field: SortField = SortField.CREATED_AT
    descending: bool = True


NEWEST_FIRST = DocumentOrder()


#: One item of a content list (MinerU's format, which RAG-Anything consumes):
#: {"type": "text", "text", "page_idx"}, {"type": "image", "img_path", "image_caption", ...},
#: {"type": "table", "table_body", ...}, {"type": "equation", "latex" | "text", ...}.
ContentItem = dict[str, Any]


@dataclass(frozen=True)
class DocumentContent:
    """A parsed document as a content list."""

    items: tuple[ContentItem, ...]
    #: A text document as read (`of_text`): indexed exactly as it is, not as a parsed list.
    plain: bool = False

    @classmethod
    def of_text(cls, text: str) -> DocumentContent:
        return cls(({"type": "text", "text": text, "page_idx": 0},), plain=True)

    def non_text_items(self) -> list[ContentItem]:
        """Images, tables, equations...: what a multimodal pipeline adds to the text."""
        return [item for item in self.items if item.get("type") != "text"]


@dataclass(frozen=True)
class IndexRequest:
    """One document to take into a knowledge base.

    ``content`` when it is already parsed; else ``source``, a stored file the knowledge base parses;
    neither, to resume a document the knowledge base already holds the text of (an earlier attempt).
    """

    doc_id: str
    #: The name the client gave the document: recorded as its file path, used in error messages.
    name: str
    source: Path | None = None
    content: DocumentContent | None = None
    #: Recorded with the document (our task id): ties knowledge-base records to the task.
    track_id: str = ""
    #: The admission priority of every provider call made for this document.
    priority: int = DEFAULT_PRIORITY
    #: New content for a document the knowledge base already holds: indexed beside it and swapped
    #: in when complete (the old version stays visible until then; src/rag/engine/versions.py).
    replaces: bool = False


class IndexStage(StrEnum):
    PARSING = "parsing"
    CHUNKING = "chunking"
    EXTRACTING = "extracting"
    MERGING = "merging"
    DONE = "done"


@dataclass
class IndexProgress:
    """Where one document is, counted at the source (chunk completions, graph upserts)."""

    stage: IndexStage
    chunks_total: int = 0
    chunks_extracted: int = 0
    merge_total: int = 0
    merged: int = 0
    #: Pictures, tables and equations of the document, and how many are described (parsing stage).
    items_total: int = 0
    items_described: int = 0


ProgressSink = Callable[[IndexProgress], Awaitable[None]]


@dataclass(frozen=True)
class IndexResult:
    doc_id: str
    chunks_count: int
    #: The knowledge base held a record of the document from an earlier attempt.
    resumed: bool

    def as_dict(self) -> dict[str, Any]:
        return {"doc_id": self.doc_id, "chunks_count": self.chunks_count, "resumed": self.resumed}


class PurgeOutcome(StrEnum):
    DELETED = "success"
    NOT_FOUND = "not_found"
    FAILED = "fail"


@dataclass(frozen=True)
class PurgeResult:
    doc_id: str
    outcome: PurgeOutcome
    message: str = ""


class QueryMode(StrEnum):
    NAIVE = "naive"
    LOCAL = "local"
    GLOBAL = "global"
    HYBRID = "hybrid"
    MIX = "mix"
    #: No retrieval: the question (and the conversation) goes to the LLM as it is.
    BYPASS = "bypass"


@dataclass(frozen=True)
class ChatMessage:
    """One earlier turn of a conversation (sent to the LLM for context, never used for retrieval)."""

    role: str
    content: str


@dataclass(frozen=True)
class QuerySpec:
    """A question and LightRAG Server's query options, in our types (bounded by the API)."""

    text: str
    mode: QueryMode = QueryMode.HYBRID
    #: Answer with the retrieved context instead of a generated answer.
    only_need_context: bool = False
    top_k: int | None = None
    chunk_top_k: int | None = None
    response_type: str | None = None
    #: Pictures attached to the question: names of files in ``Settings.query_images_dir``.
    images: tuple[str, ...] = ()
    #: Answer with the prompt the LLM would get instead of calling it.
    only_need_prompt: bool = False
    #: Extra instructions for the LLM, put into LightRAG's answer prompt.
    user_prompt: str | None = None
    conversation_history: tuple[ChatMessage, ...] = ()
    #: Retrieval keywords chosen by the client (the LLM's keyword extraction is skipped when given).
    hl_keywords: tuple[str, ...] = ()
    ll_keywords: tuple[str, ...] = ()
    max_entity_tokens: int | None = None
    max_relation_tokens: int | None = None
    max_total_tokens: int | None = None
    #: Rerank the retrieved chunks; None: whenever a reranker is configured (RERANK_BY_DEFAULT).
    enable_rerank: bool | None = None
    #: Ask for the sources behind the answer (``QueryResult.references``).
    include_references: bool = False
    #: With the references: the text of the chunks each one stands for.
    include_chunk_content: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mode", QueryMode(self.mode))
        history = tuple(
            m if isinstance(m, ChatMessage) else ChatMessage(str(m["role"]), str(m.get("content", "")))
            for m in self.conversation_history
        )
        object.__setattr__(self, "conversation_history", history)
        object.__setattr__(self, "hl_keywords", tuple(self.hl_keywords))
        object.__setattr__(self, "ll_keywords", tuple(self.ll_keywords))
        object.__setattr__(self, "images", tuple(self.images))

    def as_dict(self) -> dict[str, Any]:
        """What a query task stores in its record (bounded: the API validates every field)."""
        data = asdict(self)
        data["mode"] = self.mode.value
        data["conversation_history"] = [asdict(m) for m in self.conversation_history]
        data["hl_keywords"] = list(self.hl_keywords)
        data["ll_keywords"] = list(self.ll_keywords)
        data["images"] = list(self.images)
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> QuerySpec:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})

    def characters(self) -> int:
        """Everything the client sent that reaches the LLM, in characters (bounded in total)."""
        return (
            len(self.text)
            + len(self.user_prompt or "")
            + sum(len(m.content) + len(m.role) for m in self.conversation_history)
            + sum(len(k) for k in self.hl_keywords + self.ll_keywords)
        )


@dataclass(frozen=True)
class Reference:
    """A source behind an answer: LightRAG's numbered reference to a document's file path."""

    reference_id: str
    file_path: str
    #: The retrieved chunks of that source (only with ``include_chunk_content``).
    content: tuple[str, ...] | None = None

    def as_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"reference_id": self.reference_id, "file_path": self.file_path}
        if self.content is not None:
            data["content"] = list(self.content)
        return data


@dataclass(frozen=True)
class QueryResult:
    """An answer (or, with only_need_context / only_need_prompt, the context or the prompt) and the
    references behind it (empty unless asked for)."""

    response: str
    references: tuple[Reference, ...] = ()


@dataclass(frozen=True)
class StreamedAnswer:
    """A streamed answer: the references are known before the first piece."""

    references: tuple[Reference, ...]
    pieces: AsyncGenerator[str, None]


@dataclass(frozen=True)
class RetrievedData:
    """What retrieval found for a question, without an answer (LightRAG Server's ``/query/data``):
    entities, relationships and chunks as plain JSON rows, plus the references and metadata."""

    status: str
    message: str
    entities: list[dict[str, Any]]
    relationships: list[dict[str, Any]]
    chunks: list[dict[str, Any]]
    references: list[dict[str, Any]]
    metadata: dict[str, Any]

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "message": self.message,
            "data": {
                "entities": self.entities,
                "relationships": self.relationships,
                "chunks": self.chunks,
                "references": self.references,
            },
            "metadata": self.metadata,
        }


@dataclass(frozen=True)
class Subgraph:
    """A part of a knowledge graph around an entity, as LightRAG Server's `/graphs` returns it:
    nodes ``{id, labels, properties}``, edges ``{id, type, source, target, properties}``."""

    nodes: list[dict[str, Any]]
    edges: list[dict[str, Any]]
    is_truncated: bool

    def as_dict(self) -> dict[str, Any]:
        return {"nodes": self.nodes, "edges": self.edges, "is_truncated": self.is_truncated}


class GraphEditKind(StrEnum):
    """The knowledge-graph edits LightRAG offers (its graph routes)."""

    EDIT_ENTITY = "edit_entity"
    EDIT_RELATION = "edit_relation"
    CREATE_ENTITY = "create_entity"
    CREATE_RELATION = "create_relation"
    MERGE_ENTITIES = "merge_entities"
    DELETE_ENTITY = "delete_entity"
    DELETE_RELATION = "delete_relation"


@dataclass(frozen=True)
class GraphEdit:
    """One knowledge-graph edit. ``entity`` names the entity edited, created, deleted or merged
    into; ``source``/``target`` a relation; ``sources`` the entities merged away; ``data`` the new
    attributes (plain JSON)."""

    kind: GraphEditKind
    entity: str = ""
    source: str = ""
    target: str = ""
    sources: tuple[str, ...] = ()
    data: dict[str, Any] = field(default_factory=dict)
    allow_rename: bool = False
    allow_merge: bool = False


#: A streamed answer: text pieces; close it (``aclose``) when done, it holds the knowledge base.
AnswerStream = AsyncGenerator[str, None]


def workspace_of(base: str, tenant: str) -> str:
    """The knowledge-base workspace of ``tenant`` (the default tenant keeps the configured one)."""
    return base if tenant == DEFAULT_TENANT else f"{base}--{tenant}"


class KnowledgeBases(Protocol):
    """Every tenant's knowledge base, as the service uses them."""

    def workspace_for(self, tenant: str) -> str: ...

    def check_writable(self) -> None:
        """Raise `NotInThisRole` when this instance cannot write into the knowledge bases."""
        ...

    async def index(self, tenant: str, request: IndexRequest, on_progress: ProgressSink) -> IndexResult:
        """Take the document in and return once it is durable. Cancelling the caller stops the
        document's work and keeps what it wrote (a later attempt resumes; `purge` removes it)."""
        ...

    async def purge(self, tenant: str, doc_id: str, *, delete_llm_cache: bool = False) -> PurgeResult:
        """Stop the document's work if it runs here and delete everything it left (with
        ``delete_llm_cache``, also the LLM answers cached for its chunks, so that indexing the same
        content again asks the LLM again)."""
        ...

    async def pre_extract(self, tenant: str, request: IndexRequest) -> int:
        """Run a waiting plain-text document's extraction calls on this instance, which does not own
        the workspace, keeping only their answers (in the shared LLM cache) for the owner's indexing.
        Returns its chunks; raises `ValueError` for a document that is not plain text."""

    async def abandon_replacement(self, tenant: str, doc_id: str, track_id: str) -> None:
        """A re-index (``replaces``) that will not complete: take out its new version, keep the
        version queries see (if the swap already happened, the new one stays)."""

    async def clear_cache(self, tenant: str) -> None:
        """Drop the tenant's whole LLM response cache (extraction and query answers)."""
        ...

    async def graph_labels(self, tenant: str, limit: int) -> list[str]:
        """Entity names, sorted (at most ``limit``)."""
        ...

    async def popular_labels(self, tenant: str, limit: int) -> list[str]:
        """The most connected entities first."""
        ...

    async def search_labels(self, tenant: str, query: str, limit: int) -> list[str]: ...

    async def subgraph(self, tenant: str, label: str, max_depth: int, max_nodes: int) -> Subgraph:
        """The graph around entity ``label`` (``*``: the whole graph), bounded."""
        ...

    async def entity_exists(self, tenant: str, name: str) -> bool: ...

    async def edit_graph(self, tenant: str, edit: GraphEdit) -> dict[str, Any]:
        """Make one edit, never at the same time as a merge of any document into this graph (it
        takes the indexer's graph gate exclusively), durable when this returns. The result is
        LightRAG's description of the edited item (plain JSON)."""
        ...

    async def document(self, tenant: str, doc_id: str) -> DocumentRecord | None: ...

    async def documents(
        self,
        tenant: str,
        status: DocumentStatus | None,
        limit: int,
        offset: int,
        order: DocumentOrder = NEWEST_FIRST,
    ) -> DocumentPage: ...

    async def answer(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> QueryResult:
        """The whole answer (or, with ``only_need_context``, the retrieved context), with its
        references when ``spec.include_references``."""
        ...

    async def context(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> str:
        """Only the context retrieved for ``spec`` (no generated answer)."""
        ...

    async def stream(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> StreamedAnswer:
        """Start answering: failures before the first piece raise here, later ones from the stream
        (as `ProviderError`)."""
        ...

    async def retrieve(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> RetrievedData:
        """The entities, relationships and chunks retrieval finds for ``spec`` (no answer)."""
        ...

    def loaded(self) -> list[str]:
        """Tenants whose knowledge base is loaded in this process."""
        ...


@dataclass
class QueryAnswer:
    """A completed query task's ``result``: the /query body, plus ``context`` when only the context
    was asked for."""

    response: str
    mode: QueryMode
    only_need_context: bool
    llm: str
    references: tuple[Reference, ...] | None = None

    @classmethod
    def of(cls, spec: QuerySpec, result: QueryResult, llm: str) -> QueryAnswer:
        references = result.references if spec.include_references else None
        return cls(result.response, spec.mode, spec.only_need_context, llm, references)

    def as_dict(self) -> dict[str, Any]:
        result: dict[str, Any] = {
            "response": self.response,
            "mode": self.mode.value,
            "only_need_context": self.only_need_context,
            "llm": self.llm,
        }
        if self.only_need_context:
            result["context"] = self.response
        if self.references is not None:
            result["references"] = [r.as_dict() for r in self.references]
        return result

    @staticmethod
    def result_of(stored: Mapping[str, Any]) -> QueryResult:
        """A completed query task's ``result`` back as a `QueryResult`."""
        return QueryResult(
            str(stored.get("response", "")),
            tuple(
                Reference(
                    str(r.get("reference_id", "")),
                    str(r.get("file_path", "")),
                    tuple(r["content"]) if r.get("content") is not None else None,
                )
                for r in stored.get("references") or ()
            ),
        )
