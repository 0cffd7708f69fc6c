"""What every format parser of the child gets: the file, where images go, the limits, the OCR
engine, the text budget, the image allowance, and a way to report progress."""

from __future__ import annotations

import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from src.rag.parsing.content import TextBudget
from src.rag.parsing.images import is_content_sized, open_image, picture_item
from src.rag.parsing.limits import ParseLimits
from src.rag.parsing.ocr import Ocr

logger = logging.getLogger(__name__)

#: A line on the child's stderr starting with this is progress ("<done> <total>"), not an error.
PROGRESS_PREFIX = "@progress "


@dataclass
class ParseJob:
    path: Path
    out_dir: Path
    limits: ParseLimits
    ocr: Ocr = field(init=False)
    budget: TextBudget = field(init=False)
    images_kept: int = 0
    images_skipped: int = 0

    def __post_init__(self) -> None:
        self.ocr = Ocr(self.limits.ocr_threads)
        self.budget = TextBudget(self.name, self.limits.max_chars)

    @property
    def name(self) -> str:
        return self.path.name

    def progress(self, done: int, total: int) -> None:
        sys.stderr.write(f"{PROGRESS_PREFIX}{done} {total}\n")
        sys.stderr.flush()

    @property
    def picture_ocr(self) -> Ocr | None:
        """The OCR engine for pictures, or None when a vision model will look at them instead."""
        return self.ocr if self.limits.ocr_pictures else None

    def note(self, message: str) -> None:
        """Something the service should log although the parse succeeded."""
        sys.stderr.write(f"{self.name}: {message}\n")
        sys.stderr.flush()

    def embedded_image(self, data: bytes, page_idx: int, label: str, **extra: Any) -> dict[str, Any] | None:
        """An image item for a picture embedded in the document, or None: too small to be content,
        unreadable, or past MAX_IMAGES (a pixel bomb still fails the document)."""
        if self.images_kept >= self.limits.max_images:
            self.images_skipped += 1
            return None
        try:
            image = open_image(data, f"{self.name} ({label})", self.limits.max_image_pixels)
        except Exception as exc:
            if "MAX_IMAGE_PIXELS" in str(exc):
                raise
            logger.warning("%s: skipped an unreadable picture (%s)", self.name, label)
            return None
        if not is_content_sized(image.size):
            return None
        self.images_kept += 1
        item = picture_item(
            image, self.out_dir, f"p{page_idx + 1}-{self.images_kept}", page_idx, self.picture_ocr, **extra
        )
        self.budget.take(item["ocr_text"])
        return item
