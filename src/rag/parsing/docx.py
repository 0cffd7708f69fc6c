"""DOCX → content list: paragraphs as text, tables as table items, inline pictures as image items,
Word equations (OMML) as equation items (LaTeX by RAG-Anything's ``omml_extractor``), in document
order. DOCX has no pages; explicit and last-rendered page breaks advance ``page_idx``."""

from __future__ import annotations

import importlib.util
import zipfile
from functools import lru_cache
from pathlib import Path
from typing import Any
from xml.etree import ElementTree as ET

from src.rag.parsing.content import (
    ContentList,
    DocumentParseError,
    equation_item,
    markdown_table,
    table_item,
    text_item,
)
from src.rag.parsing.job import ParseJob

_W = "{http://schemas.openxmlformats.org/wordprocessingml/2006/main}"
_M = "{http://schemas.openxmlformats.org/officeDocument/2006/math}"
_A = "{http://schemas.openxmlformats.org/drawingml/2006/main}"
_R = "{http://schemas.openxmlformats.org/officeDocument/2006/relationships}"


@lru_cache(maxsize=1)
def _omml() -> Any:
    """RAG-Anything's OMML → LaTeX converter (stdlib only), loaded from its file so that the parse
    child does not import RAG-Anything and LightRAG."""
    spec = importlib.util.find_spec("raganything")
    assert spec is not None and spec.submodule_search_locations
    path = Path(next(iter(spec.submodule_search_locations))) / "omml_extractor.py"
    module_spec = importlib.util.spec_from_file_location("_raganything_omml", path)
    assert module_spec is not None and module_spec.loader is not None
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module


def omml_latex(element: Any) -> str:
    """LaTeX of an ``m:oMath`` element (lxml or ElementTree)."""
    from lxml import etree

    return _omml().omml_to_latex(ET.fromstring(etree.tostring(element))).strip()


def table_rows(table: Any) -> list[list[str]]:
    rows: list[list[str]] = []
    for row in table.rows:
        cells: list[str] = []
        previous = None
        for cell in row.cells:
            if cell._tc is previous:  # merged cells repeat the same element
                continue
            previous = cell._tc
            cells.append(cell.text)
        rows.append(cells)
    return rows


def parse_docx(job: ParseJob) -> ContentList:
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    name = job.name
    try:
        document = docx.Document(str(job.path))
    except (PackageNotFoundError, zipfile.BadZipFile, KeyError, ValueError, OSError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        # Not the exception text: python-docx's names the file by its full server path.
        raise DocumentParseError(f"{name}: not a readable .docx ({type(exc).__name__})") from exc

    items: ContentList = []
    page = 0
    children = list(document.element.body.iterchildren())
    for done, child in enumerate(children, 1):
        tag = child.tag.rsplit("}", 1)[-1]
        if tag == "p":
            paragraph = Paragraph(child, document)
            text = paragraph.text.strip()
            if text:
                job.budget.take(text)
                items.append(text_item(text, page))
            for math in child.iter(f"{_M}oMath"):
                latex = omml_latex(math)
                if latex:
                    job.budget.take(latex)
                    items.append(equation_item(latex, page))
            for blip in child.iter(f"{_A}blip"):
                rid = blip.get(f"{_R}embed")
                part = document.part.related_parts.get(rid) if rid else None
                blob = getattr(part, "blob", None)
                if blob:
                    item = job.embedded_image(blob, page, f"picture {rid}")
                    if item is not None:
                        items.append(item)
            breaks = sum(1 for br in child.iter(f"{_W}br") if br.get(f"{_W}type") == "page")
            breaks += sum(1 for _ in child.iter(f"{_W}lastRenderedPageBreak"))
            page += breaks
        elif tag == "tbl":
            body = markdown_table(table_rows(Table(child, document)))
            if body:
                job.budget.take(body)
                items.append(table_item(body, page))
        if done % 200 == 0:
            job.progress(done, len(children))
    if not items:
        raise DocumentParseError(f"{name}: the document contains no text")
    return items
