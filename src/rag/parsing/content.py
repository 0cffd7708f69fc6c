"""RAG-Anything's content list: item builders, Markdown tables, and the text a list amounts to.

Item shapes follow MinerU (what ``RAGAnything.insert_content_list`` reads): ``{"type": "text",
"text", "page_idx"}``, ``{"type": "image", "img_path", "image_caption", "image_footnote",
"page_idx"}``, ``{"type": "table", "table_body", "table_caption", "table_footnote", "page_idx"}``,
``{"type": "equation", "text", "text_format", "page_idx"}``. Image items also carry what this
service read off the picture without a vision model: ``ocr_text``, ``width``, ``height`` (extra keys;
RAG-Anything ignores them). Stdlib only (imported by the parse child).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import Any

ContentList = list[dict[str, Any]]


class DocumentParseError(ValueError):
    """The document itself is unusable (undecodable, encrypted, corrupt, no content, over a limit):
    do not retry."""


def normalize_whitespace(text: str) -> str:
    lines = [re.sub(r"[ \t\f\v\u00a0]+", " ", line).strip() for line in text.splitlines()]
    return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def text_item(text: str, page_idx: int) -> dict[str, Any]:
    return {"type": "text", "text": text, "page_idx": page_idx}


def table_item(
    body: str, page_idx: int, caption: Sequence[str] = (), footnote: Sequence[str] = ()
) -> dict[str, Any]:
    return {
        "type": "table",
        "table_body": body,
        "table_caption": list(caption),
        "table_footnote": list(footnote),
        "page_idx": page_idx,
    }


def equation_item(latex: str, page_idx: int) -> dict[str, Any]:
    return {"type": "equation", "text": latex, "text_format": "latex", "page_idx": page_idx}


def image_item(
    img_path: str,
    page_idx: int,
    *,
    width: int,
    height: int,
    ocr_text: str = "",
    caption: Sequence[str] = (),
    footnote: Sequence[str] = (),
) -> dict[str, Any]:
    return {
        "type": "image",
        "img_path": img_path,
        "image_caption": list(caption),
        "image_footnote": list(footnote),
        "page_idx": page_idx,
        "width": width,
        "height": height,
        "ocr_text": ocr_text,
    }


def _cell(value: Any) -> str:
    text = "" if value is None else str(value)
    return re.sub(r"\s+", " ", text).strip().replace("|", "\\|")


def markdown_table(rows: Iterable[Sequence[Any]]) -> str:
    """A Markdown table of ``rows`` (the first is the header); ragged rows are padded."""
    cells = [[_cell(v) for v in row] for row in rows]
    cells = [row for row in cells if any(row)]
    if not cells:
        return ""
    width = max(len(row) for row in cells)
    cells = [row + [""] * (width - len(row)) for row in cells]
    lines = ["| " + " | ".join(cells[0]) + " |", "|" + "---|" * width]
    lines += ["| " + " | ".join(row) + " |" for row in cells[1:]]
    return "\n".join(lines)


class TextBudget:
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


def describe_image(item: dict[str, Any]) -> str:
    """What can honestly be said about an image without a vision model: its size, page, caption,
    footnote and the text OCR read in it."""
    parts = [
        f"Image ({item.get('width', '?')}×{item.get('height', '?')} px, page {item.get('page_idx', 0) + 1})"
    ]
    caption = " ".join(c for c in item.get("image_caption") or [] if c)
    if caption:
        parts.append(f"Caption: {caption}")
    footnote = " ".join(f for f in item.get("image_footnote") or [] if f)
    if footnote:
        parts.append(f"Footnote: {footnote}")
    ocr = (item.get("ocr_text") or "").strip()
    parts.append(f"Text in the image (OCR): {ocr}" if ocr else "No text was found in the image by OCR.")
    return "\n".join(parts)


def item_text(item: dict[str, Any]) -> str:
    """The text one item contributes when indexed as text (no model involved)."""
    kind = item.get("type")
    if kind == "text":
        return str(item.get("text") or "")
    if kind == "table":
        caption = " ".join(item.get("table_caption") or [])
        footnote = " ".join(item.get("table_footnote") or [])
        return "\n".join(p for p in (caption, str(item.get("table_body") or ""), footnote) if p)
    if kind == "equation":
        return str(item.get("text") or item.get("latex") or "")
    if kind == "image":
        return describe_image(item)
    return ""


def indexable_text(content_list: ContentList) -> str:
    """Every item as text, in document order (tables as Markdown, equations as LaTeX, images as
    their description)."""
    return "\n\n".join(t for t in (item_text(item).strip() for item in content_list) if t)
