"""Python clients for the RAG ingestion service: `RagClient` (sync) and `AsyncRagClient` (asyncio).

Both expose the same methods and return the service's JSON bodies as plain dicts::

    from src.client.client import RagClient

    with RagClient("http://127.0.0.1:8000") as rag:
        accepted = rag.upload("report.pdf", doc_id="report-2024")
        final = rag.wait_for(accepted["task_id"], timeout=600, on_update=print)
        print(rag.query("What does the report say about costs?")["response"])

Errors: a non-2xx answer raises `RagApiError` (status code plus the service's ``code`` and
``detail``); a network failure (refused, reset, timed out) raises `RagConnectionError`; `wait_for`
past its timeout raises `RagTimeoutError`. All three derive from `RagError`.

`wait_for` follows a task through Server-Sent Events (``GET /task/{id}/events``) when the server
offers them and resumes a dropped stream with ``Last-Event-ID``; when the endpoint answers 404/405
(or anything that is not an event stream), or the stream keeps dropping, it polls ``GET /task/{id}``
with a backoff from 0.2 s to 2 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "AsyncRagClient",
    "RagApiError",
    "RagClient",
    "RagConnectionError",
    "RagError",
    "RagTimeoutError",
]

DEFAULT_URL = "http://127.0.0.1:8000"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
QUERY_MODES = ("naive", "local", "global", "hybrid", "mix")

#: Polling backoff of `wait_for` when Server-Sent Events are not available.
POLL_INITIAL_SECONDS = 0.2
POLL_MAX_SECONDS = 2.0
POLL_FACTOR = 1.5
#: Longest silence tolerated on an event stream before it counts as dropped (and is resumed).
SSE_IDLE_SECONDS = 60.0
#: Consecutive event-stream connections that deliver no event before `wait_for` switches to polling.
SSE_MAX_BARREN_CONNECTS = 2

FileInput = str | os.PathLike[str] | bytes | IO[bytes]
UpdateCallback = Callable[[dict[str, Any]], Any]


# --- errors ---------------------------------------------------------------------------------------


class RagError(Exception):
    """Base class of every error raised by the clients."""


class RagApiError(RagError):
    """The service answered with an error status; built from its JSON body ``{"detail", "code"}``."""

    def __init__(self, status_code: int, code: str, detail: str, body: Any = None) -> None:
        super().__init__(f"{status_code} {code}: {detail}")
        self.status_code = status_code
        self.code = code
        self.detail = detail
        #: The whole decoded error body (may carry extra fields such as ``task_id`` or ``errors``).
        self.body = body

    @classmethod
    def from_response(cls, response: httpx.Response) -> RagApiError:
        """Decode the service's error body; tolerate non-JSON bodies from proxies."""
        try:
            body: Any = response.json()
        except ValueError:
            body = None
        if isinstance(body, dict) and "detail" in body:
            detail = body["detail"]
            if not isinstance(detail, str):
                detail = json.dumps(detail)
            code = str(body.get("code") or f"http_{response.status_code}")
        else:
            text = response.text.strip()
            detail = text[:500] if text else (response.reason_phrase or "error")
            code = f"http_{response.status_code}"
        return cls(response.status_code, code, detail, body)


class RagConnectionError(RagError):
    """The service could not be reached, or the connection failed or timed out mid-request."""


class RagTimeoutError(RagError, TimeoutError):
    """`wait_for` gave up before the task reached a final status; ``task`` is the last view seen."""

    def __init__(self, task_id: str, timeout: float, task: dict[str, Any] | None) -> None:
        status = f" (last status: {task.get('status')}, stage: {task.get('stage')})" if task else ""
        super().__init__(f"task {task_id} not finished after {timeout:g}s{status}")
        self.task_id = task_id
        self.task = task


# --- shared helpers -------------------------------------------------------------------------------


def _parse(response: httpx.Response) -> Any:
    if response.is_success:
        return response.json()
    raise RagApiError.from_response(response)


@contextlib.contextmanager
def _transport_errors(base_url: str) -> Iterator[None]:
    try:
        yield
    except httpx.TransportError as exc:
        raise RagConnectionError(f"cannot reach {base_url}: {type(exc).__name__}: {exc}") from exc


def _query_body(
    query: str, mode: str, only_need_context: bool, top_k: int | None, chunk_top_k: int | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"query": query, "mode": mode, "only_need_context": only_need_context}
    if top_k is not None:
        body["top_k"] = top_k
    if chunk_top_k is not None:
        body["chunk_top_k"] = chunk_top_k
    return body


def _ndjson_piece(line: str) -> str | None:
    """One line of ``/query/stream``: its text piece, or raise the error reported in-band."""
    if not line.strip():
        return None
    item = json.loads(line)
    if "error" in item:
        raise RagApiError(502, "stream_error", str(item["error"]), item)
    return item.get("response") or None


@dataclass
class _Upload:
    """An upload's multipart ``files`` argument; owns the file handle it opened (if any)."""

    files: dict[str, tuple[str, Any]]
    handle: IO[bytes] | None = None

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


def _prepare_upload(source: FileInput, filename: str | None) -> _Upload:
    """Open a path lazily-streamed (httpx reads it in 64 KB chunks), or wrap bytes / a file object."""
    if isinstance(source, bytes | bytearray):
        if not filename:
            raise ValueError("filename is required when uploading bytes (its extension selects the parser)")
        return _Upload({"file": (filename, bytes(source))})
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        handle = path.open("rb")
        return _Upload({"file": (filename or path.name, handle)}, handle)
    name = filename or Path(getattr(source, "name", "") or "").name
    if not name:
        raise ValueError("filename is required for a file object without a name")
    return _Upload({"file": (name, source)})


@dataclass
class _SseEvent:
    event: str
    data: str
    id: str | None


@dataclass
class _SseParser:
    """Incremental text/event-stream parser (the WHATWG rules that matter here)."""

    last_event_id: str | None = None
    retry_ms: int | None = None
    _event: str = ""
    _data: list[str] = field(default_factory=list)

    def feed(self, line: str) -> _SseEvent | None:
        if line == "":
            if not self._data:
                self._event = ""
                return None
            event = _SseEvent(self._event or "message", "\n".join(self._data), self.last_event_id)
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


class _Waiter:
    """State of one `wait_for`: deadline, last view, resume point, change detection."""

    def __init__(self, task_id: str, timeout: float | None) -> None:
        self.task_id = task_id
        self.timeout = timeout
        self.deadline = None if timeout is None else time.monotonic() + timeout
        self.last: dict[str, Any] | None = None
        self.last_event_id: str | None = None
        self._key: tuple | None = None

    def remaining(self) -> float | None:
        return None if self.deadline is None else self.deadline - time.monotonic()

    def check(self) -> None:
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            raise RagTimeoutError(self.task_id, self.timeout or 0.0, self.last)

    def record(self, view: dict[str, Any]) -> bool:
        """Remember the view; True if it differs from the previous one (then callers notify)."""
        self.last = view
        key = (view.get("status"), view.get("stage"), view.get("progress"), view.get("updated_at"))
        changed = key != self._key
        self._key = key
        return changed

    def sse_timeout(self, base: httpx.Timeout) -> httpx.Timeout:
        remaining = self.remaining()
        read = SSE_IDLE_SECONDS if remaining is None else max(0.01, min(SSE_IDLE_SECONDS, remaining))
        return httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)

    def sse_headers(self) -> dict[str, str]:
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-cache"}
        if self.last_event_id:
            headers["Last-Event-ID"] = self.last_event_id
        return headers

    def sleep_for(self, seconds: float) -> float:
        remaining = self.remaining()
        return seconds if remaining is None else max(0.0, min(seconds, remaining))


def _is_event_stream(response: httpx.Response) -> bool:
    return response.is_success and response.headers.get("content-type", "").startswith("text/event-stream")


class _BaseClient:
    def __init__(
        self, base_url: str | None, api_key: str | None, timeout: float | httpx.Timeout | None
    ) -> None:
        self.base_url = (base_url or os.environ.get("RAGSVC_URL") or DEFAULT_URL).rstrip("/")
        self.api_key = api_key if api_key is not None else os.environ.get("RAGSVC_API_KEY") or None
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        self.headers = {"Accept": "application/json", "User-Agent": "ragsvc-client/0.1"}
        if self.api_key:
            self.headers["Authorization"] = f"Bearer {self.api_key}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"


# --- synchronous client ---------------------------------------------------------------------------


class RagClient(_BaseClient):
    """Blocking client on `httpx.Client`. Use as a context manager, or call `close()`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        *,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        """``base_url`` defaults to $RAGSVC_URL or http://127.0.0.1:8000, ``api_key`` to $RAGSVC_API_KEY
        (sent as ``Authorization: Bearer``); ``timeout`` applies per request (seconds)."""
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> RagClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        with _transport_errors(self.base_url):
            response = self._http.request(method, path, **kwargs)
        return _parse(response)

    # ingestion
    def upload(self, file: FileInput, filename: str | None = None, doc_id: str | None = None) -> dict:
        """Upload a document (path, bytes or binary file object); a path is streamed, not read into
        memory. Returns the 202 body: ``task_id``, ``doc_id``, ``filename``, ``file_size``, ..."""
        part = _prepare_upload(file, filename)
        try:
            params = {"doc_id": doc_id} if doc_id else None
            return self._request("POST", "/insert", params=params, files=part.files)
        finally:
            part.close()

    def insert_text(self, text: str, doc_id: str | None = None, filename: str | None = None) -> dict:
        """Queue raw text for indexing; returns the 202 body."""
        body: dict[str, Any] = {"text": text}
        if doc_id:
            body["doc_id"] = doc_id
        if filename:
            body["filename"] = filename
        return self._request("POST", "/insert/text", json=body)

    # tasks
    def task(self, task_id: str) -> dict:
        """One task's view: status, stage, progress, timestamps, result or error."""
        return self._request("GET", f"/task/{task_id}")

    def tasks(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        """Recent tasks, newest first: ``{"total", "offset", "limit", "tasks": [...]}``."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return self._request("GET", "/tasks", params=params)

    def cancel(self, task_id: str) -> dict:
        """Cancel a pending task (409 `task_running` / `task_finished` otherwise)."""
        return self._request("DELETE", f"/task/{task_id}")

    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        *,
        use_sse: bool = True,
    ) -> dict:
        """Block until the task is completed, failed or cancelled and return its final view.

        ``on_update(view)`` is called for each new view (status/stage/progress change). Uses
        Server-Sent Events when available, else polls with backoff; raises `RagTimeoutError`
        after ``timeout`` seconds (None: wait forever)."""
        waiter = _Waiter(task_id, timeout)
        if use_sse:
            final = self._wait_sse(waiter, on_update)
            if final is not None:
                return final
        return self._wait_poll(waiter, on_update)

    def _notify(self, waiter: _Waiter, view: dict, on_update: UpdateCallback | None) -> None:
        if waiter.record(view) and on_update is not None:
            on_update(view)

    def _wait_sse(self, waiter: _Waiter, on_update: UpdateCallback | None) -> dict | None:
        """Follow the event stream; None means "switch to polling"."""
        barren = 0
        parser = _SseParser()
        while True:
            waiter.check()
            got_event = False
            try:
                with self._http.stream(
                    "GET",
                    f"/task/{waiter.task_id}/events",
                    headers=waiter.sse_headers(),
                    timeout=waiter.sse_timeout(self.timeout),
                ) as response:
                    if not _is_event_stream(response):
                        return None  # 404/405: no SSE here; other errors: polling reports them
                    parser = _SseParser(last_event_id=waiter.last_event_id)
                    for line in response.iter_lines():
                        event = parser.feed(line)
                        if event is None or event.event not in ("task", "message"):
                            continue
                        got_event = True
                        waiter.last_event_id = parser.last_event_id
                        view = json.loads(event.data)
                        self._notify(waiter, view, on_update)
                        if view.get("status") in FINAL_STATUSES:
                            return view
                        waiter.check()
            except httpx.ConnectError:
                return None
            except httpx.TransportError:
                pass  # dropped: resume with Last-Event-ID below
            barren = 0 if got_event else barren + 1
            if barren >= SSE_MAX_BARREN_CONNECTS:
                return None
            retry = (parser.retry_ms or 200) / 1000
            time.sleep(waiter.sleep_for(min(retry, POLL_MAX_SECONDS)))

    def _wait_poll(self, waiter: _Waiter, on_update: UpdateCallback | None) -> dict:
        delay = POLL_INITIAL_SECONDS
        while True:
            view = self.task(waiter.task_id)
            self._notify(waiter, view, on_update)
            if view.get("status") in FINAL_STATUSES:
                return view
            waiter.check()
            time.sleep(waiter.sleep_for(delay))
            waiter.check()
            delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)

    # query
    def query(
        self,
        query: str,
        mode: str = "hybrid",
        only_need_context: bool = False,
        top_k: int | None = None,
        chunk_top_k: int | None = None,
    ) -> dict:
        """Ask the knowledge base: ``{"response", "mode", "only_need_context", "llm"}``."""
        body = _query_body(query, mode, only_need_context, top_k, chunk_top_k)
        return self._request("POST", "/query", json=body)

    def query_stream(
        self,
        query: str,
        mode: str = "hybrid",
        only_need_context: bool = False,
        top_k: int | None = None,
        chunk_top_k: int | None = None,
    ) -> Iterator[str]:
        """Ask the knowledge base and yield the answer's text pieces as they arrive (NDJSON)."""
        body = _query_body(query, mode, only_need_context, top_k, chunk_top_k)
        with (
            _transport_errors(self.base_url),
            self._http.stream("POST", "/query/stream", json=body, headers={"Accept": "*/*"}) as response,
        ):
            if not response.is_success:
                response.read()
                raise RagApiError.from_response(response)
            for line in response.iter_lines():
                piece = _ndjson_piece(line)
                if piece:
                    yield piece

    # documents and service
    def document(self, doc_id: str) -> dict:
        """LightRAG's status record of one document."""
        return self._request("GET", f"/documents/{doc_id}")

    def delete_document(self, doc_id: str) -> dict:
        """Remove a document and its chunks, entities and relations from the knowledge base."""
        return self._request("DELETE", f"/documents/{doc_id}")

    def health(self, admin_token: str | None = None) -> dict:
        """Health report; a degraded service (HTTP 503 with a health body) is returned, not raised.
        Only ``{"status"}`` unless ``admin_token`` (the service's ADMIN_TOKEN) is given or the
        service runs with HEALTH_DETAILS=public."""
        with _transport_errors(self.base_url):
            response = self._http.get("/health", headers=_admin_headers(admin_token))
        return _health_body(response)

    def stats(self) -> dict:
        """Task counts per status, pending queue length, running tasks and capacity."""
        return self._request("GET", "/api/queue/stats")


def _admin_headers(admin_token: str | None) -> dict[str, str] | None:
    return {"Authorization": f"Bearer {admin_token}"} if admin_token else None


def _health_body(response: httpx.Response) -> dict:
    if response.status_code == 503:
        with contextlib.suppress(ValueError):
            body = response.json()
            if isinstance(body, dict) and "status" in body:
                return body
    return _parse(response)


# --- asynchronous client --------------------------------------------------------------------------


class AsyncRagClient(_BaseClient):
    """asyncio client on `httpx.AsyncClient`, same methods as `RagClient` (awaitable)."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        """See `RagClient`; ``transport`` allows e.g. ``httpx.ASGITransport(app)`` in tests."""
        super().__init__(base_url, api_key, timeout)
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=self.timeout, transport=transport
        )

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncRagClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def _request(self, method: str, path: str, **kwargs: Any) -> Any:
        with _transport_errors(self.base_url):
            response = await self._http.request(method, path, **kwargs)
        return _parse(response)

    # ingestion
    async def upload(self, file: FileInput, filename: str | None = None, doc_id: str | None = None) -> dict:
        """Upload a document (path, bytes or binary file object); a path is streamed from disk in
        64 KB chunks (blocking reads on the loop, like httpx does). Returns the 202 body."""
        part = _prepare_upload(file, filename)
        try:
            params = {"doc_id": doc_id} if doc_id else None
            return await self._request("POST", "/insert", params=params, files=part.files)
        finally:
            part.close()

    async def insert_text(self, text: str, doc_id: str | None = None, filename: str | None = None) -> dict:
        """Queue raw text for indexing; returns the 202 body."""
        body: dict[str, Any] = {"text": text}
        if doc_id:
            body["doc_id"] = doc_id
        if filename:
            body["filename"] = filename
        return await self._request("POST", "/insert/text", json=body)

    # tasks
    async def task(self, task_id: str) -> dict:
        """One task's view."""
        return await self._request("GET", f"/task/{task_id}")

    async def tasks(self, status: str | None = None, limit: int = 50, offset: int = 0) -> dict:
        """Recent tasks, newest first."""
        params: dict[str, Any] = {"limit": limit, "offset": offset}
        if status:
            params["status"] = status
        return await self._request("GET", "/tasks", params=params)

    async def cancel(self, task_id: str) -> dict:
        """Cancel a pending task."""
        return await self._request("DELETE", f"/task/{task_id}")

    async def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,  # noqa: ASYNC109 - same signature as RagClient.wait_for
        on_update: Callable[[dict[str, Any]], Any | Awaitable[Any]] | None = None,
        *,
        use_sse: bool = True,
    ) -> dict:
        """Wait until the task is final and return its last view (see `RagClient.wait_for`);
        ``on_update`` may be a plain function or a coroutine function."""
        waiter = _Waiter(task_id, timeout)
        if use_sse:
            final = await self._wait_sse(waiter, on_update)
            if final is not None:
                return final
        return await self._wait_poll(waiter, on_update)

    async def _notify(self, waiter: _Waiter, view: dict, on_update: UpdateCallback | None) -> None:
        if waiter.record(view) and on_update is not None:
            result = on_update(view)
            if inspect.isawaitable(result):
                await result

    async def _wait_sse(self, waiter: _Waiter, on_update: UpdateCallback | None) -> dict | None:
        barren = 0
        parser = _SseParser()
        while True:
            waiter.check()
            got_event = False
            try:
                async with self._http.stream(
                    "GET",
                    f"/task/{waiter.task_id}/events",
                    headers=waiter.sse_headers(),
                    timeout=waiter.sse_timeout(self.timeout),
                ) as response:
                    if not _is_event_stream(response):
                        return None
                    parser = _SseParser(last_event_id=waiter.last_event_id)
                    async for line in response.aiter_lines():
                        event = parser.feed(line)
                        if event is None or event.event not in ("task", "message"):
                            continue
                        got_event = True
                        waiter.last_event_id = parser.last_event_id
                        view = json.loads(event.data)
                        await self._notify(waiter, view, on_update)
                        if view.get("status") in FINAL_STATUSES:
                            return view
                        waiter.check()
            except httpx.ConnectError:
                return None
            except httpx.TransportError:
                pass
            barren = 0 if got_event else barren + 1
            if barren >= SSE_MAX_BARREN_CONNECTS:
                return None
            retry = (parser.retry_ms or 200) / 1000
            await asyncio.sleep(waiter.sleep_for(min(retry, POLL_MAX_SECONDS)))

    async def _wait_poll(self, waiter: _Waiter, on_update: UpdateCallback | None) -> dict:
        delay = POLL_INITIAL_SECONDS
        while True:
            view = await self.task(waiter.task_id)
            await self._notify(waiter, view, on_update)
            if view.get("status") in FINAL_STATUSES:
                return view
            waiter.check()
            await asyncio.sleep(waiter.sleep_for(delay))
            waiter.check()
            delay = min(delay * POLL_FACTOR, POLL_MAX_SECONDS)

    # query
    async def query(
        self,
        query: str,
        mode: str = "hybrid",
        only_need_context: bool = False,
        top_k: int | None = None,
        chunk_top_k: int | None = None,
    ) -> dict:
        """Ask the knowledge base."""
        body = _query_body(query, mode, only_need_context, top_k, chunk_top_k)
        return await self._request("POST", "/query", json=body)

    async def query_stream(
        self,
        query: str,
        mode: str = "hybrid",
        only_need_context: bool = False,
        top_k: int | None = None,
        chunk_top_k: int | None = None,
    ) -> AsyncIterator[str]:
        """Ask the knowledge base; an async iterator of the answer's text pieces (NDJSON)."""
        body = _query_body(query, mode, only_need_context, top_k, chunk_top_k)
        with _transport_errors(self.base_url):
            async with self._http.stream(
                "POST", "/query/stream", json=body, headers={"Accept": "*/*"}
            ) as response:
                if not response.is_success:
                    await response.aread()
                    raise RagApiError.from_response(response)
                async for line in response.aiter_lines():
                    piece = _ndjson_piece(line)
                    if piece:
                        yield piece

    # documents and service
    async def document(self, doc_id: str) -> dict:
        """LightRAG's status record of one document."""
        return await self._request("GET", f"/documents/{doc_id}")

    async def delete_document(self, doc_id: str) -> dict:
        """Remove a document from the knowledge base."""
        return await self._request("DELETE", f"/documents/{doc_id}")

    async def health(self, admin_token: str | None = None) -> dict:
        """Health report (a degraded 503 body is returned, not raised)."""
        with _transport_errors(self.base_url):
            response = await self._http.get("/health", headers=_admin_headers(admin_token))
        return _health_body(response)

    async def stats(self) -> dict:
        """Task counts per status and capacity."""
        return await self._request("GET", "/api/queue/stats")
