"""Wiring: builds every long-lived object once at start-up and tears them down in order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from src.core.config import Settings
from src.core.data_dir import DataDirLock
from src.core.defaults import DEFAULT_TENANT
from src.core.metrics import Metrics
from src.core.redis_conn import RedisHandle, connect_redis
from src.ingestion.batches import BatchService
from src.ingestion.files import UploadFiles
from src.ingestion.handler import IngestHandler
from src.ingestion.knowledge import KnowledgeService
from src.ingestion.ownership import Ownership, PgOwnership, build_ownership, shared_storages_selected
from src.ingestion.prefetch import ExtractionAhead
from src.ingestion.query_lane import QueryLane
from src.ingestion.scan import DirectoryScanner
from src.ingestion.submission import SubmissionService
from src.ingestion.tasks import TaskService
from src.ingestion.upload_sweeper import UploadSweeper
from src.rag.builder import process_schedulers
from src.rag.delegated import DelegatedKnowledgeBases
from src.rag.e5_bulk_lane import close_bulk_lane
from src.rag.engine.local import LocalKnowledgeBases
from src.rag.engine.tenant_engines import TenantEngines
from src.rag.knowledge import KnowledgeBases, workspace_of
from src.rag.lightrag_compat import check_lightrag_version
from src.rag.llm.vision import vision_description
from src.rag.parsers import RAGANYTHING_EXTENSIONS
from src.rag.parsing.external import check_parser
from src.rag.storage.fence import register_write_fence
from src.tasks.admission import express_slots_for
from src.tasks.batches import BatchStore
from src.tasks.fanout import TaskEventHub
from src.tasks.models import TaskRecord
from src.tasks.runner import RunnerConfig, TaskRunner
from src.tasks.store import TaskStore
from src.tenancy.ratelimit import RateLimiter
from src.tenancy.sessions import SessionTokens, load_or_create_token_secret
from src.tenancy.tenants import TenantRegistry
from src.tenancy.usage import UsageLedger
from src.webhooks import WebhookNotifier, load_or_create_secret

log = logging.getLogger(__name__)


@dataclass
class Services:
    settings: Settings
    redis: RedisHandle
    store: TaskStore
    runner: TaskRunner
    #: The process's one task-change subscriber: event streams and requests that wait for a task.
    events: TaskEventHub
    #: The knowledge bases as this instance's role may use them (src/rag/knowledge.py).
    knowledge_bases: KnowledgeBases
    tenants: TenantRegistry
    limiter: RateLimiter
    metrics: Metrics
    webhooks: WebhookNotifier
    instance_id: str
    files: UploadFiles
    handler: IngestHandler
    #: The use cases the HTTP routes call: submitting work, tasks, the knowledge base, batches.
    submission: SubmissionService
    tasks: TaskService
    knowledge: KnowledgeService
    batches: BatchService
    #: Which workspaces this instance may ingest into (all of them with the file storages).
    ownership: Ownership
    #: Tokens spent per tenant and day/month, and the budgets (src/tenancy/usage.py).
    usage: UsageLedger | None = None
    #: LightRAG Server's directory scan (INPUT_DIR) into tasks.
    scanner: DirectoryScanner | None = None
    #: Session tokens of LightRAG's WebUI (/lightrag/login, guest access).
    sessions: SessionTokens | None = None
    #: LightRAG engines loaded in this process; None on an api-role instance that delegates.
    engines: TenantEngines | None = None
    #: Removes this instance's storage write fence (set with shared storages only).
    remove_fence: Callable[[], None] | None = None
    #: Removes upload files no task will use (crashed uploads, orphaned stored files).
    upload_sweeper: UploadSweeper | None = None
    #: This process's claim on DATA_DIR (held only while it runs tasks: src/core/data_dir.py).
    data_dir_lock: DataDirLock | None = None
    #: Extracts documents of workspaces owned elsewhere into the shared cache (shared storages only).
    extraction_ahead: ExtractionAhead | None = None


def resolve_instance_id(settings: Settings) -> str:
    """INSTANCE_ID, or an id persisted in the data dir so a restart reclaims its own leases at once."""
    if settings.instance_id:
        return settings.instance_id
    path = settings.data_dir / "instance_id"
    if path.exists():
        return path.read_text().strip()
    instance_id = f"inst-{uuid.uuid4().hex[:12]}"
    path.write_text(instance_id)
    return instance_id


async def start_services(
    settings: Settings,
    *,
    redis_prefix: str = "ragsvc:",
    task_view: Callable[[TaskRecord], dict[str, Any]] = lambda r: r.model_dump(mode="json"),
) -> Services:
    # Another LightRAG release would break in the middle of a document (some reach-ins silently).
    check_lightrag_version()
    # A parser whose models are missing is refused now, not at the first upload.
    parser = await asyncio.to_thread(check_parser, settings.parser)
    log.info("documents: parser %s; pictures: %s", parser, vision_description(settings))
    for directory in (settings.data_dir, settings.uploads_dir, settings.rag_dir):
        directory.mkdir(parents=True, exist_ok=True)
    instance_id = await asyncio.to_thread(resolve_instance_id, settings)
    runs_tasks = settings.role != "api"
    data_dir_lock = DataDirLock(settings.data_dir, instance_id)
    if runs_tasks:
        await asyncio.to_thread(data_dir_lock.acquire)  # DataDirInUse: refused before anything runs
    files = UploadFiles(
        settings.uploads_dir,
        max_dir_bytes=settings.max_uploads_dir_bytes,
        min_free_bytes=settings.min_free_disk_bytes,
        instance_id=instance_id,
    )
    await asyncio.to_thread(files.measure)
    # Before serving: this instance's earlier run left part files no request can finish now, and
    # other instances' are removed only when their writer is provably gone (src/ingestion/files.py).
    if await asyncio.to_thread(files.claim_instance):
        await asyncio.to_thread(files.remove_abandoned_parts, own=True)

    # The first use of the OpenAI client's chat/embeddings resources imports modules (~0.5 s); do it
    # here, in a thread, instead of on the event loop in the middle of the first request.
    await asyncio.to_thread(_preload_provider_modules)
    redis = await connect_redis(settings)
    store = TaskStore(
        redis.client,
        prefix=redis_prefix,
        ttls={s: settings.ttl_for(s) for s in ("completed", "failed", "cancelled")},
        max_queued=settings.max_pending_tasks,
        tenant_max_pending=settings.tenant_max_pending,
        tenant_max_running=settings.tenant_max_running,
        max_queued_queries=settings.max_pending_queries,
        tenant_max_pending_queries=settings.tenant_query_share,
    )
    tenants = TenantRegistry(redis.client, redis_prefix, cache_seconds=settings.auth_cache_seconds)
    limiter = RateLimiter(redis.url, redis_prefix, tenants, default_rpm=settings.tenant_requests_per_minute)
    metrics = Metrics()
    events = TaskEventHub(
        store,
        max_per_tenant=settings.sse_max_streams_per_tenant,
        queue_size=settings.sse_queue_size,
        max_waiters=settings.insert_max_waiters,
        recheck_seconds=settings.insert_wait_recheck_seconds,
    )
    ownership = build_ownership(
        settings,
        instance_id,
        redis_prefix,
        workspace_for=lambda tenant: workspace_of(settings.workspace, tenant),
        live_instances=store.live_instances,
    )
    await ownership.start()
    remove_fence = None
    if ownership.shared:
        # Our storages refuse writes into workspaces this instance does not own (a stale owner).
        remove_fence = register_write_fence(ownership.owns_workspace)
    engines: TenantEngines | None = None
    if knowledge_bases_readable_here(settings):
        engines = TenantEngines(
            settings,
            metrics,
            max_cached=settings.max_cached_tenants,
            idle_seconds=settings.tenant_idle_seconds,
            owns=ownership.owns,
            acquire=ownership.try_acquire,
            **(
                dict(
                    graph_locks=ownership.graph_locks,
                    write_guard=lambda tenant, guest: ownership.write_guard(tenant, guest=guest),
                    may_guest=ownership.may_guest,
                )
                if isinstance(ownership, PgOwnership)
                else {}
            ),
        )
        if runs_tasks:
            # The default tenant's knowledge base is loaded up front (it also resumes its unfinished
            # documents); an api-role instance loads one when a request needs it.
            async with engines.use(DEFAULT_TENANT):
                pass
        engines.start_reaper()

    secret = await asyncio.to_thread(load_or_create_secret, settings.webhook_secret, settings.data_dir)
    webhooks = WebhookNotifier(
        store,
        secret,
        task_view,
        attempts=settings.webhook_attempts,
        backoff_seconds=settings.webhook_backoff_seconds,
        timeout_seconds=settings.webhook_timeout_seconds,
        max_response_bytes=settings.webhook_max_response_bytes,
        allowed_hosts=settings.webhook_allowed_hosts,
    )
    queries = QueryLane(settings, store, events)
    knowledge_bases: KnowledgeBases = (
        LocalKnowledgeBases(engines) if engines is not None else DelegatedKnowledgeBases(settings, queries)
    )
    handler = IngestHandler(settings, knowledge_bases, files, on_final=webhooks.notify)
    usage = UsageLedger(redis.client, redis_prefix, tenants, metrics)
    handler.usage = usage
    runner = TaskRunner(
        store,
        handler,
        RunnerConfig(
            max_concurrent=settings.max_concurrent_tasks,
            express_slots=express_slots_for(settings.max_concurrent_tasks)
            if settings.express_task_slots is None
            else settings.express_task_slots,
            # A document merging or waiting for its commit yields its slot to the next one. Waiting
            # documents are merged in groups (src/rag/engine/merge_groups.py), which only pays off if
            # extraction can run ahead of the merges: room for eight slots' worth (a finishing task
            # holds only its extraction results; see docs/benchmarks.md, E4).
            finishing_slots=8 * settings.max_concurrent_tasks,
            spare_slots=settings.max_concurrent_tasks // 2
            if settings.spare_task_slots is None
            else settings.spare_task_slots,
            llm=process_schedulers(settings).llm,
            lease_seconds=settings.lease_seconds,
            heartbeat_seconds=settings.heartbeat_seconds,
            sweep_seconds=settings.sweep_seconds,
            max_attempts=settings.max_attempts,
            task_timeout_seconds=settings.task_timeout_seconds,
            retry_base_seconds=settings.retry_base_seconds,
            retry_max_seconds=settings.retry_max_seconds,
            max_concurrent_queries=settings.max_concurrent_queries,
            query_timeout_seconds=settings.query_timeout_seconds,
            guest_claims=ownership.shared and settings.index_anywhere,
            guest_skip_suffixes=tuple(sorted(RAGANYTHING_EXTENSIONS)),
        ),
        instance_id,
        metrics=metrics,
        gate=ownership if ownership.shared else None,
    )

    async def on_lost(tenant: str) -> None:
        # Stop the tasks first (they are handed back to the queue), then the workspace's indexing,
        # so nothing of this instance writes into the workspace once another instance may own it.
        runner.abandon_tenant(tenant)
        if engines is not None:
            await engines.stop_ingestion(tenant)

    async def on_acquired(tenant: str) -> None:
        with contextlib.suppress(Exception):  # best effort: the sweeper requeues at lease expiry anyway
            await runner.reclaim_tenant(tenant)

    ownership.add_listener(on_lost=on_lost, on_acquired=on_acquired)
    extraction_ahead = None
    if runs_tasks:
        await runner.start()
        if ownership.shared and settings.extract_ahead and not settings.index_anywhere:
            extraction_ahead = ExtractionAhead(
                store,
                knowledge_bases,
                files,
                ownership,
                runner,
                instance_id,
                max_documents=settings.max_concurrent_tasks,
                lease_seconds=settings.extract_ahead_lease_seconds,
            )
            extraction_ahead.start()
    await events.start()
    metrics.start_sampling(store.ping)
    log.info(
        "service ready: instance %s, role %s, %d task slot(s), %d query slot(s)",
        instance_id,
        settings.role,
        settings.max_concurrent_tasks if runs_tasks else 0,
        settings.max_concurrent_queries if runs_tasks else 0,
    )
    submission = SubmissionService(settings, store, runner, files, knowledge_bases, queries, metrics)
    submission.usage = usage
    knowledge = KnowledgeService(settings, store, knowledge_bases, events if ownership.shared else None)
    knowledge.usage = usage
    tasks = TaskService(store, runner, events, handler.after_final)
    batches = BatchService(
        submission, tasks, BatchStore(redis.client, store.keys, ttl_seconds=batch_ttl(settings))
    )
    sweeper = UploadSweeper(
        files,
        store.existing,
        orphan_seconds=settings.orphan_upload_seconds,
        interval_seconds=min(300.0, settings.orphan_upload_seconds / 4),
    )
    sweeper.start()
    return Services(
        settings=settings,
        redis=redis,
        store=store,
        runner=runner,
        events=events,
        knowledge_bases=knowledge_bases,
        tenants=tenants,
        limiter=limiter,
        metrics=metrics,
        webhooks=webhooks,
        sessions=SessionTokens(
            await asyncio.to_thread(load_or_create_token_secret, settings.token_secret, settings.data_dir),
            ttl_seconds=settings.token_expire_hours * 3600,
        ),
        instance_id=instance_id,
        files=files,
        handler=handler,
        submission=submission,
        tasks=tasks,
        knowledge=knowledge,
        usage=usage,
        batches=batches,
        scanner=DirectoryScanner(settings, submission, batches),
        ownership=ownership,
        engines=engines,
        remove_fence=remove_fence,
        upload_sweeper=sweeper,
        data_dir_lock=data_dir_lock,
        extraction_ahead=extraction_ahead,
    )


def knowledge_bases_readable_here(settings: Settings) -> bool:
    """False for an api-role instance whose knowledge bases live in the workers' processes (the
    embedded SQLite or JSON file storages): answering from an engine of its own would be stale."""
    if settings.role != "api":
        return True
    from src.rag.storage.selection import storage_kwargs_from_env

    return shared_storages_selected(storage_kwargs_from_env(settings.lightrag_env))


def batch_ttl(settings: Settings) -> int:
    """A batch outlives its tasks: the longest TTL of a finished task, plus the time its tasks may
    still run (the batch's TTL is pushed back while any of them is live, see `BatchStore.keep`)."""
    finished = max(settings.ttl_for(s) or 0 for s in ("completed", "failed", "cancelled"))
    return finished + int(settings.task_timeout_seconds * settings.max_attempts)


async def stop_services(services: Services) -> None:
    if services.upload_sweeper is not None:
        await services.upload_sweeper.stop()
    await services.events.stop()
    if services.extraction_ahead is not None:
        await services.extraction_ahead.stop()
    await services.runner.stop(services.settings.shutdown_grace_seconds)
    await services.metrics.stop_sampling()
    await services.webhooks.close()
    try:
        if services.engines is not None:
            await services.engines.close()
        await close_bulk_lane()
    finally:
        await services.ownership.stop()  # the locks go after the engines: nothing of ours writes later
        if services.remove_fence is not None:
            services.remove_fence()
        await services.limiter.close()
        await services.redis.close()
        services.files.release_instance()
        if services.data_dir_lock is not None:
            services.data_dir_lock.release()


def _preload_provider_modules() -> None:
    import openai.resources.chat  # noqa: F401
    import openai.resources.embeddings  # noqa: F401
