"""Every operation of the HTTP API, written once for both clients.

Each method builds a `Call` (core.py) or a step generator (sse.py) and hands it to the shell:
``_call`` for one request, ``_pieces`` for a streamed answer, ``_drive`` for a run of steps.
`RagClient` (sync.py) implements them over ``httpx.Client`` and `AsyncRagClient` (aio.py) over
``httpx.AsyncClient``; ``Out`` is then ``dict`` or an awaitable of it, ``Pieces`` an iterator or
an async iterator of text. So a new option is added in one place and both colours get it.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from .core import (
    BatchFile,
    BatchOptions,
    Call,
    FileInput,
    QueryOptions,
    Settings,
    SubmitOptions,
    TextOptions,
    batch_parts,
    decode_health,
    drop_none,
    path_segment,
    query_body,
    submission,
    task_path,
    upload_part,
)
from .sse import Steps, wait_steps

if TYPE_CHECKING:  # typed **options; nothing is needed at run time (a vendored copy stays standalone)
    from typing_extensions import Unpack

__all__ = ["Operations"]

Out = TypeVar("Out")
Pieces = TypeVar("Pieces")
UpdateCallback = Any  # Callable[[dict], Any]; the asyncio client also awaits a coroutine's result


class Operations(Generic[Out, Pieces]):
    """Every non-streaming operation of the HTTP API. ``Out`` is ``dict`` in `RagClient` and an
    awaitable of it in `AsyncRagClient`: the shells differ only in how ``_call`` sends."""

    settings: Settings

    def _call(self, call: Call) -> Out:
        raise NotImplementedError

    def _pieces(self, call: Call) -> Pieces:
        raise NotImplementedError

    def _drive(self, steps: Steps, on_update: UpdateCallback | None) -> Out:
        raise NotImplementedError

    @property
    def base_url(self) -> str:
        return self.settings.base_url

    @property
    def api_key(self) -> str | None:
        return self.settings.api_key

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.base_url!r})"

    # ingestion
    def upload(
        self,
        file: FileInput,
        filename: str | None = None,
        doc_id: str | None = None,
        **options: Unpack[SubmitOptions],
    ) -> Out:
        """Upload a document (path, bytes or binary file object) → the 202 body (``task_id``,
        ``doc_id``, ``status_url``, ``duplicate``...). A path is streamed, never read into memory.
        Options: ``priority``, ``callback_url``, ``idempotency_key``, ``wait`` (see `SubmitOptions`:
        with ``wait=N`` a task that ends within N seconds comes back as its final view, 200)."""
        fields, headers, extra = submission(options, "upload", SubmitOptions)
        files, handle = upload_part(file, filename)
        params = drop_none({"doc_id": doc_id}) | fields | extra
        return self._call(Call("POST", "/insert", params, headers, files=files, handle=handle))

    def insert_text(self, text: str, doc_id: str | None = None, **options: Unpack[TextOptions]) -> Out:
        """Queue raw text for indexing → the 202 body (with ``wait``, maybe the final view). Options
        as `upload`, plus ``filename`` (the label citations show)."""
        fields, headers, extra = submission(options, "insert_text", TextOptions)
        body = {"text": text} | drop_none({"doc_id": doc_id}) | fields
        return self._call(Call("POST", "/insert/text", extra or None, headers, json=body))

    # batches
    def batch_upload(self, files: Iterable[BatchFile], **options: Unpack[BatchOptions]) -> Out:
        """Upload several documents in one request (``POST /batch``) → the 202 body: ``batch_id``,
        ``status_url``, ``tasks`` (one per accepted file: ``filename``, ``task_id``, ``doc_id``,
        ``duplicate``) and ``errors`` (one per refused file, with the ``status_code`` and ``error``
        code ``/insert`` would have answered). Each item is a path (streamed, never read into
        memory) or ``(filename, bytes | file object)``; doc ids come from the content. When no file
        is accepted, `RagApiError` ``batch_rejected`` carries the ``errors`` in its ``body``.
        Options: ``priority``, ``callback_url``."""
        fields, headers, _ = submission(options, "batch_upload", BatchOptions)
        parts, handles = batch_parts(files)
        return self._call(Call("POST", "/batch", fields, headers, files=parts, handles=handles))

    def batch_status(self, batch_id: str) -> Out:
        """A batch's state, read from its tasks: ``counts`` per status (and ``expired``),
        ``progress`` (0-100, finished files at 100), ``done``, ``tasks`` (status, stage, progress,
        error of each file) and the upload's ``errors``."""
        return self._call(Call("GET", f"/batch/{path_segment(batch_id)}"))

    def batch_cancel(self, batch_id: str) -> Out:
        """Cancel every task of the batch still pending or running → per file an ``outcome``
        (cancelled, cancelling, finished, expired); follow ``cancelling`` ones with
        `batch_status` or `wait_for`."""
        return self._call(Call("DELETE", f"/batch/{path_segment(batch_id)}"))

    # tasks
    def task(self, task_id: str) -> Out:
        """One task's view: status, stage, progress, timestamps, history, result or error."""
        return self._call(Call("GET", task_path(task_id)))

    def tasks(self, status: str | None = None, limit: int = 50, offset: int = 0) -> Out:
        """Recent tasks, newest first: ``{"total", "offset", "limit", "tasks": [...]}``."""
        params = {"limit": limit, "offset": offset} | drop_none({"status": status})
        return self._call(Call("GET", "/tasks", params))

    def cancel(self, task_id: str) -> Out:
        """Cancel a task: a pending one is ``cancelled`` at once (200); a running one becomes
        ``cancelling`` (202) while its work is stopped and its partial data removed, then
        ``cancelled`` (follow it with `wait_for`). A finished task answers 409 ``task_finished``."""
        return self._call(Call("DELETE", task_path(task_id)))

    # query
    def query(self, query: str, **options: Unpack[QueryOptions]) -> Out:
        """Ask the knowledge base → ``{"response", "mode", "only_need_context", "llm"}``.
        Options: ``mode``, ``only_need_context``, ``top_k``, ``chunk_top_k``, ``response_type``."""
        return self._call(Call("POST", "/query", json=query_body(query, options, "query")))

    def query_async(
        self,
        query: str,
        *,
        priority: int | None = None,
        callback_url: str | None = None,
        **options: Unpack[QueryOptions],
    ) -> Out:
        """Ask in the background → the 202 body (``task_id``, ``status_url``, ``kind: "query"``).
        Follow it with `wait_for`: the final view's ``result`` holds ``response`` (and ``context``
        with ``only_need_context``); `cancel` stops it. Options as `query`, plus ``priority`` and
        ``callback_url`` (as for uploads)."""
        params = drop_none({"priority": priority, "callback_url": callback_url})
        body = query_body(query, options, "query_async")
        return self._call(Call("POST", "/query/async", params or None, json=body))

    # documents and service
    def documents(self, status: str | None = None, limit: int = 50, offset: int = 0) -> Out:
        """The knowledge base's documents, newest first: ``{"total", "limit", "offset", "counts",
        "documents": [...]}`` (``status``: a LightRAG status such as ``processed`` or ``failed``)."""
        params = {"limit": limit, "offset": offset} | drop_none({"status": status})
        return self._call(Call("GET", "/documents", params))

    def document(self, doc_id: str) -> Out:
        """LightRAG's status record of one document."""
        return self._call(Call("GET", f"/documents/{path_segment(doc_id)}"))

    def delete_document(self, doc_id: str) -> Out:
        """Remove a document and its chunks, entities and relations (409 while it is being indexed)."""
        return self._call(Call("DELETE", f"/documents/{path_segment(doc_id)}"))

    def health(self) -> Out:
        """Health report; a degraded service (HTTP 503 with a health body) is returned, not raised.
        Only ``{"status"}`` unless the client has the admin token (its details: Redis, storage,
        models, tasks) or the service runs with HEALTH_DETAILS=public."""
        headers = self.settings.admin_headers() if self.settings.admin_token else {}
        return self._call(Call("GET", "/health", headers=headers, decode=decode_health))

    def stats(self) -> Out:
        """The caller's task counts per status, pending and running tasks, this instance's capacity."""
        return self._call(Call("GET", "/api/queue/stats"))

    # admin (ADMIN_TOKEN)
    def _admin(self, method: str, path: str, body: Any = None) -> Out:
        return self._call(Call(method, f"/admin{path}", headers=self.settings.admin_headers(), json=body))

    def create_tenant(
        self,
        name: str,
        max_running: int | None = None,
        max_pending: int | None = None,
        requests_per_minute: int | None = None,
    ) -> Out:
        """Create a tenant, or update its quotas (None: the service's default)."""
        body = {"name": name, "max_running": max_running, "max_pending": max_pending}
        return self._admin("POST", "/tenants", body | {"requests_per_minute": requests_per_minute})

    def list_tenants(self) -> Out:
        """``{"tenants": [...]}``: quotas and key counts."""
        return self._admin("GET", "/tenants")

    def create_key(self, tenant: str, label: str = "") -> Out:
        """A new API key for ``tenant``; the plaintext ``api_key`` is in this answer only."""
        return self._admin("POST", f"/tenants/{path_segment(tenant)}/keys", {"label": label})

    def list_keys(self, tenant: str) -> Out:
        """``{"tenant", "keys": [...]}``: ids and labels, never secrets."""
        return self._admin("GET", f"/tenants/{path_segment(tenant)}/keys")

    def revoke_key(self, key_id: str) -> Out:
        """Revoke an API key at once."""
        return self._admin("DELETE", f"/keys/{path_segment(key_id)}")

    # following a task, streaming an answer
    def wait_for(
        self,
        task_id: str,
        timeout: float | None = None,
        on_update: UpdateCallback | None = None,
        *,
        use_sse: bool = True,
    ) -> Out:
        """Wait until the task is completed, failed or cancelled and return its final view.

        ``on_update(view)`` is called for each new view (status/stage/progress change); the asyncio
        client also accepts a coroutine function. Follows Server-Sent Events when the service offers
        them, else polls with backoff; raises `RagTimeoutError` after ``timeout`` seconds (None:
        wait forever)."""
        return self._drive(wait_steps(task_id, timeout, use_sse), on_update)

    def query_stream(self, query: str, **options: Unpack[QueryOptions]) -> Pieces:
        """Ask the knowledge base (options as `query`); iterate over the answer's text pieces as they
        arrive (NDJSON). An error the server reports mid-stream raises `RagApiError` (502)."""
        body = query_body(query, options, "query_stream")
        return self._pieces(Call("POST", "/query/stream", headers={"Accept": "*/*"}, json=body))
