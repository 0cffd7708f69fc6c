"""Queries as tasks: queued in the query lane (POST /query/async), or answered by a worker for an
api-role instance that has no knowledge base of its own (`DelegatedKnowledgeBases`).

A delegated query waits through the process's task-change fan-out (`TaskEventHub.wait_final`), the
same way ``POST /insert?wait=`` waits: woken by its task's change notices, never by polling.
"""

from __future__ import annotations

import contextlib
import time

from src.core.config import Settings
from src.core.defaults import DEFAULT_PRIORITY
from src.ingestion.errors import QueryQueueFull, TaskExists, TenantQueryQueueFull
from src.rag.errors import ProviderError, QueryTimeout
from src.rag.knowledge import QueryAnswer, QueryResult, QuerySpec, RetrievedData
from src.tasks.fanout import TaskEventHub
from src.tasks.models import CreateOutcome, Stage, TaskKind, TaskRecord, TaskStatus
from src.tasks.store import TaskStore

#: What a query task is for: an answer (``result.response``) or retrieval only (``/query/data``).
QUERY_ANSWER = "answer"
QUERY_DATA = "data"


class QueryLane:
    def __init__(self, settings: Settings, store: TaskStore, events: TaskEventHub):
        self.settings = settings
        self.store = store
        self.events = events

    async def submit(
        self,
        tenant: str,
        spec: QuerySpec,
        *,
        priority: int = DEFAULT_PRIORITY,
        callback_url: str | None = None,
        purpose: str = QUERY_ANSWER,
        task_id: str | None = None,
    ) -> TaskRecord:
        """Queue a query task; it waits in a lane of its own, never behind documents. (The caller
        wakes its runner: an api-role instance has none running, a worker answers.)"""
        now = time.time()
        record = TaskRecord(
            task_id=task_id or TaskStore.new_task_id(),
            tenant=tenant,
            priority=priority,
            kind=TaskKind.QUERY,
            query={**spec.as_dict(), "purpose": purpose},
            callback_url=callback_url,
            stage=Stage.QUEUED,
            created_at=now,
            updated_at=now,
        )
        outcome = await self.store.create(record)
        if outcome.kind == CreateOutcome.TENANT_BUSY:
            raise TenantQueryQueueFull("this tenant has reached its limit of waiting queries; retry later")
        if outcome.kind == CreateOutcome.BUSY:
            raise QueryQueueFull(
                f"{self.settings.max_pending_queries} queries are already waiting; retry later"
            )
        if not outcome.created:
            raise TaskExists(f"task {record.task_id} already exists")
        return record

    async def answer(self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY) -> QueryResult:
        """Answer through a query task run by a worker, waiting at most QUERY_TIMEOUT_SECONDS.

        Failures answer as on a direct query (502); a timeout (504) or a caller that goes away
        cancels the task, so no worker spends the LLM on an answer nobody reads."""
        return QueryAnswer.result_of(await self._delegate(tenant, spec, priority, QUERY_ANSWER))

    async def retrieve(
        self, tenant: str, spec: QuerySpec, *, priority: int = DEFAULT_PRIORITY
    ) -> RetrievedData:
        """`/query/data` through a query task run by a worker (as `answer`)."""
        stored = await self._delegate(tenant, spec, priority, QUERY_DATA)
        data = stored.get("data") or {}
        return RetrievedData(
            status=str(stored.get("status", "")),
            message=str(stored.get("message", "")),
            entities=list(data.get("entities") or []),
            relationships=list(data.get("relationships") or []),
            chunks=list(data.get("chunks") or []),
            references=list(data.get("references") or []),
            metadata=dict(stored.get("metadata") or {}),
        )

    async def _delegate(self, tenant: str, spec: QuerySpec, priority: int, purpose: str) -> dict:
        # The id is chosen before the task is created: a caller that goes away while the create is
        # in flight (the task may exist already) still cancels it.
        task_id = TaskStore.new_task_id()
        timeout = self.settings.query_timeout_seconds
        try:
            await self.submit(tenant, spec, priority=priority, purpose=purpose, task_id=task_id)
            final = await self.events.wait_final(task_id, timeout, bounded=False)
            if final is None:
                current = await self.store.get(task_id)
                if current is None:
                    raise ProviderError("the query task expired before it was answered")
                if not current.status.is_final:
                    raise QueryTimeout(f"no worker answered within {timeout:g} s", task_id=task_id)
                final = current
        except (QueryQueueFull, TenantQueryQueueFull, TaskExists):
            raise  # refused: no task was created
        except BaseException:  # the timeout above, or the caller went away
            with contextlib.suppress(Exception):
                await self.store.request_cancel(task_id)
            raise
        if final.status == TaskStatus.COMPLETED:
            return dict(final.result or {})
        raise ProviderError(final.error or f"the query task ended {final.status}")
