"""PPTX → content list: one page per slide (``page_idx`` = slide index); each slide's text frames
as one text block (title first), its tables as table items, its pictures as image items, and its
speaker notes as text."""

from __future__ import annotations

import zipfile
from typing import Any

from src.rag.parsing.content import ContentList, DocumentParseError, markdown_table, table_item, text_item
from src.rag.parsing.job import ParseJob


def _shapes(shapes: Any) -> Any:
    """Every shape, group members included (depth-first, in slide order)."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes(shape.shapes)
        else:
            yield shape


def parse_pptx(job: ParseJob) -> ContentList:
    from pptx import Presentation
    from pptx.exc import PackageNotFoundError

    try:
        deck = Presentation(str(job.path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{job.name}: not a readable .pptx ({type(exc).__name__})") from exc

    items: ContentList = []
    slides = list(deck.slides)
    for index, slide in enumerate(slides):
        texts: list[str] = []
        extra: ContentList = []
        title = slide.shapes.title
        if title is not None and title.has_text_frame and title.text_frame.text.strip():
            texts.append(title.text_frame.text.strip())
        for n, shape in enumerate(_shapes(slide.shapes)):
            if title is not None and shape.shape_id == title.shape_id:
                continue
            if getattr(shape, "has_table", False) and shape.has_table:
                rows = [[cell.text for cell in row.cells] for row in shape.table.rows]
                body = markdown_table(rows)
                if body:
                    job.budget.take(body)
                    extra.append(table_item(body, index))
            elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
                text = shape.text_frame.text.strip()
                if text:
                    texts.append(text)
            image = getattr(shape, "image", None) if shape.shape_type == 13 else None  # PICTURE
            if image is not None:
                item = job.embedded_image(image.blob, index, f"slide {index + 1} picture {n + 1}")
                if item is not None:
                    extra.append(item)
        if slide.has_notes_slide:
            notes = (
                slide.notes_slide.notes_text_frame.text.strip() if slide.notes_slide.notes_text_frame else ""
            )
            if notes:
                texts.append(f"Notes: {notes}")
        text = "\n".join(texts)
        if text:
            job.budget.take(text)
            items.append(text_item(text, index))
        items += extra
        job.progress(index + 1, len(slides))
    if not items:
        raise DocumentParseError(f"{job.name}: the presentation contains no text, tables or pictures")
    return items
