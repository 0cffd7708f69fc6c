"""Multimodal test documents, generated (never downloaded): pictures of Chinese text rendered with a
CJK font (Debian's fonts-wqy-microhei, installed by .ci/run), an image-only (scanned) PDF, a PDF
with a table, a DOCX with a table, a picture and an equation, a PPTX and an XLSX."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

CJK_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",
)


def cjk_font_path() -> str:
    for candidate in CJK_FONT_CANDIDATES:
        if Path(candidate).exists():
            return candidate
    pytest.skip("no CJK font installed (apt-get install fonts-wqy-microhei, as .ci/run does)")
    raise AssertionError  # unreachable


def text_image(
    lines: list[str], size: tuple[int, int] = (1000, 400), font_px: int = 36, fmt: str = "PNG"
) -> bytes:
    """A white picture with ``lines`` of (Chinese or English) text in black."""
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(cjk_font_path(), font_px)
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    for n, line in enumerate(lines):
        draw.text((40, 40 + n * int(font_px * 1.8)), line, fill="black", font=font)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def scanned_pdf(pages: list[list[str]]) -> bytes:
    """An image-only PDF (no text layer): each page is a rendered picture of its lines (A4, 150 dpi)."""
    from PIL import Image

    images = [
        Image.open(io.BytesIO(text_image(lines, size=(1240, 1754), font_px=34))).convert("L")
        for lines in pages
    ]
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=150.0)
    return buffer.getvalue()


def pdf_with_table(intro: str, rows: list[list[str]]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    pdf.multi_cell(0, 6, intro)
    pdf.ln(4)
    with pdf.table() as table:
        for row in rows:
            cells = table.row()
            for value in row:
                cells.cell(value)
    return bytes(pdf.output())


_OMML_FRACTION = (
    '<m:oMathPara xmlns:m="http://schemas.openxmlformats.org/officeDocument/2006/math">'
    "<m:oMath><m:f><m:num><m:r><m:t>a</m:t></m:r></m:num><m:den><m:r><m:t>b</m:t></m:r></m:den></m:f>"
    "<m:r><m:t>+</m:t></m:r><m:sSup><m:e><m:r><m:t>x</m:t></m:r></m:e><m:sup><m:r><m:t>2</m:t></m:r></m:sup>"
    "</m:sSup></m:oMath></m:oMathPara>"
)


def docx_rich(paragraphs: list[str], table: list[list[str]], picture: bytes | None = None) -> bytes:
    """A DOCX with paragraphs, a table, a picture (PNG bytes) and an equation (a/b + x^2)."""
    import docx
    from docx.shared import Inches
    from lxml import etree

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    grid = document.add_table(rows=len(table), cols=len(table[0]))
    for r, row in enumerate(table):
        for c, value in enumerate(row):
            grid.cell(r, c).text = value
    if picture is not None:
        document.add_picture(io.BytesIO(picture), width=Inches(4))
    equation = document.add_paragraph()
    equation._p.append(etree.fromstring(_OMML_FRACTION))
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def pptx_deck(
    slides: list[tuple[str, str]], table: list[list[str]] | None = None, picture: bytes | None = None
) -> bytes:
    """A PPTX: one slide per (title, body); the last slide also gets ``table`` and ``picture``."""
    from pptx import Presentation
    from pptx.util import Inches

    deck = Presentation()
    for n, (title, body) in enumerate(slides):
        slide = deck.slides.add_slide(deck.slide_layouts[1])
        slide.shapes.title.text = title
        slide.placeholders[1].text = body
        if n == len(slides) - 1:
            if table:
                shape = slide.shapes.add_table(
                    len(table), len(table[0]), Inches(1), Inches(4), Inches(6), Inches(1)
                )
                for r, row in enumerate(table):
                    for c, value in enumerate(row):
                        shape.table.cell(r, c).text = value
            if picture is not None:
                slide.shapes.add_picture(io.BytesIO(picture), Inches(5), Inches(5), width=Inches(3))
    buffer = io.BytesIO()
    deck.save(buffer)
    return buffer.getvalue()


def xlsx_book(sheets: dict[str, list[list[object]]]) -> bytes:
    from openpyxl import Workbook

    book = Workbook()
    book.remove(book.active)
    for title, rows in sheets.items():
        sheet = book.create_sheet(title)
        for row in rows:
            sheet.append(row)
    buffer = io.BytesIO()
    book.save(buffer)
    return buffer.getvalue()
