"""Document readers: plain text / Markdown / HTML directly, PDF and DOCX through RAG-Anything.

RAG-Anything 1.4.3's default parser (MinerU) needs model downloads and a CLI that no longer
matches, and its DOCX path needs LibreOffice, so an ``OfflineParser`` (pypdf + python-docx)
is registered under the name "offline". ``RAGAnything.parse_document`` (raganything/processor.py)
dispatches by extension - ``.pdf`` -> ``parse_pdf``, ``.doc/.docx/...`` -> ``parse_office_doc``,
``.html/.htm`` -> ``parse_html``, images -> ``parse_image`` (falling back to MinerU on
``NotImplementedError``!), anything else -> ``parse_document`` - and runs each in
``asyncio.to_thread``, so the methods here are synchronous. PDF and DOCX are parsed in a child
process per document (``run_isolated``, src/rag/parse_worker.py) so a hostile file can neither grow
this process nor stall it; errors name the file, never a server path.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from raganything import RAGAnything, RAGAnythingConfig
from raganything.parser import Parser, list_parsers, register_parser

from src.core.config import Settings
from src.core.scrub import scrub_paths
from src.rag.parse_worker import (
    EXIT_MEMORY,
    EXIT_REJECTED,
    DocumentParseError,
    _text_block,
    check_zip_bounds,
    normalize_whitespace,
    parse_docx_content,  # noqa: F401  (re-exported: in-process parsing for tools and tests)
    parse_pdf_content,  # noqa: F401
)
from src.rag.text_decoding import TextDecodingError, decode_text_bytes

logger = logging.getLogger(__name__)

TEXT_EXTENSIONS: frozenset[str] = frozenset({".txt", ".md", ".markdown", ".html", ".htm"})
RAGANYTHING_EXTENSIONS: frozenset[str] = frozenset({".pdf", ".docx"})
SUPPORTED_EXTENSIONS: frozenset[str] = TEXT_EXTENSIONS | RAGANYTHING_EXTENSIONS
HTML_EXTENSIONS: frozenset[str] = frozenset({".html", ".htm"})

OFFLINE_PARSER_NAME = "offline"


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


def html_to_text(html: str) -> str:
    """Visible text of an HTML page (title first), one line per block element."""
    parser = _VisibleTextParser()
    parser.feed(html)
    parser.close()
    title = normalize_whitespace(" ".join(parser.title))
    body = normalize_whitespace("".join(parser.parts))
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


#: Bounds of one isolated parse; `configure_parse_limits` sets them from the settings.
@dataclass(frozen=True)
class ParseLimits:
    max_expanded_bytes: int = 200 * 1024 * 1024
    max_compression_ratio: float = 100.0
    max_chars: int = 20_000_000
    memory_bytes: int = 1536 * 1024 * 1024
    timeout_seconds: float = 300.0


_limits = ParseLimits()
_WORKER = Path(__file__).with_name("parse_worker.py")
#: Live parse processes by the path they parse, so a cancelled task can kill its own (`abort_parse`).
_live: dict[str, set[subprocess.Popen]] = {}
_live_lock = threading.Lock()


def configure_parse_limits(settings: Settings) -> None:
    global _limits
    _limits = ParseLimits(
        max_expanded_bytes=settings.max_expanded_bytes,
        max_compression_ratio=settings.max_compression_ratio,
        max_chars=settings.max_extracted_chars,
        memory_bytes=settings.parse_memory_bytes,
        timeout_seconds=settings.parse_timeout_seconds,
    )


def run_isolated(kind: str, path: Path, limits: ParseLimits | None = None) -> list[dict[str, Any]]:
    """Parse a PDF/DOCX in a child process (src/rag/parse_worker.py) under memory, time and text
    limits; blocking, so RAG-Anything calls it in a thread. Raises DocumentParseError."""
    limits = limits or _limits
    path = Path(path)
    name = path.name
    if not path.is_file():
        raise FileNotFoundError(name)
    if kind == "docx":  # cheap (central directory only): refuse a bomb without starting a process
        check_zip_bounds(path, limits.max_expanded_bytes, limits.max_compression_ratio)
    args = {
        "max_expanded_bytes": limits.max_expanded_bytes,
        "max_compression_ratio": limits.max_compression_ratio,
        "max_chars": limits.max_chars,
        "memory_bytes": limits.memory_bytes,
    }
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LC_ALL": "C.UTF-8", "PYTHONIOENCODING": "utf-8"}
    proc = subprocess.Popen(
        [sys.executable, "-I", str(_WORKER), kind, str(path), json.dumps(args)],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    key = str(path.resolve())
    with _live_lock:
        _live.setdefault(key, set()).add(proc)
    try:
        out, err = proc.communicate(timeout=limits.timeout_seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise DocumentParseError(
            f"{name}: parsing took longer than {limits.timeout_seconds:g} s (PARSE_TIMEOUT_SECONDS)"
        ) from None
    finally:
        with _live_lock:
            procs = _live.get(key)
            if procs is not None:
                procs.discard(proc)
                if not procs:
                    del _live[key]
    message = err.decode("utf-8", "replace").strip()[-2000:]
    if proc.returncode == 0:
        return json.loads(out)
    if proc.returncode == EXIT_REJECTED:
        raise DocumentParseError(scrub_paths(message, {str(path): name}))
    if proc.returncode == EXIT_MEMORY:
        raise DocumentParseError(f"{name}: parsing needs more memory than PARSE_MEMORY_BYTES allows")
    if proc.returncode == -signal.SIGKILL:
        raise DocumentParseError(f"{name}: parsing was stopped")
    raise DocumentParseError(
        f"{name}: the parse process failed (exit {proc.returncode}; memory limit PARSE_MEMORY_BYTES?)"
    )


def abort_parse(path: Path) -> int:
    """Kill the parse processes working on ``path`` (its task was cancelled); returns how many."""
    with _live_lock:
        procs = list(_live.get(str(Path(path).resolve()), ()))
    for proc in procs:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    logger.info("aborted %d parse process(es) of %s", len(procs), Path(path).name)
    return len(procs)


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
        return run_isolated("pdf", Path(pdf_path))

    def parse_office_doc(
        self, doc_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> list[dict[str, Any]]:
        path = Path(doc_path)
        if path.suffix.lower() != ".docx":
            raise DocumentParseError(f"{path.name}: only .docx office documents are supported offline")
        return run_isolated("docx", path)

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
    configure_parse_limits(settings)
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
