"""Spreadsheets (XLSX) and CSV → table items: each sheet in pieces of at most ``ROWS_PER_TABLE``
rows, the header row repeated in each, captioned with the sheet name and row range.

Bounded: cells are counted as rows stream in (openpyxl read-only mode, with the sheet's declared
dimensions ignored, so a forged ``A1:XFD1048576`` costs nothing); past MAX_TABLE_CELLS the
document fails ("huge sheet")."""

from __future__ import annotations

import csv
import io
import zipfile
from collections.abc import Iterable, Sequence
from typing import Any

from src.rag.parsing.content import ContentList, DocumentParseError, markdown_table, table_item
from src.rag.parsing.job import ParseJob
from src.rag.text_decoding import TextDecodingError, decode_text_bytes

ROWS_PER_TABLE = 50


class _CellBudget:
    def __init__(self, job: ParseJob) -> None:
        self.job, self.used = job, 0

    def take(self, row: Sequence[Any]) -> None:
        self.used += len(row)
        if self.used > self.job.limits.max_table_cells:
            raise DocumentParseError(
                f"{self.job.name}: the tables hold more than {self.job.limits.max_table_cells:,} cells "
                "(MAX_TABLE_CELLS); refusing a huge sheet"
            )


def _trim(row: Sequence[Any]) -> list[Any]:
    cells = list(row)
    while cells and (cells[-1] is None or str(cells[-1]).strip() == ""):
        cells.pop()
    return cells


def _pieces(
    job: ParseJob, label: str, rows: Iterable[Sequence[Any]], budget: _CellBudget, page: int
) -> ContentList:
    items: ContentList = []
    header: list[Any] | None = None
    batch: list[list[Any]] = []
    first = 2

    def flush(last: int) -> None:
        nonlocal batch, first
        if header is None or not batch:
            return
        body = markdown_table([header, *batch])
        if body:
            job.budget.take(body)
            items.append(table_item(body, page, caption=[f"{label}, rows {first}-{last}"]))
        batch, first = [], last + 1

    number = 0
    for raw in rows:
        budget.take(raw)
        row = _trim(raw)
        if not row:
            continue
        number += 1
        if header is None:
            header = row
            continue
        batch.append(row)
        if len(batch) >= ROWS_PER_TABLE:
            flush(number)
    flush(number)
    if header is not None and not items:  # a header alone is still the sheet's content
        body = markdown_table([header])
        job.budget.take(body)
        items.append(table_item(body, page, caption=[label]))
    return items


def parse_xlsx(job: ParseJob) -> ContentList:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(str(job.path), read_only=True, data_only=True)
    except (zipfile.BadZipFile, KeyError, ValueError, OSError, TypeError) as exc:
        if isinstance(exc, FileNotFoundError):
            raise
        raise DocumentParseError(f"{job.name}: not a readable .xlsx ({type(exc).__name__})") from exc
    budget = _CellBudget(job)
    items: ContentList = []
    try:
        sheets = workbook.worksheets
        for index, sheet in enumerate(sheets):
            if hasattr(sheet, "reset_dimensions"):
                sheet.reset_dimensions()  # trust the cells, not the declared (forgeable) size
            items += _pieces(job, f"Sheet {sheet.title}", sheet.iter_rows(values_only=True), budget, index)
            job.progress(index + 1, len(sheets))
    finally:
        workbook.close()
    if not items:
        raise DocumentParseError(f"{job.name}: the workbook contains no cells")
    return items


def parse_csv(job: ParseJob) -> ContentList:
    try:
        text = decode_text_bytes(job.path.read_bytes())
    except TextDecodingError as exc:
        raise DocumentParseError(f"{job.name}: {exc}") from None
    try:
        dialect: Any = csv.Sniffer().sniff(text[:8192], delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel
    csv.field_size_limit(min(job.limits.max_chars, 2**31 - 1))
    try:
        items = _pieces(job, job.name, csv.reader(io.StringIO(text), dialect), _CellBudget(job), 0)
    except csv.Error as exc:
        raise DocumentParseError(f"{job.name}: not readable as CSV ({exc})") from None
    if not items:
        raise DocumentParseError(f"{job.name}: the file contains no rows")
    return items
