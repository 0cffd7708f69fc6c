"""Stream a multipart upload straight to disk, enforcing limits while the bytes arrive.

The body is never spooled in memory or in a temp file first: each chunk from the ASGI
receive channel goes through `streaming-form-data`'s incremental parser and is appended with
aiofiles to the task's partial file (named by `UploadFiles`). The size limit, the file type
(extension and magic bytes), emptiness, exactly one file part, the room left on disk and the
pace of the body (idle timeout, minimum average rate) are checked as the data flows; on any
failure the partial file is removed. Only a complete, valid upload is renamed to its final name, when
its task is submitted.

`receive_batch` streams several ``files`` parts the same way, each under its own task id: a part
that fails its own checks (size, type, content, emptiness, disk) becomes a rejection and the other
parts go on; whatever breaks the body itself (too many parts, too many bytes in all, malformed or
truncated multipart, a stalled client) refuses the whole batch and removes every file of it.
Bytes that are not file data (part headers, boundaries, other fields) are bounded in both.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import unicodedata
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

import aiofiles
import aiofiles.os
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget, ValueTarget

from src.core.body_pace import BodyTimeout, Pace, PaceClock
from src.ingestion.errors import (
    ContentMismatch,
    EmptyUpload,
    IngestionError,
    InsufficientStorage,
    MalformedUpload,
    MissingFilePart,
    MultipleFileParts,
    NotMultipart,
    PartHeadersTooLarge,
    TooLarge,
    TooManyFiles,
    TruncatedUpload,
    UndecodablePartHeader,
    UnsupportedType,
    UploadTimeout,
)
from src.ingestion.files import UploadFiles
from src.rag.parsing.formats import SUPPORTED_EXTENSIONS, magic_mismatch

__all__ = [
    "ReceivedBatch",
    "RejectedFile",
    "SavedUpload",
    "receive_batch",
    "receive_upload",
    "sanitize_filename",
]

#: Room for multipart boundaries, part headers and other fields on top of the file data...
MULTIPART_OVERHEAD = 64 * 1024
#: ...plus this much per file part (its boundary and headers); beyond: 400 part_headers_too_large.
PART_OVERHEAD = 8 * 1024
_MAX_NAME = 200

#: The failures of one file of a batch that leave the other files alone.
_FILE_ERRORS = (TooLarge, UnsupportedType, EmptyUpload, InsufficientStorage)


@dataclass(frozen=True)
class SavedUpload:
    task_id: str
    #: The received file, still under its part name (`UploadFiles.promote` makes it the task's).
    path: Path
    original_name: str
    extension: str
    size: int
    sha256: str
    content_type: str | None
    form_fields: dict[str, str]


def sanitize_filename(raw: str | None) -> str:
    """Keep a display-safe base name: no directories, control chars or NULs, bounded length."""
    name = unicodedata.normalize("NFC", raw or "")
    name = re.split(r"[\\/]", name)[-1]
    name = "".join(ch for ch in name if unicodedata.category(ch)[0] != "C").strip().strip(".")
    if not name:
        return "upload"
    if len(name) > _MAX_NAME:
        stem, ext = os.path.splitext(name)
        name = stem[: _MAX_NAME - len(ext[:16])] + ext[:16]
    return name


def _check_magic(extension: str, head: bytes) -> None:
    """The extension must match the content (a renamed binary is rejected before indexing)."""
    mismatch = magic_mismatch(extension, head)
    if mismatch:
        raise ContentMismatch(mismatch)


class _DiskTarget(BaseTarget):
    """Receives the file part; validates as it goes and appends to the partial file."""

    def __init__(self, part_path: Path, max_bytes: int, files: UploadFiles):
        super().__init__()
        self.part_path = part_path
        self.max_bytes = max_bytes
        self.files = files
        self.parts = 0
        self.size = 0
        self.extension = ""
        self.digest = hashlib.sha256()
        self.finished = False
        self._head = b""
        self._file = None

    async def on_start_async(self) -> None:
        # A second part of the same name would reopen (truncate) the file while size and hash kept
        # counting the first one: the stored document would not be what the record describes.
        self.parts += 1
        if self.parts > 1:
            raise MultipleFileParts("send exactly one 'file' part per upload")
        name = sanitize_filename(self.multipart_filename)
        self.extension = os.path.splitext(name)[1].lower()
        if self.extension not in SUPPORTED_EXTENSIONS:
            allowed = ", ".join(sorted(SUPPORTED_EXTENSIONS))
            shown = self.extension or "(none)"
            raise UnsupportedType(f"unsupported file type {shown}; allowed: {allowed}")
        self._file = await aiofiles.open(self.part_path, "wb")

    async def on_data_received_async(self, chunk: bytes) -> None:
        if not chunk:
            return
        self.size += len(chunk)
        if self.size > self.max_bytes:
            raise TooLarge(f"file exceeds the upload limit of {self.max_bytes} bytes")
        if len(self._head) < 8192:
            self._head += chunk[: 8192 - len(self._head)]
        self.digest.update(chunk)
        await self.files.check_room(len(chunk))
        assert self._file is not None
        await self._file.write(chunk)
        self.files.grew(len(chunk))

    async def on_finish_async(self) -> None:
        self.finished = True
        await self.close()

    async def close(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None

    @property
    def part_bytes(self) -> int:
        """Bytes of file data received (the rest of the body is overhead, and bounded)."""
        return self.size

    async def store(self, task_id: str, form_fields: dict[str, str]) -> SavedUpload:
        """The checks that need the whole file. The file keeps its part name (this instance's) until
        its task is submitted: a crash before that leaves nothing that looks like a task's upload."""
        if self.size == 0:
            raise EmptyUpload("the uploaded file is empty")
        _check_magic(self.extension, self._head)
        return SavedUpload(
            task_id=task_id,
            path=self.part_path,
            original_name=sanitize_filename(self.multipart_filename),
            extension=self.extension,
            size=self.size,
            sha256=self.digest.hexdigest(),
            content_type=self.multipart_content_type,
            form_fields=form_fields,
        )

    async def discard(self) -> None:
        """Close and remove the partial file (a failed part)."""
        await self.close()
        await self.files.remove_path(self.part_path)


@dataclass(frozen=True)
class RejectedFile:
    """A file of a batch refused by its own checks; ``error`` says why (as /insert would)."""

    filename: str
    error: IngestionError


@dataclass
class ReceivedBatch:
    saved: list[SavedUpload] = field(default_factory=list)
    rejected: list[RejectedFile] = field(default_factory=list)


class _BatchTarget(BaseTarget):
    """Receives every file part of a batch, each through its own `_DiskTarget` under a new task id.

    A part that fails its own checks is rejected (its partial file removed, the rest of its bytes
    skipped) and the next part starts afresh; more parts than ``max_files`` refuse the batch."""

    def __init__(
        self, files: UploadFiles, new_task_id: Callable[[], str], max_bytes: int, max_files: int
    ) -> None:
        super().__init__()
        self.files = files
        self.new_task_id = new_task_id
        self.max_bytes = max_bytes
        self.max_files = max_files
        self.parts = 0
        #: Every byte of file parts, stored or skipped.
        self.part_bytes = 0
        self.in_part = False
        self.received = ReceivedBatch()
        self._current: _DiskTarget | None = None
        self._task_id = ""

    async def on_start_async(self) -> None:
        self.parts += 1
        if self.parts > self.max_files:
            raise TooManyFiles(f"a batch takes at most {self.max_files} files; send the rest in another")
        self.in_part = True
        self._task_id = self.new_task_id()
        target = _DiskTarget(self.files.part_path(self._task_id), self.max_bytes, self.files)
        # The parser names each part on this target; the content type arrives after the start.
        target.multipart_filename, self.multipart_filename = self.multipart_filename, None
        self.multipart_content_type = None
        self._current = target
        try:
            await target.on_start_async()
        except _FILE_ERRORS as exc:
            await self._reject(exc)

    async def on_data_received_async(self, chunk: bytes) -> None:
        self.part_bytes += len(chunk)
        if self._current is None:  # a rejected part: skip the rest of it
            return
        try:
            await self._current.on_data_received_async(chunk)
        except _FILE_ERRORS as exc:
            await self._reject(exc)

    async def on_finish_async(self) -> None:
        self.in_part = False
        target = self._current
        if target is None:
            return
        target.multipart_content_type = self.multipart_content_type
        await target.on_finish_async()
        try:
            saved = await target.store(self._task_id, {})
        except _FILE_ERRORS as exc:
            await self._reject(exc)
            return
        self._current = None
        self.received.saved.append(saved)

    async def _reject(self, exc: IngestionError) -> None:
        target, self._current = self._current, None
        assert target is not None
        await target.discard()
        self.received.rejected.append(RejectedFile(sanitize_filename(target.multipart_filename), exc))

    async def discard_all(self) -> None:
        """The batch is refused as a whole: nothing of it stays on disk."""
        if self._current is not None:
            await self._current.discard()
            self._current = None
        for saved in self.received.saved:
            await self.files.remove_path(saved.path)


async def _paced(body: AsyncIterator[bytes], pace: Pace) -> AsyncIterator[bytes]:
    """``body``, but a stalled or too slow client raises UploadTimeout instead of holding the
    connection and its partial file open forever."""
    chunks = body.__aiter__()
    clock = PaceClock(pace)
    while True:
        try:
            chunk = await clock.next(chunks.__anext__())
        except StopAsyncIteration:
            return
        except BodyTimeout as exc:
            raise UploadTimeout(f"{exc.message}; upload aborted") from None
        clock.add(len(chunk))
        yield chunk


def _open_parser(headers: dict[str, str], limit: int, hint: str) -> StreamingFormDataParser:
    """Refuse what can be refused before the body is read: not multipart, a declared length over
    ``limit``, no usable boundary."""
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise NotMultipart(hint)
    declared = _declared_length(headers)
    if declared > limit:
        raise TooLarge(f"request body exceeds the limit of {limit} bytes")
    try:
        return StreamingFormDataParser(headers=headers)
    except ParseFailedException as exc:
        raise MalformedUpload(f"malformed multipart request: {exc}") from exc


def _declared_length(headers: dict[str, str]) -> int:
    declared = headers.get("content-length")
    return int(declared) if declared and declared.isdigit() else 0


async def _feed(
    parser: StreamingFormDataParser,
    body: AsyncIterator[bytes],
    target: _DiskTarget | _BatchTarget,
    pace: Pace,
    *,
    limit: int,
    limit_message: str,
) -> None:
    """Push the whole body through the parser: at most ``limit`` bytes, and the bytes that are not
    file data (part headers, boundaries, other fields, which the parser buffers or drops) at most
    MULTIPART_OVERHEAD plus PART_OVERHEAD per file part."""
    received = 0
    async for chunk in _paced(body, pace):
        received += len(chunk)
        if received > limit:
            raise TooLarge(limit_message)
        try:
            await parser.adata_received(chunk)
        except ParseFailedException as exc:
            raise MalformedUpload(f"malformed multipart request: {exc}") from exc
        except UnicodeDecodeError as exc:  # the parser decodes part headers strictly
            raise UndecodablePartHeader(
                "a part header (e.g. a filename) is not valid UTF-8; send filenames UTF-8 encoded (RFC 7578)"
            ) from exc
        allowed = MULTIPART_OVERHEAD + target.parts * PART_OVERHEAD
        if received - target.part_bytes > allowed:
            raise PartHeadersTooLarge(
                f"part headers and non-file fields exceed {allowed} bytes; send only file parts"
            )


async def receive_upload(
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    files: UploadFiles,
    task_id: str,
    *,
    max_bytes: int,
    field: str = "file",
    extra_fields: tuple[str, ...] = (),
    pace: Pace = Pace(),
) -> SavedUpload:
    """Parse ``body`` as multipart/form-data and store the ``field`` part as the upload of ``task_id``."""
    limit = max_bytes + MULTIPART_OVERHEAD
    parser = _open_parser(headers, limit, f"send the document as multipart/form-data with a '{field}' field")
    await files.check_room(_declared_length(headers))

    target = _DiskTarget(files.part_path(task_id), max_bytes, files)
    parser.register(field, target)
    values = {name: ValueTarget() for name in extra_fields}
    for name, value_target in values.items():
        parser.register(name, value_target)
    try:
        message = f"request body exceeds the upload limit of {max_bytes} bytes"
        await _feed(parser, body, target, pace, limit=limit, limit_message=message)
        if target.multipart_filename is None and not target.finished and target.size == 0:
            raise MissingFilePart(f"the request has no '{field}' file part")
        if not target.finished:
            raise TruncatedUpload("the multipart body ended before the file part was complete")
        fields = {name: v.value.decode("utf-8", "replace") for name, v in values.items() if v.value}
        return await target.store(task_id, fields)
    except BaseException:
        await target.discard()
        raise


async def receive_batch(
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    files: UploadFiles,
    *,
    new_task_id: Callable[[], str],
    max_bytes: int,
    max_files: int,
    max_total_bytes: int,
    field: str = "files",
    pace: Pace = Pace(),
) -> ReceivedBatch:
    """Parse ``body`` as multipart/form-data and store each ``field`` part under a new task id.

    Each file obeys ``max_bytes`` and the checks of `receive_upload` on its own (a failure becomes a
    `RejectedFile`); the body obeys ``max_files`` parts and ``max_total_bytes`` in all, or nothing is
    kept. Other fields are ignored (their bytes count as overhead)."""
    hint = f"send the documents as multipart/form-data with one '{field}' part per file"
    parser = _open_parser(headers, max_total_bytes, hint)
    await files.check_room(_declared_length(headers))

    target = _BatchTarget(files, new_task_id, max_bytes, max_files)
    parser.register(field, target)
    try:
        message = f"request body exceeds the batch limit of {max_total_bytes} bytes"
        await _feed(parser, body, target, pace, limit=max_total_bytes, limit_message=message)
        if target.parts == 0:
            raise MissingFilePart(f"the request has no '{field}' file part")
        if target.in_part:
            raise TruncatedUpload("the multipart body ended before the last file part was complete")
    except BaseException:
        await target.discard_all()
        raise
    return target.received


def _copy_hashing(source: Path, target: Path, max_bytes: int) -> tuple[int, str, bytes]:
    """Copy ``source`` to ``target`` (blocking): its size, SHA-256 and first 8 KiB."""
    digest, size, head = hashlib.sha256(), 0, b""
    with source.open("rb") as src, target.open("wb") as dst:
        while chunk := src.read(1024 * 1024):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"file exceeds the upload limit of {max_bytes} bytes")
            if len(head) < 8192:
                head += chunk[: 8192 - len(head)]
            digest.update(chunk)
            dst.write(chunk)
    return size, digest.hexdigest(), head


async def adopt_file(source: Path, files: UploadFiles, task_id: str, *, max_bytes: int) -> SavedUpload:
    """A file already on this machine (the input directory) as an upload: the checks of `/insert`
    (type, size, content), copied into the uploads directory so the task owns its copy."""
    name = sanitize_filename(source.name)
    extension = os.path.splitext(name)[1].lower()
    if extension not in SUPPORTED_EXTENSIONS:
        raise UnsupportedType(f"unsupported file type {extension or '(none)'}")
    declared = (await asyncio.to_thread(source.stat)).st_size
    if declared > max_bytes:
        raise TooLarge(f"file exceeds the upload limit of {max_bytes} bytes")
    if declared == 0:
        raise EmptyUpload("the file is empty")
    await files.check_room(declared)
    part = files.part_path(task_id)
    try:
        size, sha256, head = await asyncio.to_thread(_copy_hashing, source, part, max_bytes)
        _check_magic(extension, head)
    except BaseException:
        await files.remove_path(part)
        raise
    files.grew(size)
    return SavedUpload(task_id, part, name, extension, size, sha256, None, {})
