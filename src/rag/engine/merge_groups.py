"""Documents that reach the merge while other merges run are merged together, as one group.

Why: LightRAG's `_merge_nodes_then_upsert` holds an entity's keyed lock across that entity's
summary LLM call. When many documents name the same entity (a company, a product, a city:
such hub entities are the norm in a knowledge base), their merges form a chain of summary
calls, one LLM latency per document per entity, while the LLM sits idle. Merging the documents
that are waiting at that moment in one `merge_nodes_and_edges` call gives each entity all of
their new descriptions at once: at most one summary for the group instead of one per document,
and the chain is as long as the number of groups, not of documents.

Grouping costs nothing when the machine is idle: a document that finds a free merge slot merges
alone at once, exactly as LightRAG would (the equivalence test pins that path). Only documents
that would have queued for a slot are grouped. At most ``concurrency`` groups run at once; the
next group takes the waiting documents highest task priority first, then oldest, up to
``max_docs``.

A free slot is not taken by documents that share an entity with a running group: their merge
would only wait on that group's keyed locks (LightRAG locks an entity, and a relation's two
endpoints, across the summary call). They wait in the queue instead and are merged together once
that group ends, so a burst of documents naming the same hub entities becomes one group (one
summary per hub entity) instead of a chain of small groups, each paying its own summary calls.
Documents with entities of their own still merge beside the running groups at once; a document
that outranks the group it conflicts with does not wait for it; and no document waits for a
conflicting group longer than ``patience`` (a big document's merge may take minutes): then it
merges beside it, waiting on the shared entities' locks only, as LightRAG would.

With the pre-summary (presummary.py) a group summarises before it merges, outside the locks,
and holds them for storage work only; groups that share entities still go one after the other,
because a group's summaries are computed from what the previous one stored: beside it, they would
be computed from stale descriptions, missed by the merge and made again under the locks.

Priority reaches the merge too: a group holds documents of one priority only (an urgent
document never waits for the summaries of the routine ones it would have been grouped with),
and a waiting document that outranks every running group does not wait for a slot: it starts
in one express slot beyond ``concurrency``.

Failure and cancellation stay per document:
- a document stopped while it waits leaves the queue at once;
- a running group is stopped only when every member has stopped (a shutdown);
- a group of several that fails tells each member `MergeGroupFailed`; the member purges what
  the group wrote for it and merges again alone, so one bad document never fails the others.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from src.core.defaults import DEFAULT_PRIORITY
from src.core.metrics import PROVIDER_QUEUED, PROVIDER_RUNNING
from src.rag.usage import UsageMeter, current_meter, metering, split_usage

log = logging.getLogger(__name__)


class MergeGroupFailed(Exception):
    """The group this document was merged in failed; merge it again alone after a purge."""


@dataclass(eq=False)
class MergeJob:
    """One document's extraction results, waiting for (or in) a merge."""

    doc_id: str
    chunk_results: list
    priority: int = DEFAULT_PRIORITY
    #: Merge alone, never in a group (the retry after a failed group).
    solo: bool = False
    #: Anything the group runner needs per document (scope, progress hooks...).
    context: Any = None
    stopped: bool = False
    #: Its group began merging (a job stopped before that left nothing in the graph).
    started: bool = False
    future: asyncio.Future[None] | None = None
    seq: int = 0
    queued_at: float = 0.0
    #: The document's own context (its task id, its usage meter, the write fence), captured when it
    #: queues: whoever starts its group (often another group's task, ending) must not lend its own.
    origin: contextvars.Context | None = field(default=None, repr=False)
    _lock_keys: frozenset[str] | None = field(default=None, repr=False)

    def node_names(self) -> set[str]:
        return {name for nodes, _ in self.chunk_results for name in nodes}

    def usage_meter(self) -> UsageMeter | None:
        """The usage meter of the document's own work (in the context it queued from)."""
        return self.origin.run(current_meter) if self.origin is not None else None

    def lock_keys(self) -> frozenset[str]:
        """The names LightRAG's keyed locks take for this document's merge: its entities and both
        endpoints of each of its relations."""
        if self._lock_keys is None:
            self._lock_keys = frozenset(self.node_names() | {n for key in self.edge_keys() for n in key})
        return self._lock_keys

    def edge_keys(self) -> set[tuple[str, str]]:
        return {tuple(sorted(key)) for _, edges in self.chunk_results for key in edges}  # type: ignore[misc]


@dataclass(eq=False)
class MergeGroup:
    jobs: list[MergeJob]
    #: Called once when every member has stopped (the runner stops LightRAG's merge).
    on_all_stopped: list[Callable[[], None]] = field(default_factory=list)

    @property
    def priority(self) -> int:
        return max(job.priority for job in self.jobs)

    def all_stopped(self) -> bool:
        return all(job.stopped for job in self.jobs)


GroupRunner = Callable[[MergeGroup], Awaitable[None]]


class MergeGroups:
    """Admits merges of one workspace: ``concurrency`` groups at once, waiting documents grouped."""

    def __init__(
        self, run_group: GroupRunner, concurrency: int, max_docs: int = 16, patience: float = 5.0
    ) -> None:
        self._run_group = run_group
        self.concurrency = max(1, int(concurrency))
        self.max_docs = max(1, int(max_docs))
        #: Longest wait of a document for a running group it shares entities with (seconds).
        self.patience = max(0.0, float(patience))
        self._timer: asyncio.TimerHandle | None = None
        self._pending: list[MergeJob] = []
        self._running: dict[MergeJob, MergeGroup] = {}
        #: The running groups, by the task that runs each (the task keeps a reference to it).
        self._groups: dict[asyncio.Task[None], MergeGroup] = {}
        self._seq = itertools.count()
        # Observability (and what the tests count).
        self.groups_run = 0
        self.docs_grouped = 0
        self.largest_group = 0

    @property
    def waiting(self) -> int:
        return len(self._pending)

    async def merge(self, job: MergeJob) -> None:
        """Return once ``job`` is merged (alone or in a group); raise what its merge raised."""
        if job.stopped:
            raise asyncio.CancelledError(f"merge of {job.doc_id} stopped before it was queued")
        job.future = asyncio.get_running_loop().create_future()
        job.seq = next(self._seq)
        job.queued_at = time.monotonic()
        job.origin = contextvars.copy_context()
        self._pending.append(job)
        PROVIDER_QUEUED.labels("merge").inc()
        self._pump()
        await asyncio.shield(job.future)

    def stop(self, job: MergeJob) -> None:
        """The document was stopped: leave the queue, or count as stopped in its running group."""
        job.stopped = True
        if job in self._pending:
            self._pending.remove(job)
            PROVIDER_QUEUED.labels("merge").dec()
            if job.future is not None:
                job.future.cancel()  # the caller reports its own cancellation
            return
        group = self._running.get(job)
        if group is not None and group.all_stopped():
            for callback in group.on_all_stopped:
                callback()

    def _take_group(self) -> list[MergeJob]:
        """The next group to start now, or [] when no waiting document may start.

        A free slot is used by documents whose entities no running group holds. A document that
        shares entities with a running group waits for it (it would wait on its keyed locks anyway)
        unless it outranks that group or has waited ``patience`` seconds: a long merge (a big
        document) then delays it by no more than that before it merges beside it, as it did before
        conflicts were looked at. An express slot only takes documents outranking every group."""
        if len(self._groups) > self.concurrency:
            return []  # the express slot is taken
        running = list(self._groups.values())
        above = max(group.priority for group in running) if len(running) == self.concurrency else -1
        now = time.monotonic()
        self._pending.sort(key=lambda j: (-j.priority, j.seq))

        def holds_back(job: MergeJob) -> bool:
            keys = job.lock_keys()
            return any(
                job.priority <= group.priority and any(keys & member.lock_keys() for member in group.jobs)
                for group in running
            )

        held = {job for job in self._pending if holds_back(job)}
        ready = [
            job
            for job in self._pending
            if job.priority > above and (job not in held or self._waited(job, now))
        ]
        self._wake_for(held - set(ready), now)
        if not ready:
            return []
        first = ready[0]
        jobs = [first]
        if not first.solo:
            # Beside a free first member only free ones (a held one would make the group wait);
            # a member that waited out its patience takes every waiting one of its priority along.
            takers = self._pending if first in held else [job for job in ready if job not in held]
            for job in takers:
                if len(jobs) >= self.max_docs:
                    break
                if job is not first and job.priority == first.priority and not job.solo:
                    jobs.append(job)
        for job in jobs:
            self._pending.remove(job)
        return jobs

    def _waited(self, job: MergeJob, now: float) -> bool:
        return now - job.queued_at >= self.patience

    def _wake_for(self, held: set[MergeJob], now: float) -> None:
        """Pump again when the first held document's patience runs out."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if held:
            delay = max(0.0, min(job.queued_at for job in held) + self.patience - now)
            self._timer = asyncio.get_running_loop().call_later(delay, self._pump)

    def _pump(self) -> None:
        while self._pending and (jobs := self._take_group()):
            group = MergeGroup(jobs)
            PROVIDER_QUEUED.labels("merge").dec(len(group.jobs))
            PROVIDER_RUNNING.labels("merge").inc(len(group.jobs))
            for job in group.jobs:
                self._running[job] = group
                job.started = True
            self.groups_run += 1
            if len(group.jobs) > 1:
                self.docs_grouped += len(group.jobs)
            self.largest_group = max(self.largest_group, len(group.jobs))
            origin = group.jobs[0].origin
            task = asyncio.get_running_loop().create_task(
                self._run(group), name="merge-group", context=origin.copy() if origin else None
            )
            self._groups[task] = group

    async def _run(self, group: MergeGroup) -> None:
        error: BaseException | None = None
        started = time.monotonic()
        try:
            if len(group.jobs) == 1:
                await self._run_group(group)
            else:  # runs in its first member's context: the group's calls are everyone's
                with metering() as spent:
                    try:
                        await self._run_group(group)
                    finally:
                        split_usage(spent, [job.usage_meter() for job in group.jobs])
        except BaseException as exc:  # delivered to the members below
            error = exc
        finally:
            self._groups.pop(asyncio.current_task(), None)  # type: ignore[arg-type]
            PROVIDER_RUNNING.labels("merge").dec(len(group.jobs))
            for job in group.jobs:
                self._running.pop(job, None)
            self._pump()
        others = len(group.jobs) - 1
        log.info(
            "merged %d document(s) in %.2f s (%d waiting)%s",
            others + 1,
            time.monotonic() - started,
            len(self._pending),
            f": failed: {error!r}" if error is not None else "",
        )
        for job in group.jobs:
            future = job.future
            if future is None or future.done():
                continue
            if error is None:
                future.set_result(None)
            elif isinstance(error, asyncio.CancelledError):
                future.cancel()
            else:
                failure = MergeGroupFailed(f"merged with {others} other(s): {error}") if others else error
                future.set_exception(failure)
                future.exception()  # marked retrieved: a member that gave up waiting must not log it
        if error is not None and others:
            log.warning("merge group of %d documents failed (%s); each merges again alone", others + 1, error)
