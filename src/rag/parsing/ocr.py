"""Offline OCR: RapidOCR's PP-OCRv4 Chinese+English ONNX models, shipped inside the
``rapidocr-onnxruntime`` wheel (nothing is downloaded, no GPU).

It reads text; it does not understand pictures. Whatever this service says about an image without
a vision model is this text plus the image's size, page and caption, and it says so. Runs in the
parse child (heavy: ~0.7 GiB, seconds per page); the engine loads once per child, on first use.
"""

from __future__ import annotations

import logging
from typing import Any

logger = logging.getLogger(__name__)

#: How /health, the logs and image descriptions name the offline reader.
OCR_ENGINE = "ocr: RapidOCR PP-OCRv4 zh+en (rapidocr-onnxruntime, offline, CPU) - not a vision model"
#: Lines recognised with less confidence are dropped (mostly noise on photos).
MIN_SCORE = 0.5
#: Pictures are scaled down to at most this many pixels on their longer side before OCR (the
#: detector works at ≤ 2000 anyway; a 48-megapixel photo would only cost memory).
MAX_SIDE = 2000


class Ocr:
    """One RapidOCR engine, loaded lazily."""

    def __init__(self, threads: int = 2) -> None:
        self.threads = threads
        self._engine: Any = None

    def _load(self) -> Any:
        if self._engine is None:
            from rapidocr_onnxruntime import RapidOCR

            self._engine = RapidOCR(intra_op_num_threads=self.threads, inter_op_num_threads=1)
        return self._engine

    def read(self, image: Any) -> str:
        """The text in a PIL image, one line per text line in reading order ("" if none)."""
        import numpy as np

        picture = image.convert("RGB")
        if max(picture.size) > MAX_SIDE:
            scale = MAX_SIDE / max(picture.size)
            picture = picture.resize(
                (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
            )
        if min(picture.size) < 8:
            return ""
        result, _ = self._load()(np.asarray(picture))
        return join_lines(result or [])


def join_lines(result: list[Any]) -> str:
    """RapidOCR boxes → text: boxes whose vertical centres are within half a line height form one
    line (left to right, joined by a space); lines top to bottom."""
    boxes = []
    for box, text, score in result:
        if float(score) < MIN_SCORE or not str(text).strip():
            continue
        ys = [p[1] for p in box]
        xs = [p[0] for p in box]
        boxes.append(((min(ys) + max(ys)) / 2, max(ys) - min(ys), min(xs), str(text).strip()))
    boxes.sort(key=lambda b: (b[0], b[2]))
    lines: list[list[tuple[float, float, float, str]]] = []
    for box in boxes:
        if lines and abs(box[0] - lines[-1][0][0]) < max(4.0, 0.5 * max(box[1], lines[-1][0][1])):
            lines[-1].append(box)
        else:
            lines.append([box])
    return "\n".join(" ".join(b[3] for b in sorted(line, key=lambda b: b[2])) for line in lines)
