"""RAG-Anything's parser framework, with this service's offline parser registered as "offline".

RAG-Anything 1.4.3's parsers (MinerU, Docling, PaddleOCR) need model weights that are downloaded
from model hubs, and its DOCX path needs LibreOffice; ``OfflineParser`` needs neither: it parses
every supported format (src/rag/parsing/) into RAG-Anything's content list in a bounded child
process, reading scanned pages and pictures with the offline OCR. ``RAGAnything.parse_document``
(raganything/processor.py) dispatches by extension - ``.pdf`` -> ``parse_pdf``, images ->
``parse_image`` (falling back to MinerU on ``NotImplementedError``, hence never raised here),
``.html`` -> ``parse_html``, office formats -> ``parse_office_doc``, anything else ->
``parse_document`` - in ``asyncio.to_thread``, so the methods here are synchronous.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from raganything import RAGAnything, RAGAnythingConfig
from raganything.parser import Parser, list_parsers, register_parser

from src.core.config import Settings
from src.rag.parsing.content import ContentList, DocumentParseError, text_item
from src.rag.parsing.formats import (
    HTML_EXTENSIONS,
    ISOLATED_EXTENSIONS,
    SUPPORTED_EXTENSIONS,
    TEXT_LIKE_EXTENSIONS,
    kind_of,
)
from src.rag.parsing.isolated import abort_parse, run_isolated
from src.rag.parsing.limits import ParseLimits
from src.rag.parsing.text import decode_text, html_to_text, read_text_document_sync

__all__ = [
    "HTML_EXTENSIONS",
    "OFFLINE_PARSER_NAME",
    "RAGANYTHING_EXTENSIONS",
    "SUPPORTED_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "DocumentParseError",
    "OfflineParser",
    "abort_parse",
    "build_raganything",
    "configure_parse_limits",
    "decode_text",
    "html_to_text",
    "parse_file",
    "read_text_document",
    "register_offline_parser",
]

logger = logging.getLogger(__name__)

#: Read directly (decoded text; HTML's visible text).
TEXT_EXTENSIONS: frozenset[str] = TEXT_LIKE_EXTENSIONS | HTML_EXTENSIONS
#: Parsed through RAG-Anything's framework, in a child process.
RAGANYTHING_EXTENSIONS: frozenset[str] = ISOLATED_EXTENSIONS

OFFLINE_PARSER_NAME = "offline"

_limits = ParseLimits()
_default_out_dir = Path("./data/parsed")


def configure_parse_limits(settings: Settings) -> None:
    """Parse bounds and the default image directory from the settings (once per process)."""
    global _limits, _default_out_dir
    _limits = ParseLimits(
        max_expanded_bytes=settings.max_expanded_bytes,
        max_compression_ratio=settings.max_compression_ratio,
        max_chars=settings.max_extracted_chars,
        memory_bytes=settings.parse_memory_bytes,
        timeout_seconds=settings.parse_timeout_seconds,
        max_image_pixels=settings.max_image_pixels,
        max_images=settings.max_images_per_document,
        max_table_cells=settings.max_table_cells,
        max_ocr_pages=settings.max_ocr_pages,
        ocr_threads=settings.ocr_threads,
        ocr_pictures=not settings.vision_configured,
    )
    _default_out_dir = Path(settings.data_dir) / "parsed"


def parse_limits() -> ParseLimits:
    """The bounds every parse child of this process runs under (from the settings)."""
    return _limits


def parse_file(path: Path, out_dir: Path | None = None, on_progress: Any = None) -> ContentList:
    """Any supported file → content list (blocking; rich formats in a child process)."""
    path = Path(path)
    kind = kind_of(path.suffix)
    if kind in ("text", "html"):
        return [text_item(read_text_document_sync(path), 0)]
    return run_isolated(kind, path, Path(out_dir or _default_out_dir / path.stem), _limits, on_progress)


async def read_text_document(path: Path) -> str:
    """Text of a text-like or HTML file (decoding and HTML parsing off the event loop).

    Raises ``DocumentParseError`` (permanent) for undecodable or empty content.
    """
    return await asyncio.to_thread(read_text_document_sync, Path(path))


class OfflineParser(Parser):
    """RAG-Anything parser that needs no model download, no network and no LibreOffice."""

    def check_installation(self) -> bool:
        try:
            import docx  # noqa: F401
            import pypdf  # noqa: F401
            import rapidocr_onnxruntime  # noqa: F401
        except ImportError:
            return False
        return True

    @staticmethod
    def _out(path: Path, output_dir: str | None) -> Path | None:
        return Path(output_dir) / path.stem if output_dir else None

    def parse_pdf(
        self,
        pdf_path: str | Path,
        output_dir: str | None = None,
        method: str = "auto",
        lang: str | None = None,
        **kwargs: Any,
    ) -> ContentList:
        path = Path(pdf_path)
        return parse_file(path, self._out(path, output_dir), kwargs.get("on_progress"))

    def parse_office_doc(
        self, doc_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> ContentList:
        path = Path(doc_path)
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise DocumentParseError(
                f"{path.name}: {path.suffix} is not supported offline (save it as .docx, .pptx or .xlsx)"
            )
        return parse_file(path, self._out(path, output_dir), kwargs.get("on_progress"))

    def parse_image(
        self, image_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> ContentList:
        # Never NotImplementedError: RAG-Anything would then fall back to MinerU (downloads models).
        path = Path(image_path)
        return parse_file(path, self._out(path, output_dir), kwargs.get("on_progress"))

    def parse_html(self, html_path: str | Path, output_dir: str | None = None, **kwargs: Any) -> ContentList:
        return parse_file(Path(html_path))

    def parse_text_file(
        self, text_path: str | Path, output_dir: str | None = None, lang: str | None = None, **kwargs: Any
    ) -> ContentList:
        return parse_file(Path(text_path))

    def parse_document(
        self,
        file_path: str | Path,
        method: str = "auto",
        output_dir: str | None = None,
        lang: str | None = None,
        **kwargs: Any,
    ) -> ContentList:
        path = Path(file_path)
        if path.suffix.lower() not in SUPPORTED_EXTENSIONS:
            raise DocumentParseError(f"{path.name}: unsupported file type {path.suffix.lower() or '(none)'}")
        return parse_file(path, self._out(path, output_dir), kwargs.get("on_progress"))


def register_offline_parser() -> None:
    """Register ``OfflineParser`` as RAG-Anything parser "offline" (idempotent)."""
    if list_parsers().get(OFFLINE_PARSER_NAME) != OfflineParser.__name__:
        register_parser(OFFLINE_PARSER_NAME, OfflineParser)


def build_raganything(rag: LightRAG, settings: Settings, vision_func: Any = None) -> RAGAnything:
    """RAG-Anything around an initialised LightRAG, with ``OfflineParser`` (or ``PARSER``).

    Our tasks use it to parse (``parse_document``) and for its multimodal chunk template and
    queries; they describe pictures, tables and equations themselves (src/rag/engine/modal.py).
    Its own pipeline (``process_document_complete``, ``insert_content_list``) keeps table and
    equation processing on, and picture processing when a vision model is configured; audio and
    video are off. RAG-Anything registers ``atexit(self.close)``, which would keep every instance
    alive and re-finalise LightRAG's storages in a new event loop at exit; that hook is removed -
    the caller owns the LightRAG instance's lifecycle.
    """
    register_offline_parser()
    configure_parse_limits(settings)
    parsed_dir = Path(settings.data_dir) / "parsed"
    parsed_dir.mkdir(parents=True, exist_ok=True)
    config = RAGAnythingConfig(
        working_dir=str(rag.working_dir),
        parser=OFFLINE_PARSER_NAME if settings.parser == OFFLINE_PARSER_NAME else settings.parser,
        parse_method="txt",
        parser_output_dir=str(parsed_dir),
        display_content_stats=False,
        enable_image_processing=vision_func is not None,
        enable_table_processing=True,
        enable_equation_processing=True,
        enable_audio_processing=False,
        enable_video_processing=False,
        supported_file_extensions=sorted(SUPPORTED_EXTENSIONS),
        use_full_path=False,
    )
    rag_anything = RAGAnything(lightrag=rag, config=config, vision_model_func=vision_func)
    atexit.unregister(rag_anything.close)
    return rag_anything
