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
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass

from src.core.defaults import MAX_PRIORITY

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


class Admission:
    """Counts regular and express slots and the priorities of the tasks holding them."""

    def __init__(self, regular: int, express: int = 0, finishing: int = 0) -> None:
        if regular < 1 or express < 0 or finishing < 0:
            raise ValueError("need at least one regular slot and no negative express or finishing slots")
        self.regular = regular
        self.express = express
        self.finishing = finishing
        self._used = {False: 0, True: 0}
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
        """Wait until ``try_acquire`` gives a slot (a task ending is what changes the answer)."""
        while (slot := self.try_acquire()) is None:
            self._changed.clear()
            await self._changed.wait()
        return slot

    def unused(self, slot: Slot) -> None:
        """Give back a slot nothing was claimed with (no wake-up: nothing changed)."""
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
        self._used[slot.express] -= 1
        self._priorities[priority] -= 1
        if self._priorities[priority] <= 0:
            del self._priorities[priority]
        self._changed.set()
