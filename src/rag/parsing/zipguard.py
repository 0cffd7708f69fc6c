"""Zip containers (DOCX, PPTX, XLSX, ODT, EPUB, content-list bundles) without zip bombs.

The central directory says how large each member expands; a container whose members would expand
past a total size, or a large member compressed more than a ratio, is refused before anything is
inflated. Members are then read with a size cap, in case the directory lies.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

from src.rag.parsing.content import DocumentParseError

#: Members smaller than this are not held to the compression-ratio limit (small XML parts of real
#: documents compress very well; only large members can hurt).
RATIO_MIN_MEMBER_BYTES = 1024 * 1024


def check_zip_bounds(path: Path, max_expanded_bytes: int, max_ratio: float) -> None:
    """Raise DocumentParseError if the archive is unreadable or would expand past the limits."""
    name = Path(path).name
    kind = Path(path).suffix.lower().lstrip(".") or "zip"
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{name}: not a readable .{kind} (not a valid zip archive)") from exc
    total = 0
    for member in members:
        total += member.file_size
        if total > max_expanded_bytes:
            raise DocumentParseError(
                f"{name}: its zip members expand to more than {max_expanded_bytes:,} bytes "
                "(MAX_EXPANDED_BYTES); refusing a possible zip bomb"
            )
        if member.file_size >= RATIO_MIN_MEMBER_BYTES:
            ratio = member.file_size / max(1, member.compress_size)
            if ratio > max_ratio:
                raise DocumentParseError(
                    f"{name}: a zip member is compressed {ratio:,.0f}:1, more than {max_ratio:g}:1 "
                    "(MAX_COMPRESSION_RATIO); refusing a possible zip bomb"
                )


def read_member(archive: zipfile.ZipFile, member: str, max_bytes: int) -> bytes:
    """A member's bytes, refusing more than ``max_bytes`` whatever the directory claimed."""
    with archive.open(member) as fh:
        data = fh.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise DocumentParseError(f"{member}: expands past {max_bytes:,} bytes (MAX_EXPANDED_BYTES)")
    return data
