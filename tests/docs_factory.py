"""Build real test documents (txt, md, html, pdf, docx) in memory."""

from __future__ import annotations

import io


def make_pdf(paragraphs: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(2)
    return bytes(pdf.output())


def make_docx(paragraphs: list[str], table: list[list[str]] | None = None) -> bytes:
    import docx

    document = docx.Document()
    for paragraph in paragraphs:
        document.add_paragraph(paragraph)
    if table:
        grid = document.add_table(rows=len(table), cols=len(table[0]))
        for r, row in enumerate(table):
            for c, cell in enumerate(row):
                grid.cell(r, c).text = cell
    buffer = io.BytesIO()
    document.save(buffer)
    return buffer.getvalue()


def story(topic: str, marker: str, sentences: int = 12) -> str:
    """A few KB of plain English about ``topic`` mentioning the unique word ``marker``."""
    base = [
        f"The {marker} project was founded in Lisbon by Maria Costa and Daniel Weber.",
        f"Researchers at the Northwind Institute studied {topic} for the {marker} project.",
        f"In 2021 the {marker} team published a report on {topic} and renewable storage.",
        f"Daniel Weber said that {topic} could change how Portugal manages its power grid.",
        f"The {marker} laboratory in Porto tests {topic} prototypes every spring.",
        f"Maria Costa leads the {marker} collaboration with the University of Coimbra.",
    ]
    text = []
    for i in range(sentences):
        text.append(base[i % len(base)] + f" Observation {i} concerned {topic} efficiency.")
    return " ".join(text)
