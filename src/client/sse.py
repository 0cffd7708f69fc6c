"""Waiting for a task, without I/O: a Server-Sent Events parser and a generator of steps.

`wait_steps` decides everything `wait_for` does: follow ``GET /task/{id}/events`` and resume a
dropped stream with ``Last-Event-ID``; fall back to polling ``GET /task/{id}`` with a backoff from
0.2 s to 2 s when the endpoint is missing (404/405, not an event stream), refused, or keeps
dropping; give up after the timeout. It yields `Step`s (see `Do`); the shell performs each and
sends the result back (or throws the `RagError` it raised) through a `Run`. The shells therefore
hold no waiting logic, and this module is tested with scripted replies and a fake clock.
"""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable, Generator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from .core import (
    FINAL_STATUSES,
    Call,
    Json,
    RagApiError,
    RagConnectionError,
    RagError,
    RagTimeoutError,
    task_path,
)

#: Polling backoff when Server-Sent Events are not available.
POLL_INITIAL_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
POLL_FACTOR = 1.5
#: Longest silence tolerated on an event stream before it counts as dropped (and is resumed).
SSE_IDLE_SECONDS = 60.0
#: Consecutive event-stream connections that deliver no event before waiting switches to polling.
SSE_MAX_BARREN_CONNECTS = 2
EVENT_STREAM = "text/event-stream"


# --- Server-Sent Events ---------------------------------------------------------------------------


@dataclass
class SseEvent:
    event: str
    data: str
    id: str | None


@dataclass
class SseParser:
    """Incremental text/event-stream parser (the WHATWG rules that matter here): feed it lines."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> SseEvent | None:
        """The event that this (blank) line completes, else None."""
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = SseEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
            self._event, self._data = "", []
            return event
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._event = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self.last_event_id = value
        elif name == "retry" and value.isdigit():
            self.retry_ms = int(value)
        return None


# --- steps the shells perform ---------------------------------------------------------------------


class Do(Enum):
    """What a `Step` asks the shell to do, and what the shell sends back."""

    #: arg: seconds to pause; reply None.
    SLEEP = "sleep"
    #: arg: a `Call`; reply its decoded body.
    FETCH = "fetch"
    #: arg: a `Call` whose answer must be ``text/event-stream``; reply an opaque line source, opened
    #: lazily (its errors arrive with the first READ_LINE); the shell closes it when the run ends.
    LISTEN = "listen"
    #: arg: that line source; reply its next line, or None at the end of the stream.
    READ_LINE = "read_line"
    #: arg: a new task view for the caller's ``on_update``; reply None.
    NOTIFY = "notify"


@dataclass(frozen=True)
class Step:
    do: Do
    arg: Any


Steps = Generator[Step, Any, Any]


class Run:
    """Drives a step generator: the shell performs `step`, then `send`s the reply or `throw`s the
    `RagError` it raised, until `done`; `result` is then the generator's return value."""

    def __init__(self, steps: Steps) -> None:
        self._steps = steps
        self.done = False
        self.result: Any = None
        self.step: Step | None = self._advance(lambda: next(steps))

    def _advance(self, resume: Callable[[], Step]) -> Step | None:
        try:
            return resume()
        except StopIteration as stop:
            self.done, self.result = True, stop.value
            return None

    def send(self, reply: Any) -> None:
        self.step = self._advance(lambda: self._steps.send(reply))

    def throw(self, error: RagError) -> None:
        self.step = self._advance(lambda: self._steps.throw(error))

    def _current(self) -> Step:
        if self.step is None:
            raise RuntimeError("the run is over")
        return self.step

    def settle(self, perform: Callable[[Step], Any]) -> None:
        """Perform the current step synchronously and pass its outcome on."""
        try:
            reply = perform(self._current())
        except RagError as exc:
            return self.throw(exc)
        self.send(reply)

    async def asettle(self, perform: Callable[[Step], Awaitable[Any]]) -> None:
        """`settle` for a coroutine function (the asyncio shell)."""
        try:
            reply = await perform(self._current())
        except RagError as exc:
            return self.throw(exc)
        self.send(reply)


# --- waiting for a task ---------------------------------------------------------------------------


class WaitState:
    """Deadline, last view, resume point and change detection of one wait."""

    def __init__(self, task_id: str, timeout: float | None, clock: Callable[[], float]) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.clock = clock
        self.deadline = None if timeout is None else clock() + timeout
        self.last: Json | None = None
        self.last_event_id: str | None = None
        self._key: tuple | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - self.clock()

    def check(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise RagTimeoutError(self.task_id, self.timeout or 0.0, self.last)

    def changed(self, view: Json) -> bool:
        """Remember the view; True if it differs from the previous one (then the caller is told)."""
        self.last = view
        key = (view.get("status"), view.get("stage"), view.get("progress"), view.get("updated_at"))
        changed, self._key = key != self._key, key
        return changed

    def pause(self, seconds: float) -> Step:
        remaining = self.remaining()
        return Step(Do.SLEEP, seconds if remaining is None else max(0.0, min(seconds, remaining)))

    def events_call(self) -> Call:
        headers = {"Accept": EVENT_STREAM, "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        remaining = self.remaining()
        idle = SSE_IDLE_SECONDS if remaining is None else max(0.01, min(SSE_IDLE_SECONDS, remaining))
        return Call("GET", f"{task_path(self.task_id)}/events", headers=headers, read_timeout=idle)


def wait_steps(
    task_id: str,
    timeout: float | None = None,
    use_sse: bool = True,
    clock: Callable[[], float] = time.monotonic,
) -> Steps:
    """The steps of `wait_for`; returns the final view, raises `RagTimeoutError` past ``timeout``."""
    state = WaitState(task_id, timeout, clock)
    if use_sse:
        final = yield from _follow_events(state)
        if final is not None:
            return final
    return (yield from _poll(state))


def _follow_events(state: WaitState) -> Generator[Step, Any, Json | None]:
    """Follow the event stream; None means "switch to polling"."""
    barren = 0
    while True:
        state.check()
        parser = SseParser(last_event_id=state.last_event_id)
        got_event = False
        source = yield Step(Do.LISTEN, state.events_call())
        try:
            while (line := (yield Step(Do.READ_LINE, source))) is not None:
                event = parser.feed(line)
                if event is None or event.event not in ("task", "message"):
                    continue
                got_event = True
                state.last_event_id = parser.last_event_id
                view = json.loads(event.data)
                if state.changed(view):
                    yield Step(Do.NOTIFY, view)
                if view.get("status") in FINAL_STATUSES:
                    return view
                state.check()
        except RagConnectionError as exc:
            if exc.refused:
                return None
        except RagApiError:
            return None  # no event stream here (404/405...); polling reports real errors
        barren = 0 if got_event else barren + 1
        if barren >= SSE_MAX_BARREN_CONNECTS:
            return None
        yield state.pause(min((parser.retry_ms or 200) / 1000, POLL_MAX_SECONDS))


def _poll(state: WaitState) -> Generator[Step, Any, Json]:
    delay = POLL_INITIAL_SECONDS
    fetch = Step(Do.FETCH, Call("GET", task_path(state.task_id)))
    while True:
        view = yield fetch
        if state.changed(view):
            yield Step(Do.NOTIFY, view)
        if view.get("status") in FINAL_STATUSES:
            return view
        state.check()
        yield state.pause(delay)
        state.check()
        delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)
