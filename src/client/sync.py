"""`RagClient`: the blocking shell over ``httpx.Client``. It only sends what operations.py builds
and performs the steps sse.py decides; every operation and option is documented there.

    from src.client import RagClient

    with RagClient("http://127.0.0.1:8000") as rag:
        accepted = rag.upload("report.pdf", doc_id="report-2024", priority=8)
        final = rag.wait_for(accepted["task_id"], timeout=600, on_update=print)
        print(rag.query("What does the report say about costs?")["response"])
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from typing import Any

import httpx

from .core import Call, Json, decode_error, ndjson_piece
from .sse import Do, Run, Step, Steps
from .transport import HttpShell, request_options, stream_ok, transport_errors

__all__ = ["RagClient"]


class RagClient(HttpShell[Json, Iterator[str]]):
    """Blocking client. Use as a context manager, or call `close()`."""

    def _open(self, **options: Any) -> httpx.Client:
        return httpx.Client(**options)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, call: Call) -> Any:
        try:
            with transport_errors(self.base_url):
                response = self._http.request(**request_options(call, self.timeout))
        finally:
            call.close()
        return call.decode(response.status_code, response.content, response.reason_phrase)

    def _lines(self, call: Call) -> Iterator[str]:
        options = request_options(call, self.timeout)
        with transport_errors(self.base_url), self._http.stream(**options) as answer:
            if not stream_ok(call, answer.status_code, answer.headers):
                raise decode_error(answer.status_code, answer.read(), answer.reason_phrase)
            yield from answer.iter_lines()

    def _pieces(self, call: Call) -> Iterator[str]:
        return filter(None, map(ndjson_piece, self._lines(call)))

    def _drive(self, steps: Steps, on_update: Callable[[Json], Any] | None) -> Any:
        run = Run(steps)
        with contextlib.ExitStack() as streams:
            while not run.done:
                run.settle(lambda step: self._perform(step, streams, on_update))
        return run.result

    def _perform(self, step: Step, streams: contextlib.ExitStack, on_update: Any) -> Any:
        match step.do:
            case Do.SLEEP:
                return time.sleep(step.arg)
            case Do.NOTIFY:
                return on_update and on_update(step.arg)
            case Do.FETCH:
                return self._call(step.arg)
            case Do.LISTEN:
                return streams.enter_context(contextlib.closing(self._lines(step.arg)))
        return next(step.arg, None)  # READ_LINE
