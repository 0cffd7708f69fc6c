"""PDF → content list: the text layer per page (pypdf), tables as table items (pdfplumber, their
text taken out of the page text), embedded pictures as image items (pypdfium2), and pages without a
text layer rendered (pypdfium2) and OCR'd page by page."""

from __future__ import annotations

import logging
from typing import Any

from src.rag.parsing.content import (
    ContentList,
    DocumentParseError,
    markdown_table,
    normalize_whitespace,
    table_item,
    text_item,
)
from src.rag.parsing.images import check_pixels
from src.rag.parsing.job import ParseJob

logger = logging.getLogger(__name__)

#: Scanned pages are rendered at this resolution (points are 1/72 inch) for OCR...
OCR_DPI = 150
#: ...but at most this many pixels on the longer side.
OCR_MAX_SIDE = 2000
#: A picture covering this share of a page that has a text layer is the scan behind an OCR'd text
#: layer, not a figure.
PAGE_SCAN_SHARE = 0.8


def parse_pdf(job: ParseJob) -> ContentList:
    from pypdf import PdfReader
    from pypdf.errors import FileNotDecryptedError, PdfReadError

    name = job.name
    try:
        reader = PdfReader(str(job.path), strict=False)
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

    rendered = _Rendered(job)
    plumber = _Plumber(job)
    items: ContentList = []
    failures = ocr_pages = 0
    for index, page in enumerate(pages):
        try:
            text = normalize_whitespace((page.extract_text() or "").replace("\x00", ""))
        except MemoryError:
            raise
        except Exception as exc:  # pypdf raises many types on damaged content streams
            failures += 1
            logger.warning("%s: page %d unreadable: %s", name, index + 1, exc)
            text = ""
        if text:
            tables, text = plumber.tables(index, text)
            if text:
                job.budget.take(text)
                items.append(text_item(text, index))
            items += tables
            items += rendered.pictures(index)
        elif ocr_pages < job.limits.max_ocr_pages:
            ocr_pages += 1
            scanned = rendered.ocr_page(index)
            if scanned:
                job.budget.take(scanned)
                items.append(text_item(scanned, index))
        job.progress(index + 1, len(pages))
    rendered.close()
    plumber.close()
    if not items:
        reason = f"{failures} unreadable page(s)" if failures else "no text layer, and OCR found no text"
        raise DocumentParseError(f"{name}: no extractable text in {len(pages)} page(s): {reason}")
    return items


class _Plumber:
    """pdfplumber's view of the PDF, opened once: the tables of a page, and its text without them."""

    def __init__(self, job: ParseJob) -> None:
        self.job = job
        self._pdf: Any = None
        self._broken = False

    def tables(self, index: int, page_text: str) -> tuple[ContentList, str]:
        if self._broken:
            return [], page_text
        try:
            if self._pdf is None:
                import pdfplumber

                self._pdf = pdfplumber.open(str(self.job.path))
            page = self._pdf.pages[index]
            try:
                return self._split(page, index, page_text)
            finally:
                page.close()
        except (MemoryError, DocumentParseError):
            raise
        except Exception as exc:  # pdfminer on a damaged file: keep the pypdf text
            logger.warning(
                "%s: page %d: table detection failed (%s)", self.job.name, index + 1, type(exc).__name__
            )
            return [], page_text

    def _split(self, page: Any, index: int, page_text: str) -> tuple[ContentList, str]:
        found = page.find_tables()
        if not found:
            return [], page_text
        items = []
        for table in found:
            body = markdown_table(table.extract())
            if body:
                self.job.budget.take(body)
                items.append(table_item(body, index))
        boxes = [t.bbox for t in found]

        def outside(obj: dict[str, Any]) -> bool:
            if "x0" not in obj or "top" not in obj:
                return True
            x, y = (obj["x0"] + obj["x1"]) / 2, (obj["top"] + obj["bottom"]) / 2
            return not any(b[0] <= x <= b[2] and b[1] <= y <= b[3] for b in boxes)

        return items, normalize_whitespace(page.filter(outside).extract_text() or "")

    def close(self) -> None:
        if self._pdf is not None:
            self._pdf.close()


class _Rendered:
    """pypdfium2's view of the same PDF: page rendering for OCR and embedded pictures."""

    def __init__(self, job: ParseJob) -> None:
        self.job = job
        self._doc: Any = None

    def _document(self) -> Any:
        if self._doc is None:
            import pypdfium2 as pdfium

            try:
                self._doc = pdfium.PdfDocument(str(self.job.path))
            except pdfium.PdfiumError as exc:
                raise DocumentParseError(f"{self.job.name}: the PDF cannot be rendered ({exc})") from None
        return self._doc

    def ocr_page(self, index: int) -> str:
        page = self._document()[index]
        width, height = page.get_size()
        scale = min(OCR_DPI / 72, OCR_MAX_SIDE / max(width, height, 1))
        check_pixels(
            (int(width * scale), int(height * scale)),
            f"{self.job.name} page {index + 1}",
            self.job.limits.max_image_pixels,
        )
        image = page.render(scale=scale, grayscale=True).to_pil()
        return normalize_whitespace(self.job.ocr.read(image))

    def pictures(self, index: int) -> ContentList:
        import pypdfium2.raw as pdfium_c

        page = self._document()[index]
        page_w, page_h = page.get_size()
        items = []
        for n, obj in enumerate(page.get_objects(filter=(pdfium_c.FPDF_PAGEOBJ_IMAGE,), max_depth=3)):
            left, bottom, right, top = obj.get_bounds()
            if (right - left) * (top - bottom) >= PAGE_SCAN_SHARE * page_w * page_h:
                continue
            width, height = obj.get_px_size()
            label = f"page {index + 1} picture {n + 1}"
            check_pixels((width, height), f"{self.job.name} ({label})", self.job.limits.max_image_pixels)
            if min(width, height) < 32:
                continue
            try:
                picture = obj.get_bitmap(render=False).to_pil()
            except Exception:
                logger.warning("%s: skipped an undecodable picture (%s)", self.job.name, label)
                continue
            import io

            buffer = io.BytesIO()
            picture.save(buffer, format="PNG")
            item = self.job.embedded_image(buffer.getvalue(), index, label)
            if item is not None:
                items.append(item)
        return items

    def close(self) -> None:
        if self._doc is not None:
            self._doc.close()
