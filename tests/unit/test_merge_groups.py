"""MergeGroups on its own: who merges alone, who is grouped, in what order, and what a stop or
a failure does to the members (the runner is a stand-in that records its groups)."""

from __future__ import annotations

import asyncio

import pytest

from src.rag.engine.merge_groups import MergeGroup, MergeGroupFailed, MergeGroups, MergeJob

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class Runner:
    """Records each group; a group whose first member is in ``hold`` waits for its release."""

    def __init__(self) -> None:
        self.groups: list[list[str]] = []
        self.hold: dict[str, asyncio.Event] = {}
        self.started: dict[str, asyncio.Event] = {}
        self.fail: dict[str, BaseException] = {}

    def block(self, doc_id: str) -> None:
        self.hold[doc_id] = asyncio.Event()
        self.started[doc_id] = asyncio.Event()

    async def __call__(self, group: MergeGroup) -> None:
        ids = [job.doc_id for job in group.jobs]
        self.groups.append(ids)
        first = ids[0]
        if first in self.hold:
            self.started[first].set()
            await self.hold[first].wait()
        for doc_id in ids:
            if doc_id in self.fail:
                raise self.fail[doc_id]


def job(doc_id: str, priority: int = 5, solo: bool = False, names: tuple[str, ...] = ()) -> MergeJob:
    """A document whose only entity is its own id, plus ``names`` (entities it shares)."""
    return MergeJob(doc_id, [(dict.fromkeys((doc_id, *names), []), {})], priority=priority, solo=solo)


async def occupied(groups: MergeGroups, runner: Runner, priority: int = 5) -> asyncio.Task:
    """A merge of "busy" that holds a slot until ``runner.hold["busy"]`` is set."""
    runner.block("busy")
    busy = asyncio.create_task(groups.merge(job("busy", priority)))
    await runner.started["busy"].wait()
    return busy


async def queued_jobs(groups: MergeGroups, *jobs: MergeJob) -> list[asyncio.Task]:
    """Merges of ``jobs``, once all of them wait in the queue."""
    tasks = [asyncio.create_task(groups.merge(j)) for j in jobs]
    await until(lambda: groups.waiting == len(jobs))
    return tasks


async def until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.005)


async def test_an_idle_workspace_merges_a_document_alone_at_once() -> None:
    runner = Runner()
    groups = MergeGroups(runner, concurrency=2)
    await groups.merge(job("a"))
    await groups.merge(job("b"))
    assert runner.groups == [["a"], ["b"]] and groups.docs_grouped == 0


async def test_documents_waiting_for_a_slot_are_merged_together_one_priority_per_group() -> None:
    """Catches a queue that merges waiting documents one by one (the chain this removes), that
    ignores priorities when a group is capped, that lets a solo retry join a group, or that makes
    an urgent document wait for the summaries of routine documents grouped with it."""
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1, max_docs=2)
    busy = await occupied(groups, runner, priority=9)  # nothing outranks it: no express slot
    jobs = [job("low1", 1), job("low2", 1), job("low3", 1), job("solo", 9, solo=True),
            job("high", 9), job("high2", 9), job("high3", 9), job("mid", 5)]  # fmt: skip
    waiting = await queued_jobs(groups, *jobs)
    runner.hold["busy"].set()
    await asyncio.gather(busy, *waiting)
    # The solo job goes first (priority 9, older than "high") and alone; then groups of one
    # priority each, capped, oldest first.
    assert runner.groups == [
        ["busy"],
        ["solo"],
        ["high", "high2"],
        ["high3"],
        ["mid"],
        ["low1", "low2"],
        ["low3"],
    ]
    assert groups.largest_group == 2 and groups.docs_grouped == 4


async def test_a_document_that_outranks_every_running_merge_starts_in_the_express_slot() -> None:
    """Catches a priority-9 document queueing behind a long merge of priority-1 documents (the
    head-of-line wait of the benchmark's E2), and an express slot that is not bounded."""
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1)
    busy = await occupied(groups, runner, priority=1)
    (low,) = await queued_jobs(groups, job("low", 1))  # does not outrank "busy": waits
    runner.block("urgent")
    urgent = asyncio.create_task(groups.merge(job("urgent", 7)))
    await runner.started["urgent"].wait()  # started beside "busy", which still holds its slot
    higher = asyncio.create_task(groups.merge(job("higher", 9)))
    await until(lambda: groups.waiting == 2)  # the express slot is taken: "higher" waits too
    assert runner.groups == [["busy"], ["urgent"]]
    runner.hold["busy"].set()
    await busy
    await higher  # a slot freed while "urgent" (7) runs: "higher" outranks it and goes first
    assert not low.done()
    runner.hold["urgent"].set()
    await asyncio.gather(urgent, low)
    assert runner.groups == [["busy"], ["urgent"], ["higher"], ["low"]]


async def test_documents_sharing_an_entity_with_a_running_merge_wait_for_it_and_go_together() -> None:
    """Catches a free slot starting a merge that would only wait on a running group's keyed locks
    (a chain of small groups, each paying the hub entity's summary), and the opposite mistake:
    holding back a document whose entities no running merge touches."""
    runner = Runner()
    groups = MergeGroups(runner, concurrency=2)
    runner.block("busy")
    busy = asyncio.create_task(groups.merge(job("busy", names=("Hub",))))
    await runner.started["busy"].wait()
    a, b = job("a", names=("Hub",)), job("b", names=("Other",))
    relation = MergeJob("c", [({}, {("Hub", "Elsewhere"): []})])  # a relation locks both endpoints
    waits = [asyncio.create_task(groups.merge(j)) for j in (a, relation)]
    await until(lambda: groups.waiting == 2)
    await groups.merge(b)  # disjoint: takes the free slot at once, beside "busy"
    assert runner.groups == [["busy"], ["b"]] and groups.waiting == 2
    runner.hold["busy"].set()
    await asyncio.gather(busy, *waits)
    assert runner.groups == [["busy"], ["b"], ["a", "c"]]


async def test_a_held_back_document_waits_no_longer_than_its_patience_and_an_urgent_one_not_at_all() -> None:
    """Catches a document stuck behind a long merge it shares one entity with (a big document's
    merge may take minutes) and an urgent document queued behind a routine one for the same reason."""
    runner = Runner()
    groups = MergeGroups(runner, concurrency=2, patience=0.2)
    runner.block("busy")
    busy = asyncio.create_task(groups.merge(job("busy", priority=3, names=("Hub",))))
    await runner.started["busy"].wait()
    await groups.merge(job("urgent", priority=7, names=("Hub",)))  # outranks "busy": at once
    patient, alongside = job("patient", priority=3, names=("Hub",)), job("alongside", 3, names=("Hub",))
    waits = await queued_jobs(groups, patient, alongside)
    await asyncio.gather(*waits)  # the patience ran out while "busy" still runs: merged beside it
    assert not busy.done()
    assert runner.groups == [["busy"], ["urgent"], ["patient", "alongside"]]
    runner.hold["busy"].set()
    await busy


async def test_a_document_stopped_while_waiting_leaves_the_queue_at_once() -> None:
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1)
    busy = await occupied(groups, runner)
    stopped, kept = job("stopped"), job("kept")
    waits = await queued_jobs(groups, stopped, kept)
    groups.stop(stopped)
    with pytest.raises(asyncio.CancelledError):
        await waits[0]
    assert not busy.done() and groups.waiting == 1
    runner.hold["busy"].set()
    await asyncio.gather(busy, waits[1])
    assert runner.groups == [["busy"], ["kept"]]
    # Stopped before it was ever queued: refused, never merged.
    late = job("late")
    groups.stop(late)
    with pytest.raises(asyncio.CancelledError):
        await groups.merge(late)
    assert ["late"] not in runner.groups


async def test_a_running_group_is_told_to_stop_only_when_every_member_has_stopped() -> None:
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1)
    first = await occupied(groups, runner)
    a, b = job("a"), job("b")
    waits = await queued_jobs(groups, a, b)
    runner.block("a")
    runner.hold["busy"].set()
    await first
    await runner.started["a"].wait()
    told: list[str] = []
    group = next(g for j, g in groups._running.items() if j is a)
    group.on_all_stopped.append(lambda: told.append("stop"))
    groups.stop(a)
    assert told == []  # b still wants its merge
    groups.stop(b)
    assert told == ["stop"]
    runner.hold["a"].set()
    await asyncio.gather(*waits)


async def test_a_failed_group_tells_each_member_to_retry_alone_and_a_lone_failure_is_its_own() -> None:
    """Catches one bad document failing the documents it happened to be merged with."""
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1)
    busy = await occupied(groups, runner)
    runner.fail["bad"] = RuntimeError("vector store refused")
    waits = await queued_jobs(groups, job("good"), job("bad"))
    runner.hold["busy"].set()
    await busy
    for wait in waits:
        with pytest.raises(MergeGroupFailed, match="vector store refused"):
            await wait
    with pytest.raises(RuntimeError, match="vector store refused"):
        await groups.merge(job("bad", solo=True))
    await groups.merge(job("good", solo=True))
    assert runner.groups[-2:] == [["bad"], ["good"]]


async def test_the_merge_gauges_count_waiting_and_merging_documents() -> None:
    """Catches /metrics' provider="merge" gauges drifting (they were the merge slots' before)."""
    from src.core.metrics import PROVIDER_QUEUED, PROVIDER_RUNNING

    queued, running = PROVIDER_QUEUED.labels("merge"), PROVIDER_RUNNING.labels("merge")
    q0, r0 = queued._value.get(), running._value.get()
    runner = Runner()
    groups = MergeGroups(runner, concurrency=1)
    busy = await occupied(groups, runner)
    stopped = job("stopped")
    waits = await queued_jobs(groups, job("a"), job("b"), stopped)
    assert (queued._value.get() - q0, running._value.get() - r0) == (3, 1)
    groups.stop(stopped)
    assert queued._value.get() - q0 == 2
    runner.block("a")
    runner.hold["busy"].set()
    await runner.started["a"].wait()
    assert (queued._value.get() - q0, running._value.get() - r0) == (0, 2)
    runner.hold["a"].set()
    await asyncio.gather(busy, *waits[:2])
    assert (queued._value.get() - q0, running._value.get() - r0) == (0, 0)


async def test_a_group_runs_in_its_members_context_and_splits_what_it_spends() -> None:
    """Catches a group started by another group's end running in that group's context: the tokens
    of waiting documents billed to the document whose merge happened to end before theirs."""
    from src.rag.usage import current_meter, metering

    release = asyncio.Event()

    async def run(group: MergeGroup) -> None:
        if group.jobs[0].doc_id == "busy":
            await release.wait()
        meter = current_meter()
        assert meter is not None
        meter.llm_input_tokens += 11  # what the group's summary calls cost

    groups = MergeGroups(run, concurrency=1)

    async def merged(j: MergeJob):
        with metering() as meter:
            await groups.merge(j)
        return meter

    busy = asyncio.create_task(merged(job("busy")))
    await until(lambda: groups._groups)
    waiting = [asyncio.create_task(merged(job(name))) for name in ("a", "b")]
    await until(lambda: groups.waiting == 2)
    release.set()
    meters = await asyncio.gather(busy, *waiting)
    assert [m.llm_input_tokens for m in meters] == [11, 6, 5]
