"""Stream a multipart upload straight to disk, enforcing limits while the bytes arrive.

The body is never spooled in memory or in a temp file first: each chunk from the ASGI
receive channel goes through `streaming-form-data`'s incremental parser and is appended with
aiofiles to the task's partial file (named by `UploadFiles`). The size limit, the file type
(extension and magic bytes), emptiness, exactly one file part, the room left on disk and the
pace of the body (idle timeout, minimum average rate) are checked as the data flows; on any
failure the partial file is removed. Only a complete, valid upload is renamed to its final name.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import re
import time
import unicodedata
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
import aiofiles.os
from streaming_form_data import StreamingFormDataParser
from streaming_form_data.parser import ParseFailedException
from streaming_form_data.targets import BaseTarget, ValueTarget

from src.ingestion.errors import (
    ContentMismatch,
    EmptyUpload,
    MalformedUpload,
    MissingFilePart,
    MultipleFileParts,
    NotMultipart,
    TooLarge,
    TruncatedUpload,
    UnsupportedType,
    UploadTimeout,
)
from src.ingestion.files import UploadFiles
from src.rag.parsers import SUPPORTED_EXTENSIONS

__all__ = ["SavedUpload", "receive_upload", "sanitize_filename"]

#: Room for multipart boundaries and part headers on top of the file itself.
MULTIPART_OVERHEAD = 64 * 1024
_MAX_NAME = 200


@dataclass(frozen=True)
class SavedUpload:
    task_id: str
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
    if extension == ".pdf" and b"%PDF-" not in head[:1024]:
        raise ContentMismatch("file has a .pdf extension but is not a PDF")
    if extension == ".docx" and not head.startswith(b"PK\x03\x04"):
        raise ContentMismatch("file has a .docx extension but is not a DOCX (zip) file")
    if (
        extension not in (".pdf", ".docx")
        and b"\x00" in head[:8192]
        and not head.startswith((b"\xff\xfe", b"\xfe\xff"))
    ):
        raise ContentMismatch(f"file has a {extension} extension but contains binary data")


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


async def _paced(
    body: AsyncIterator[bytes], idle_timeout: float, min_rate: float, grace: float
) -> AsyncIterator[bytes]:
    """``body``, but a stalled or too slow client raises UploadTimeout instead of holding the
    connection and its partial file open forever."""
    chunks = body.__aiter__()
    start = time.monotonic()
    received = 0
    while True:
        idle = idle_timeout or None
        rate_left = None
        if min_rate:
            # The moment the running average would fall below min_rate if nothing else arrived.
            rate_left = max(grace, received / min_rate) - (time.monotonic() - start)
        wait = min((t for t in (idle, rate_left) if t is not None), default=None)
        try:
            async with asyncio.timeout(None if wait is None else max(wait, 0.0)):
                chunk = await chunks.__anext__()
        except StopAsyncIteration:
            return
        except TimeoutError:
            if rate_left is not None and wait == rate_left:
                raise UploadTimeout(
                    f"the request body arrived slower than {min_rate:g} bytes/s; upload aborted"
                ) from None
            raise UploadTimeout(
                f"no request body data for {idle_timeout:g} s; upload aborted"
            ) from None
        received += len(chunk)
        yield chunk


async def receive_upload(
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    files: UploadFiles,
    task_id: str,
    *,
    max_bytes: int,
    field: str = "file",
    extra_fields: tuple[str, ...] = (),
    idle_timeout: float = 0.0,
    min_bytes_per_second: float = 0.0,
    rate_grace_seconds: float = 0.0,
) -> SavedUpload:
    """Parse ``body`` as multipart/form-data and store the ``field`` part as the upload of ``task_id``.

    ``idle_timeout`` (0 = none) bounds the wait for each piece of the body; after
    ``rate_grace_seconds`` the body must also have averaged ``min_bytes_per_second`` (0 = no floor).
    """
    content_type = headers.get("content-type", "")
    if not content_type.lower().startswith("multipart/form-data"):
        raise NotMultipart("send the document as multipart/form-data with a 'file' field")
    declared = headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes + MULTIPART_OVERHEAD:
        raise TooLarge(f"request body exceeds the upload limit of {max_bytes} bytes")
    try:
        parser = StreamingFormDataParser(headers=headers)
    except ParseFailedException as exc:
        raise MalformedUpload(f"malformed multipart request: {exc}") from exc

    await files.check_room(int(declared) if declared and declared.isdigit() else 0)

    part_path = files.part_path(task_id)
    target = _DiskTarget(part_path, max_bytes, files)
    parser.register(field, target)
    values = {name: ValueTarget() for name in extra_fields}
    for name, value_target in values.items():
        parser.register(name, value_target)
    received = 0
    try:
        async for chunk in _paced(body, idle_timeout, min_bytes_per_second, rate_grace_seconds):
            received += len(chunk)
            if received > max_bytes + MULTIPART_OVERHEAD:
                raise TooLarge(f"request body exceeds the upload limit of {max_bytes} bytes")
            try:
                await parser.adata_received(chunk)
            except ParseFailedException as exc:
                raise MalformedUpload(f"malformed multipart request: {exc}") from exc
        if target.multipart_filename is None and not target.finished and target.size == 0:
            raise MissingFilePart(f"the request has no '{field}' file part")
        if not target.finished:
            raise TruncatedUpload("the multipart body ended before the file part was complete")
        if target.size == 0:
            raise EmptyUpload("the uploaded file is empty")
        _check_magic(target.extension, target._head)
        final_path = files.final_path(task_id, target.extension)
        await aiofiles.os.replace(part_path, final_path)
    except BaseException:
        await target.close()
        await files.remove_path(part_path)
        raise
    return SavedUpload(
        task_id=task_id,
        path=final_path,
        original_name=sanitize_filename(target.multipart_filename),
        extension=target.extension,
        size=target.size,
        sha256=target.digest.hexdigest(),
        content_type=target.multipart_content_type,
        form_fields={name: v.value.decode("utf-8", "replace") for name, v in values.items() if v.value},
    )

