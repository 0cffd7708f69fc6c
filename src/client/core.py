"""The sans-I/O core of the client: requests are built and answers decoded here, never sent.

Errors, decoding of answers (JSON, error bodies, NDJSON pieces), `Call` (one request to send and
how to decode its answer) and `Settings` (URL, API key, admin token). `operations.py` builds Calls
from these, `sse.py` drives waiting; the httpx shells (sync.py, aio.py) only send. Nothing here
opens a socket; the only file access is opening an upload's path lazily (closed by the shell).
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, TypedDict
from urllib.parse import quote

__all__ = [
    "DEFAULT_URL",
    "FINAL_STATUSES",
    "QUERY_MODES",
    "BatchFile",
    "BatchOptions",
    "Call",
    "RagApiError",
    "RagConnectionError",
    "RagError",
    "RagTimeoutError",
    "Settings",
    "decode_error",
    "decode_json",
    "Json",
    "QueryOptions",
    "SubmitOptions",
    "TextOptions",
    "ndjson_piece",
]

DEFAULT_URL = "http://127.0.0.1:8000"
USER_AGENT = "ragsvc-client/0.2"
FINAL_STATUSES = frozenset({"completed", "failed", "cancelled"})
QUERY_MODES = ("naive", "local", "global", "hybrid", "mix")

FileInput = str | os.PathLike[str] | bytes | IO[bytes]
Json = dict[str, Any]


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


class RagConnectionError(RagError):
    """The service could not be reached (``refused``), or the connection broke or timed out."""

    def __init__(self, message: str, *, refused: bool = False) -> None:
        super().__init__(message)
        #: True when no connection was made at all (then waiting falls back to polling at once).
        self.refused = refused


class RagTimeoutError(RagError, TimeoutError):
    """`wait_for` gave up before the task reached a final status; ``task`` is the last view seen."""

    def __init__(self, task_id: str, timeout: float, task: Json | None) -> None:
        status = f" (last status: {task.get('status')}, stage: {task.get('stage')})" if task else ""
        super().__init__(f"task {task_id} not finished after {timeout:g}s{status}")
        self.task_id = task_id
        self.task = task


# --- decoding answers -----------------------------------------------------------------------------


def decode_error(status: int, content: bytes, reason: str = "") -> RagApiError:
    """The service's ``{"detail", "code"}`` body as an exception; tolerate proxies' non-JSON bodies."""
    try:
        body: Any = json.loads(content) if content else None
    except ValueError:
        body = None
    if isinstance(body, dict) and "detail" in body:
        detail = body["detail"]
        if not isinstance(detail, str):
            detail = json.dumps(detail)
        return RagApiError(status, str(body.get("code") or f"http_{status}"), detail, body)
    text = content.decode("utf-8", "replace").strip()
    return RagApiError(status, f"http_{status}", text[:500] if text else (reason or "error"), body)


def decode_json(status: int, content: bytes, reason: str = "") -> Any:
    """A 2xx answer's JSON body, or raise `RagApiError`."""
    if 200 <= status < 300:
        return json.loads(content)
    raise decode_error(status, content, reason)


def decode_health(status: int, content: bytes, reason: str = "") -> Any:
    """A degraded service answers 503 with a health body: that is a report, not an error."""
    if status == 503:
        try:
            body = json.loads(content)
        except ValueError:
            body = None
        if isinstance(body, dict) and "status" in body:
            return body
    return decode_json(status, content, reason)


def ndjson_piece(line: str) -> str | None:
    """One line of ``/query/stream``: its text piece, or raise the error reported in-band."""
    if not line.strip():
        return None
    item = json.loads(line)
    if "error" in item:
        raise RagApiError(502, "stream_error", str(item["error"]), item)
    return item.get("response") or None


def is_content_type(headers: Mapping[str, str], expected: str) -> bool:
    return headers.get("content-type", "").startswith(expected)


# --- building requests ----------------------------------------------------------------------------


@dataclass
class Call:
    """One request to send and how to decode its answer; owns the upload handle it opened, if any."""

    method: str
    path: str
    params: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    json: Any = None
    files: dict[str, tuple[str, Any]] | list[tuple[str, tuple[str, Any]]] | None = None
    decode: Callable[[int, bytes, str], Any] = decode_json
    handle: IO[bytes] | None = None
    #: The upload handles of a batch (several files), closed with the call like ``handle``.
    handles: list[IO[bytes]] = field(default_factory=list)
    #: Longest silence between two bytes of the answer (None: the client's timeout); event streams
    #: use it to notice a dead connection before the caller's deadline.
    read_timeout: float | None = None

    def httpx_kwargs(self) -> dict[str, Any]:
        """The arguments of ``httpx.Client.request`` / ``stream`` (no I/O here)."""
        kwargs: dict[str, Any] = {"method": self.method, "url": self.path, "headers": self.headers}
        if self.params:
            kwargs["params"] = self.params
        if self.json is not None:
            kwargs["json"] = self.json
        if self.files is not None:
            kwargs["files"] = self.files
        return kwargs

    def close(self) -> None:
        for handle in (self.handle, *self.handles):
            if handle is not None:
                handle.close()


def task_path(task_id: str) -> str:
    return f"/task/{path_segment(task_id)}"


def path_segment(value: str) -> str:
    """A path segment: ids are escaped so that '/' or '?' in them cannot reach another endpoint."""
    return quote(value, safe="")


def drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


def upload_part(
    source: FileInput, filename: str | None
) -> tuple[dict[str, tuple[str, Any]], IO[bytes] | None]:
    """The multipart ``files`` of an upload: a path is opened here and streamed by httpx in chunks,
    never read into memory; bytes and file objects are sent as they are."""
    if isinstance(source, bytes | bytearray):
        if not filename:
            raise ValueError("filename is required when uploading bytes (its extension selects the parser)")
        return {"file": (filename, bytes(source))}, None
    if isinstance(source, str | os.PathLike):
        path = Path(source)
        handle = path.open("rb")
        return {"file": (filename or path.name, handle)}, handle
    name = filename or Path(getattr(source, "name", "") or "").name
    if not name:
        raise ValueError("filename is required for a file object without a name")
    return {"file": (name, source)}, None


#: One document of a batch: a path, or (filename, bytes or binary file object).
BatchFile = str | os.PathLike[str] | tuple[str, FileInput]


def batch_parts(sources: Iterable[BatchFile]) -> tuple[list[tuple[str, tuple[str, Any]]], list[IO[bytes]]]:
    """The multipart ``files`` parts of a batch (one per document, each as `upload_part` builds it)
    and the handles opened for paths (closed by the shell, or here if building fails)."""
    parts: list[tuple[str, tuple[str, Any]]] = []
    handles: list[IO[bytes]] = []
    try:
        for source in sources:
            filename, data = source if isinstance(source, tuple) else (None, source)
            files, handle = upload_part(data, filename)
            parts.append(("files", files["file"]))
            if handle is not None:
                handles.append(handle)
    except BaseException:
        for handle in handles:
            handle.close()
        raise
    if not parts:
        raise ValueError("a batch needs at least one document")
    return parts, handles


def new_idempotency_key() -> str:
    """A fresh key for callers that want safe retries but have no natural key of their own."""
    return uuid.uuid4().hex


class SubmitOptions(TypedDict, total=False):
    """Keyword options of `upload` and `insert_text`."""

    #: 0 (bulk) .. 9 (interactive); higher runs first (server default 5).
    priority: int
    #: POST a signed JSON event here when the task ends.
    callback_url: str
    #: Retries with the same key return the same task instead of queueing another.
    idempotency_key: str
    #: Seconds (0-60) the service may hold the answer until the new task ends: the final task view
    #: (``status`` completed/failed/cancelled) if it does, else the usual acceptance (``pending``...).
    wait: float


class BatchOptions(TypedDict, total=False):
    """Keyword options of `batch_upload` (they apply to every document of the batch)."""

    #: 0 (bulk) .. 9 (interactive); higher runs first (server default 5).
    priority: int
    #: POST a signed JSON event here when each task ends.
    callback_url: str


class TextOptions(SubmitOptions, total=False):
    """Keyword options of `insert_text`."""

    #: The label citations show (default: ``<doc_id>.txt``).
    filename: str


class QueryOptions(TypedDict, total=False):
    """Keyword options of `query` and `query_stream` (unset ones are left to the server)."""

    #: naive | local | global | hybrid (default) | mix
    mode: str
    #: Return the retrieved context instead of an answer.
    only_need_context: bool
    top_k: int
    chunk_top_k: int
    #: e.g. "Multiple Paragraphs", "Bullet Points".
    response_type: str


def _checked(options: Mapping[str, Any], allowed: type, where: str) -> dict[str, Any]:
    """Unknown keywords fail as they would in a plain signature (a typo must not be dropped silently)."""
    unknown = set(options) - set(allowed.__annotations__)
    if unknown:
        raise TypeError(f"{where}() got unexpected keyword argument(s): {', '.join(sorted(unknown))}")
    return drop_none(dict(options))


def submission(
    options: Mapping[str, Any], where: str, allowed: type
) -> tuple[dict[str, Any], dict[str, str], dict[str, Any]]:
    """Submit options split into the request's fields (priority, callback_url...), its headers and
    its query-string-only parameters (``wait``)."""
    fields = _checked(options, allowed, where)
    key = fields.pop("idempotency_key", None)
    wait = fields.pop("wait", None)
    return fields, ({"Idempotency-Key": key} if key else {}), ({"wait": wait} if wait else {})


def query_body(query: str, options: Mapping[str, Any], where: str) -> Json:
    """The JSON of ``POST /query`` and ``/query/stream``."""
    defaults = {"query": query, "mode": "hybrid", "only_need_context": False}
    return defaults | _checked(options, QueryOptions, where)


@dataclass
class Settings:
    """Where and as whom to connect; resolved from arguments, then $RAGSVC_URL / $RAGSVC_API_KEY /
    $RAGSVC_ADMIN_TOKEN, then defaults. An explicit empty key means "none" (the env is not used)."""

    base_url: str
    api_key: str | None
    admin_token: str | None

    @classmethod
    def resolve(cls, base_url: str | None, api_key: str | None, admin_token: str | None) -> Settings:
        env = os.environ
        return cls(
            (base_url or env.get("RAGSVC_URL") or DEFAULT_URL).rstrip("/"),
            (api_key if api_key is not None else env.get("RAGSVC_API_KEY")) or None,
            (admin_token if admin_token is not None else env.get("RAGSVC_ADMIN_TOKEN")) or None,
        )

    def headers(self) -> dict[str, str]:
        """Sent with every request; the API key as ``Authorization: Bearer``."""
        headers = {"Accept": "application/json", "User-Agent": USER_AGENT}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        return headers

    def admin_headers(self) -> dict[str, str]:
        """Admin calls authenticate with the service's ADMIN_TOKEN instead of an API key."""
        if not self.admin_token:
            raise ValueError("an admin token is required (admin_token=... or $RAGSVC_ADMIN_TOKEN)")
        return {"Authorization": f"Bearer {self.admin_token}"}
