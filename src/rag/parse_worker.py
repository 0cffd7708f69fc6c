"""PDF and DOCX text extraction, run in a child process per document (`python -I parse_worker.py`).

Why a process: a hostile document (a DOCX whose 1 MB zip expands to 1 GB, a PDF with a bomb
stream) made the service grow by over a gigabyte per upload and stalled its event loop. Here the
parse runs under an address-space limit (RLIMIT_AS) and a wall-clock limit enforced by the parent
(`src.rag.parsers.run_isolated`), which also kills it when the task is cancelled; a DOCX whose zip
members expand past a total size or compression ratio is refused before anything is inflated;
the extracted text is capped. This module imports only the standard library, pypdf and
python-docx, so a child starts in well under a second; the parent's import of it is as cheap.

Protocol: argv = kind ("pdf"|"docx"), path, JSON limits. Exit 0 with the content list as JSON on
stdout; exit 2 with a user-facing reason on stderr (the document is unusable: do not retry);
exit 3 when the memory limit was hit.
"""

from __future__ import annotations

import json
import logging
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

EXIT_REJECTED = 2
EXIT_MEMORY = 3
#: Members smaller than this are not held to the compression-ratio limit (small XML parts of
#: real documents compress very well; only large members can hurt).
RATIO_MIN_MEMBER_BYTES = 1024 * 1024


class DocumentParseError(ValueError):
    """The document itself is unusable (undecodable, encrypted, corrupt, no text, over a limit):
    do not retry."""


def _text_block(text: str, page_idx: int) -> dict[str, Any]:
    return {"type": "text", "text": text, "page_idx": page_idx}


def normalize_whitespace(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


class _TextBudget:
    """Counts extracted characters; past the limit the parse stops (MAX_EXTRACTED_CHARS)."""

    def __init__(self, name: str, limit: int | None) -> None:
        self.name, self.limit, self.used = name, limit, 0

    def take(self, text: str) -> None:
        self.used += len(text)
        if self.limit is not None and self.used > self.limit:
            raise DocumentParseError(
                f"{self.name}: the document holds more than {self.limit:,} characters of text "
                "(MAX_EXTRACTED_CHARS)"
            )


def check_zip_bounds(path: Path, max_expanded_bytes: int, max_ratio: float) -> None:
    """Refuse a zip (DOCX) whose members would expand past the limits, from its central directory
    alone (nothing is inflated). Raises DocumentParseError."""
    name = Path(path).name
    try:
        with zipfile.ZipFile(path) as archive:
            members = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{name}: not a readable .docx (not a valid zip archive)") from exc
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


def parse_pdf_content(pdf_path: Path, max_chars: int | None = None) -> list[dict[str, Any]]:
    """One text block per page that has a text layer. No OCR: scanned PDFs are rejected."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    pdf_path = Path(pdf_path)
    name = pdf_path.name
    budget = _TextBudget(name, max_chars)
    try:
        reader = PdfReader(str(pdf_path), strict=False)
        if reader.is_encrypted:
            try:
                if not reader.decrypt(""):
                    raise DocumentParseError(f"{name}: PDF is password-protected")
            except (FileNotDecryptedError, NotImplementedError) as exc:
                raise DocumentParseError(f"{name}: PDF is encrypted and cannot be opened: {exc}") from exc
        pages = list(reader.pages)
    except DocumentParseError:
        raise
    except (PdfReadError, ValueError, KeyError, TypeError, AttributeError, OSError, IndexError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{name}: not a readable PDF ({type(exc).__name__}: {exc})") from exc

    blocks: list[dict[str, Any]] = []
    failures = 0
    for index, page in enumerate(pages):
        try:
            text = page.extract_text() or ""
        except MemoryError:
            raise
        except Exception as exc:  # pypdf raises many types on damaged content streams
            failures += 1
            logger.warning("%s: page %d unreadable: %s", name, index + 1, exc)
            continue
        text = normalize_whitespace(text.replace("\x00", ""))
        if text:
            budget.take(text)
            blocks.append(_text_block(text, index))
    if not blocks:
        reason = (
            f"{failures} unreadable page(s)" if failures else "no text layer (scanned? OCR is not available)"
        )
        raise DocumentParseError(f"{name}: no extractable text in {len(pages)} page(s): {reason}")
    return blocks


def _docx_table_lines(table: Any) -> list[str]:
    lines: list[str] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # merged cells repeat the same element
                continue
            previous = cell._tc
            cells.append(re.sub(r"\s+", " ", cell.text).strip())
        if any(cells):
            lines.append(" | ".join(cells))
    return lines


def parse_docx_content(doc_path: Path, max_chars: int | None = None) -> list[dict[str, Any]]:
    """Paragraphs and tables of a .docx in document order, as text blocks (page_idx 0)."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    doc_path = Path(doc_path)
    name = doc_path.name
    budget = _TextBudget(name, max_chars)
    try:
        document = docx.Document(str(doc_path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        # Not the exception text: python-docx's names the file by its full server path.
        raise DocumentParseError(f"{name}: not a readable .docx ({type(exc).__name__})") from exc

    blocks: list[dict[str, Any]] = []
    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            text = Paragraph(child, document).text.strip()
            if text:
                budget.take(text)
                blocks.append(_text_block(text, 0))
        elif tag == "tbl":
            lines = _docx_table_lines(Table(child, document))
            if lines:
                text = "\n".join(lines)
                budget.take(text)
                blocks.append(_text_block(text, 0))
    if not blocks:
        raise DocumentParseError(f"{name}: the document contains no text")
    return blocks


def _limit_memory(max_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def main(argv: list[str]) -> int:
    kind, path_arg, limits_json = argv[1], argv[2], argv[3]
    limits = json.loads(limits_json)
    path = Path(path_arg)
    try:
        _limit_memory(int(limits["memory_bytes"]))
        if kind == "docx":
            check_zip_bounds(path, int(limits["max_expanded_bytes"]), float(limits["max_compression_ratio"]))
            blocks = parse_docx_content(path, int(limits["max_chars"]))
        elif kind == "pdf":
            blocks = parse_pdf_content(path, int(limits["max_chars"]))
        else:
            raise DocumentParseError(f"{path.name}: unsupported document kind {kind!r}")
        sys.stdout.write(json.dumps(blocks, ensure_ascii=False))
        sys.stdout.flush()
        return 0
    except MemoryError:
        sys.stderr.write(f"{path.name}: parsing needs more than {int(limits['memory_bytes']):,} bytes")
        return EXIT_MEMORY
    except DocumentParseError as exc:
        sys.stderr.write(str(exc))
        return EXIT_REJECTED
    except Exception as exc:  # anything else the libraries raise on a hostile file
        if "memory" in str(exc).lower():  # lxml reports allocation failures as its own errors
            sys.stderr.write(f"{path.name}: parsing needs more than {int(limits['memory_bytes']):,} bytes")
            return EXIT_MEMORY
        sys.stderr.write(f"{path.name}: could not be parsed ({type(exc).__name__})")
        return EXIT_REJECTED


if __name__ == "__main__":
    sys.exit(main(sys.argv))
