"""`AsyncRagClient`: the asyncio shell over ``httpx.AsyncClient``; the same operations as
`RagClient` (defined once in operations.py), awaitable, and ``query_stream`` an async iterator.

    async with AsyncRagClient("http://127.0.0.1:8000") as rag:
        accepted = await rag.insert_text("…", doc_id="note-1", idempotency_key="note-1-v1")
        final = await rag.wait_for(accepted["task_id"], on_update=print)
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import AsyncIterator, Awaitable
from typing import Any

import httpx

from .core import Call, Json, decode_error, ndjson_piece
from .sse import Do, Run, Step, Steps
from .transport import HttpShell, request_options, stream_ok, transport_errors

__all__ = ["AsyncRagClient"]


class AsyncRagClient(HttpShell[Awaitable[Json], AsyncIterator[str]]):
    """asyncio client. Use as an async context manager, or await `aclose()`."""

    def _open(self, **options: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**options)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _call(self, call: Call) -> Any:
        # A path upload is read by httpx in 64 KB blocking chunks on the loop, as httpx itself does.
        try:
            with transport_errors(self.base_url):
                response = await self._http.request(**request_options(call, self.timeout))
        finally:
            call.close()
        return call.decode(response.status_code, response.content, response.reason_phrase)

    async def _lines(self, call: Call) -> AsyncIterator[str]:
        with transport_errors(self.base_url):
            async with self._http.stream(**request_options(call, self.timeout)) as answer:
                if not stream_ok(call, answer.status_code, answer.headers):
                    raise decode_error(answer.status_code, await answer.aread(), answer.reason_phrase)
                async for line in answer.aiter_lines():
                    yield line

    async def _pieces(self, call: Call) -> AsyncIterator[str]:
        async for line in self._lines(call):
            if piece := ndjson_piece(line):
                yield piece

    async def _drive(self, steps: Steps, on_update: Any) -> Any:
        run = Run(steps)
        async with contextlib.AsyncExitStack() as streams:
            while not run.done:
                await run.asettle(lambda step: self._perform(step, streams, on_update))
        return run.result

    async def _perform(self, step: Step, streams: contextlib.AsyncExitStack, on_update: Any) -> Any:
        match step.do:
            case Do.SLEEP:
                return await asyncio.sleep(step.arg)
            case Do.NOTIFY:
                result = on_update and on_update(step.arg)
                return await result if inspect.isawaitable(result) else result
            case Do.FETCH:
                return await self._call(step.arg)
            case Do.LISTEN:
                return await streams.enter_async_context(contextlib.aclosing(self._lines(step.arg)))
        return await anext(step.arg, None)  # READ_LINE
