"""Stream a multipart upload straight to disk, enforcing limits while the bytes arrive.

The body is never spooled in memory or in a temp file first: each chunk from the ASGI
receive channel goes through `streaming-form-data`'s incremental parser and is appended with
aiofiles to the task's partial file (named by `UploadFiles`). The size limit, the file type
(extension and magic bytes) and emptiness are checked as the data flows; on any failure the
partial file is removed. Only a complete, valid upload is renamed to its final name.
"""

from __future__ import annotations

import hashlib
import os
import re
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
    NotMultipart,
    TooLarge,
    TruncatedUpload,
    UnsupportedType,
)
from src.ingestion.files import UploadFiles, remove_file
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

    def __init__(self, part_path: Path, max_bytes: int):
        super().__init__()
        self.part_path = part_path
        self.max_bytes = max_bytes
        self.size = 0
        self.extension = ""
        self.digest = hashlib.sha256()
        self.finished = False
        self._head = b""
        self._file = None

    async def on_start_async(self) -> None:
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
        assert self._file is not None
        await self._file.write(chunk)

    async def on_finish_async(self) -> None:
        self.finished = True
        await self.close()

    async def close(self) -> None:
        if self._file is not None:
            await self._file.close()
            self._file = None


async def receive_upload(
    headers: dict[str, str],
    body: AsyncIterator[bytes],
    files: UploadFiles,
    task_id: str,
    *,
    max_bytes: int,
    field: str = "file",
    extra_fields: tuple[str, ...] = (),
) -> SavedUpload:
    """Parse ``body`` as multipart/form-data and store the ``field`` part as the upload of ``task_id``."""
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

    part_path = files.part_path(task_id)
    target = _DiskTarget(part_path, max_bytes)
    parser.register(field, target)
    values = {name: ValueTarget() for name in extra_fields}
    for name, value_target in values.items():
        parser.register(name, value_target)
    received = 0
    try:
        async for chunk in body:
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
        await remove_file(part_path)
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

