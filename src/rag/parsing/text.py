"""Text formats: plain text and source files (decoded), HTML (its visible text), RTF (striprtf)."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path

from src.rag.parsing.content import ContentList, DocumentParseError, normalize_whitespace, text_item
from src.rag.parsing.formats import HTML_EXTENSIONS
from src.rag.parsing.job import ParseJob
from src.rag.text_decoding import TextDecodingError, decode_text_bytes


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
    """The text of a text-like or HTML file. Raises DocumentParseError for undecodable or empty
    content."""
    path = Path(path)
    data = path.read_bytes()
    text = decode_text(data, path.name).replace("\r\n", "\n").replace("\r", "\n")
    if path.suffix.lower() in HTML_EXTENSIONS:
        text = html_to_text(text)
    if not text.strip():
        raise DocumentParseError(f"{path.name}: no text content")
    return text


def parse_rtf(job: ParseJob) -> ContentList:
    from striprtf.striprtf import rtf_to_text

    path = job.path
    raw = decode_text(path.read_bytes(), path.name)
    try:
        text = normalize_whitespace(rtf_to_text(raw, errors="ignore"))
    except Exception as exc:  # striprtf on malformed control words
        raise DocumentParseError(f"{path.name}: not readable as RTF ({type(exc).__name__})") from None
    if not text:
        raise DocumentParseError(f"{path.name}: the document contains no text")
    job.budget.take(text)
    return [text_item(text, 0)]
