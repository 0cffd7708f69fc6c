"""Bounds of one document parse, passed from the service to the parse child as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class ParseLimits:
    #: Zip containers (DOCX, PPTX, XLSX, ODT, EPUB, bundles): total expanded size and the
    #: compression ratio of large members, checked from the central directory before inflating.
    max_expanded_bytes: int = 200 * 1024 * 1024
    max_compression_ratio: float = 100.0
    #: Characters of text one document may yield.
    max_chars: int = 20_000_000
    #: Address-space limit (RLIMIT_AS) of the child; OCR needs about 0.7 GiB of it.
    memory_bytes: int = 2 * 1024 * 1024 * 1024
    #: The child is stopped when it makes no progress (no page, slide, sheet or image finished)
    #: for this long.
    timeout_seconds: float = 300.0
    #: Pixels one image may have (Pillow's decompression-bomb bound); more fails the document.
    max_image_pixels: int = 89_478_485
    #: Images kept per document (embedded pictures beyond it are left out, and logged).
    max_images: int = 200
    #: Cells of all spreadsheets/CSV tables of one document; more fails it ("huge sheet").
    max_table_cells: int = 2_000_000
    #: Pages rendered and OCR'd per document.
    max_ocr_pages: int = 500
    #: OCR (onnxruntime) threads in the child.
    ocr_threads: int = 2
    #: OCR pictures (not only scanned pages): off when a vision model describes them.
    ocr_pictures: bool = True

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str) -> ParseLimits:
        return cls(**json.loads(raw))
