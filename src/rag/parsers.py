"""Document readers: plain text / Markdown / HTML directly, PDF and DOCX through RAG-Anything.

RAG-Anything 1.4.3's default parser (MinerU) needs model downloads and a CLI that no longer
matches, and its DOCX path needs LibreOffice, so an ``OfflineParser`` (pypdf + python-docx)
is registered under the name "offline". ``RAGAnything.parse_document`` (raganything/processor.py)
dispatches by extension - ``.pdf`` -> ``parse_pdf``, ``.doc/.docx/...`` -> ``parse_office_doc``,
``.html/.htm`` -> ``parse_html``, images -> ``parse_image`` (falling back to MinerU on
``NotImplementedError``!), anything else -> ``parse_document`` - and runs each in
``asyncio.to_thread``, so the methods here are synchronous.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import re
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from raganything import RAGAnything, RAGAnythingConfig
from raganything.parser import Parser, list_parsers, register_parser

from src.core.config import Settings
from src.rag.text_decoding import TextDecodingError, decode_text_bytes

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})
RAGANYTHING_EXTENSIONS: frozenset[str] = frozenset({".pdf", ".docx"})
SUPPORTED_EXTENSIONS: frozenset[str] = TEXT_EXTENSIONS | RAGANYTHING_EXTENSIONS
HTML_EXTENSIONS: frozenset[str] = frozenset({".html", ".htm"})

OFFLINE_PARSER_NAME = "offline"


class DocumentParseError(ValueError):
    """The document itself is unusable (undecodable, encrypted, corrupt, no text): do not retry."""


# --------------------------------------------------------------------------------------
# Plain text and HTML
# --------------------------------------------------------------------------------------


def decode_text(data: bytes, name: str = "document") -> str:
    """Decode uploaded text bytes (src/rag/text_decoding.py: BOM, then UTF-8, then GB18030 when it
    reads as Chinese, then Windows-1252 for Western text; binary or undecodable → a clear error,
    never mojibake in the knowledge base)."""
    try:
        return decode_text_bytes(data)
    except TextDecodingError as exc:
        raise DocumentParseError(f"{name}: {exc}") from exc


class _VisibleTextParser(HTMLParser):
    """Collects the text a browser would show: no script/style/template/head metadata."""

    _SKIP = frozenset({"script", "style", "noscript", "template", "svg", "head", "iframe", "object"})
    _BLOCK = frozenset(
        {
            "p", "div", "br", "li", "ul", "ol", "tr", "table", "section", "article", "header", "footer",
            "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "hr", "dd", "dt", "title", "main",
            "nav", "aside", "figcaption", "caption", "form", "details", "summary",
        }
    )  # fmt: skip

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title: list[str] = []
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        if tag in self._BLOCK:
            self.parts.append("\n")
        elif tag in {"td", "th"}:
            self.parts.append(" | ")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if self._in_title:
            self.title.append(data)
        elif not self._skip_depth:
            self.parts.append(data)


def _normalize_whitespace(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (title first), one line per block element."""
    parser = _VisibleTextParser()
    parser.feed(html)
    parser.close()
    title = _normalize_whitespace(" ".join(parser.title))
    body = _normalize_whitespace("".join(parser.parts))
    if title and not body.startswith(title):
        return f"{title}\n\n{body}".strip()
    return body


def read_text_document_sync(path: Path) -> str:
    """Synchronous body of :func:`read_text_document` (also used by ``OfflineParser``)."""
    path = Path(path)
    data = path.read_bytes()
    text = decode_text(data, path.name).replace("\r\n", "\n").replace("\r", "\n")
    if path.suffix.lower() in HTML_EXTENSIONS:
        text = html_to_text(text)
    if not text.strip():
        raise DocumentParseError(f"{path.name}: no text content")
    return text


async def read_text_document(path: Path) -> str:
    """Text of a .txt/.md/.markdown/.html/.htm file (decoding and HTML parsing off the event loop).

    Raises ``DocumentParseError`` (permanent) for undecodable or empty content.
    """
    return await asyncio.to_thread(read_text_document_sync, Path(path))


# --------------------------------------------------------------------------------------
# PDF and DOCX for RAG-Anything
# --------------------------------------------------------------------------------------


def _text_block(text: str, page_idx: int) -> dict[str, Any]:
    return {"type": "text", "text": text, "page_idx": page_idx}


def parse_pdf_content(pdf_path: Path) -> list[dict[str, Any]]:
    """One text block per page that has a text layer. No OCR: scanned PDFs are rejected."""
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    pdf_path = Path(pdf_path)
    name = pdf_path.name
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
        except Exception as exc:  # pypdf raises many types on damaged content streams
            failures += 1
            logger.warning("%s: page %d unreadable: %s", name, index + 1, exc)
            continue
        text = _normalize_whitespace(text.replace("\x00", ""))
        if text:
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


def parse_docx_content(doc_path: Path) -> list[dict[str, Any]]:
    """Paragraphs and tables of a .docx in document order, as text blocks (page_idx 0)."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    doc_path = Path(doc_path)
    name = doc_path.name
    try:
        document = docx.Document(str(doc_path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{name}: not a readable .docx ({type(exc).__name__}: {exc})") from exc

    blocks: list[dict[str, Any]] = []
    body = document.element.body
    for child in body.iterchildren():
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            text = Paragraph(child, document).text.strip()
            if text:
                blocks.append(_text_block(text, 0))
        elif tag == "tbl":
            lines = _docx_table_lines(Table(child, document))
            if lines:
                blocks.append(_text_block("\n".join(lines), 0))
    if not blocks:
        raise DocumentParseError(f"{name}: the document contains no text")
    return blocks


class OfflineParser(Parser):
    """RAG-Anything parser that needs no models, no network and no LibreOffice.

    Produces RAG-Anything's content_list format (``[{"type": "text", "text": ..., "page_idx": n}]``)
    with text blocks only, so no multimodal processor (which would need a vision model) runs.
    """

    def check_installation(self) -> bool:
        try:
            import docx  # noqa: F401
            import pypdf  # noqa: F401
        except ImportError:
            return False
        return True

    def parse_pdf(
        self,
        pdf_path: str | Path,
        output_dir: str | None = None,
        method: str = "auto",
        lang: str | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        return parse_pdf_content(Path(pdf_path))

    def parse_office_doc(
        self, doc_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        path = Path(doc_path)
        if path.suffix.lower() != ".docx":
            raise DocumentParseError(f"{path.name}: only .docx office documents are supported offline")
        return parse_docx_content(path)

    def parse_html(self, html_path: str | Path, output_dir: str | None = None, **kwargs: Any) -> list[dict]:
        return [_text_block(read_text_document_sync(Path(html_path)), 0)]

    def parse_text_file(
        self, text_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        return [_text_block(read_text_document_sync(Path(text_path)), 0)]

    def parse_image(
        self, image_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        # Not NotImplementedError: RAG-Anything would then fall back to MinerU (downloads models).
        raise DocumentParseError(f"{Path(image_path).name}: images need OCR, which is not available offline")

    def parse_document(
        self,
        file_path: str | Path,
        method: str = "auto",
        output_dir: str | None = None,
        lang: str | None = None,
        **kwargs: Any,
    ) -> list[dict[str, Any]]:
        path = Path(file_path)
        ext = path.suffix.lower()
        if ext == ".pdf":
            return self.parse_pdf(path, output_dir, method, lang)
        if ext == ".docx":
            return self.parse_office_doc(path, output_dir, lang)
        if ext in TEXT_EXTENSIONS:
            return self.parse_text_file(path, output_dir, lang)
        raise DocumentParseError(f"{path.name}: unsupported file type {ext or '(none)'}")


def register_offline_parser() -> None:
    """Register ``OfflineParser`` as RAG-Anything parser "offline" (idempotent)."""
    if list_parsers().get(OFFLINE_PARSER_NAME) != OfflineParser.__name__:
        register_parser(OFFLINE_PARSER_NAME, OfflineParser)


def build_raganything(rag: LightRAG, settings: Settings) -> RAGAnything:
    """RAG-Anything around an initialised LightRAG, configured to stay offline.

    Text-only: image/table/equation/audio/video processing is off (no vision model), the
    parser is ``OfflineParser``. RAG-Anything registers ``atexit(self.close)``, which would
    keep every instance alive and re-finalise LightRAG's storages in a new event loop at
    exit; that hook is removed - the caller owns the LightRAG instance's lifecycle.
    """
    register_offline_parser()
    parsed_dir = Path(settings.data_dir) / "parsed"
    parsed_dir.mkdir(parents=True, exist_ok=True)
    config = RAGAnythingConfig(
        working_dir=str(rag.working_dir),
        parser=OFFLINE_PARSER_NAME,
        parse_method="txt",
        parser_output_dir=str(parsed_dir),
        display_content_stats=False,
        enable_image_processing=False,
        enable_table_processing=False,
        enable_equation_processing=False,
        enable_audio_processing=False,
        enable_video_processing=False,
        supported_file_extensions=sorted(SUPPORTED_EXTENSIONS),
        use_full_path=False,
    )
    rag_anything = RAGAnything(lightrag=rag, config=config)
    atexit.unregister(rag_anything.close)
    return rag_anything
