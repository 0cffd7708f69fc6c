"""Task slots of one process, and the express slots that let priority reach admission.

The LLM scheduler favours a priority-9 document's calls, but only once its task runs: with every
slot held by priority-1 documents, the urgent one would first wait for a whole document to end.
So besides the ``regular`` slots (MAX_CONCURRENT_TASKS) a few ``express`` slots exist. An express
slot is handed out only while every regular slot is taken, and it may only be used to claim a task
of strictly higher priority than the lowest priority running here (the claim names that minimum,
so Redis never hands an express slot a task that could just as well wait). Nothing is preempted:
the running documents keep their slots; the scheduler then lets the new document's calls overtake
theirs.

A slot bounds the work that keeps the LLM busy. A task past that work (merging into the graph,
waiting until its document is durable) calls ``yield_slot()``: it moves to the ``finishing`` pool
and its slot admits the next task, so documents queued behind merges and group-commit waits do not
leave the LLM idle. The finishing pool is bounded too; when it is full a task simply keeps its slot.

Even so, a document's LLM calls form a chain (extraction, then gleaning, per chunk) with CPU work
between them and before the first, so ``regular`` documents cannot keep ``LLM_MAX_ASYNC`` calls in
flight all the time: when a wave of documents turns from one call to the next, starts, or ends
(all gleaned, all merging), LLM slots sit idle until the next documents have read, chunked and
stored their text. ``spare`` slots start documents early enough to fill those gaps: while every
regular slot is taken and the LLM is what documents wait for (every LLM slot was taken a moment
ago; documents busy parsing or waiting for embeddings also leave the LLM idle, and more of them
would not help it), spare tasks are started until a backlog of calls waits for the LLM (the
``llm_room`` callable says how many more calls may be added; spare tasks started within the last
``SPARE_START_SECONDS`` count as calls about to wait). A spare slot is a slot like any other once
lent (its task's calls are admitted as any other's): the document it claims is the head of the
queue, by priority.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from src.core.defaults import MAX_PRIORITY

#: Spare slots are lent only if every LLM slot was taken within this long: a gap in LLM work, not
#: documents busy with something else (parsing, embeddings), which more documents would not fill.
SPARE_DEMAND_SECONDS = 2.0
#: A spare task just started sends its first LLM call within about this long (it reads, chunks and
#: stores its text first): until then it counts as a call about to wait for the LLM.
SPARE_START_SECONDS = 0.5

#: Set by the runner in each task's context: moves that task from its slot to the finishing pool.
_YIELD_HOOK: ContextVar[Callable[[], None] | None] = ContextVar("ragsvc_yield_slot", default=None)


def yield_slot() -> None:
    """The calling task's slot-bound work is over: let its slot admit another task. A no-op outside
    a task run by the runner, when already yielded, or when the finishing pool is full."""
    hook = _YIELD_HOOK.get()
    if hook is not None:
        hook()


def bind_yield_hook(hook: Callable[[], None]) -> None:
    """Called by the runner in the context of the task that ``hook`` belongs to."""
    _YIELD_HOOK.set(hook)


def express_slots_for(regular: int) -> int:
    """Default number of express slots: a quarter of the regular ones, at least one."""
    return max(1, regular // 4)


@dataclass(frozen=True)
class Slot:
    """A claim right. ``min_priority`` is the lowest task priority it may be used for."""

    express: bool
    min_priority: int = 0
    #: Lent while the LLM had room and every regular slot was taken (when: ``lent_at``, monotonic).
    spare: bool = False
    lent_at: float = 0.0


class Admission:
    """Counts regular, express and spare slots and the priorities of the tasks holding them."""

    def __init__(
        self,
        regular: int,
        express: int = 0,
        finishing: int = 0,
        spare: int = 0,
        llm_room: Callable[[], int] | None = None,
    ) -> None:
        if regular < 1 or express < 0 or finishing < 0 or spare < 0:
            raise ValueError("need a regular slot and no negative express, finishing or spare slots")
        self.regular = regular
        self.express = express
        self.finishing = finishing
        #: Spare slots, and how many LLM calls spare tasks may add now (None: no spare slot is lent).
        self.spare = spare if llm_room is not None else 0
        self._llm_room = llm_room
        self._used = {False: 0, True: 0}
        #: When each spare slot in use was lent (monotonic): one entry per spare slot in use.
        self._spare_lent: list[float] = []
        self._finishing = 0
        #: Priorities of the tasks running in this process (regular and express slots alike).
        self._priorities: Counter[int] = Counter()
        self._changed = asyncio.Event()

    def in_use(self, express: bool) -> int:
        return self._used[express]

    @property
    def finishing_count(self) -> int:
        return self._finishing

    def lowest_running(self) -> int | None:
        return min(self._priorities) if self._priorities else None

    def try_acquire(self) -> Slot | None:
        """A regular slot if one is free; else an express slot, if one is free and some priority
        above the lowest running one exists; else None."""
        if self._used[False] < self.regular:
            self._used[False] += 1
            return Slot(express=False)
        lowest = self.lowest_running()
        if self._used[True] < self.express and lowest is not None and lowest < MAX_PRIORITY:
            self._used[True] += 1
            return Slot(express=True, min_priority=lowest + 1)
        return None

    async def acquire(self) -> Slot:
        """Wait for a slot: a regular one; else a spare one, while the LLM has room
        (:meth:`llm_changed` wakes this up); else an express one (``try_acquire``). A task ending
        is what changes the answer otherwise. A spare slot goes before an express one: it may claim
        the same urgent task, and any other."""
        while True:
            if self._used[False] < self.regular:
                return self.try_acquire()  # type: ignore[return-value]  # a regular slot
            if self.spare_room() > 0:
                slot = Slot(express=False, spare=True, lent_at=time.monotonic())
                self._spare_lent.append(slot.lent_at)
                return slot
            if (slot := self.try_acquire()) is not None:
                return slot
            self._changed.clear()
            await self._changed.wait()

    def llm_changed(self) -> bool:
        """The LLM took its last free slot or left one idle: True (and a waiting ``acquire`` woken)
        if a spare slot may be lent now."""
        if self.spare_room() > 0:
            self._changed.set()
            return True
        return False

    @property
    def spare_in_use(self) -> int:
        return len(self._spare_lent)

    def spare_room(self) -> int:
        """Spare slots to lend now: within ``spare``, and within the LLM's room not already promised
        to spare tasks that have just started."""
        if self.spare_in_use >= self.spare or self._llm_room is None:
            return 0
        if self._used[False] < self.regular:
            return 0  # a regular slot comes first
        recent = time.monotonic() - SPARE_START_SECONDS
        starting = sum(1 for lent in self._spare_lent if lent > recent)
        return min(self.spare - self.spare_in_use, self._llm_room() - starting)

    def unused(self, slot: Slot) -> None:
        """Give back a slot nothing was claimed with (no wake-up: nothing changed)."""
        self._release(slot)

    def _release(self, slot: Slot) -> None:
        if slot.spare:
            self._spare_lent.remove(slot.lent_at)
        else:
            self._used[slot.express] -= 1

    def started(self, priority: int) -> None:
        self._priorities[priority] += 1

    def yielded(self, slot: Slot, priority: int) -> bool:
        """Move a task from ``slot`` to the finishing pool if there is room; True if it moved."""
        if self._finishing >= self.finishing:
            return False
        self._finishing += 1
        self._free(slot, priority)
        return True

    def finished(self, slot: Slot, priority: int, yielded: bool = False) -> None:
        """A task ended: free its slot (or its place in the finishing pool)."""
        if yielded:
            self._finishing -= 1
        else:
            self._free(slot, priority)

    def _free(self, slot: Slot, priority: int) -> None:
        self._release(slot)
        self._priorities[priority] -= 1
        if self._priorities[priority] <= 0:
            del self._priorities[priority]
        self._changed.set()
