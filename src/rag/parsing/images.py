"""Pictures: open under the pixel bound, keep a copy for the content list, OCR it.

Pillow's decompression-bomb check is Pillow's own bound (``Image.MAX_IMAGE_PIXELS``) set to
MAX_IMAGE_PIXELS; the size is read from the header and refused before any pixel is decoded. The
stored copy is at most ``STORED_MAX_SIDE`` on its longer side (it is what a vision model is shown);
the item keeps the original size.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from pathlib import Path
from typing import Any

from src.rag.parsing.content import DocumentParseError, image_item
from src.rag.parsing.ocr import Ocr

STORED_MAX_SIDE = 2048
#: Pictures smaller than this on either side (icons, bullets, rules) are not content.
MIN_SIDE = 32


def open_image(source: Path | bytes, name: str, max_pixels: int) -> Any:
    """A decoded PIL image (first frame), or DocumentParseError: unreadable, or a pixel bomb."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = max_pixels
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            check_pixels(image.size, name, max_pixels)
            image.load()
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DocumentParseError(
            f"{name}: the image has more than {max_pixels:,} pixels (MAX_IMAGE_PIXELS); "
            "refusing a possible decompression bomb"
        ) from None
    except DocumentParseError:
        raise
    except MemoryError:
        raise
    except Exception as exc:  # Pillow raises OSError, SyntaxError, ValueError, struct errors...
        raise DocumentParseError(f"{name}: not a readable image ({type(exc).__name__})") from None
    return image


def check_pixels(size: tuple[int, int], name: str, max_pixels: int) -> None:
    width, height = size
    if width * height > max_pixels:
        raise DocumentParseError(
            f"{name}: the image is {width}×{height} = {width * height:,} pixels, more than "
            f"{max_pixels:,} (MAX_IMAGE_PIXELS); refusing a possible decompression bomb"
        )


def store_image(image: Any, out_dir: Path, stem: str) -> Path:
    """Save a copy (PNG, or JPEG for photos) named by its content, at most STORED_MAX_SIDE."""
    picture = image
    if picture.mode not in ("RGB", "L", "RGBA", "LA"):
        picture = picture.convert("RGBA" if "A" in picture.getbands() else "RGB")
    if max(picture.size) > STORED_MAX_SIDE:
        scale = STORED_MAX_SIDE / max(picture.size)
        picture = picture.resize(
            (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
        )
    photo = (getattr(image, "format", None) or "").upper() == "JPEG" and picture.mode in ("RGB", "L")
    buffer = io.BytesIO()
    picture.save(buffer, format="JPEG" if photo else "PNG", **({"quality": 90} if photo else {}))
    data = buffer.getvalue()
    digest = hashlib.sha256(data).hexdigest()[:16]
    path = Path(out_dir) / f"{stem}-{digest}.{'jpg' if photo else 'png'}"
    path.write_bytes(data)
    return path


def picture_item(
    image: Any, out_dir: Path, stem: str, page_idx: int, ocr: Ocr | None, **extra: Any
) -> dict[str, Any]:
    """An ``image`` content item for a decoded picture: stored copy, original size, OCR text."""
    path = store_image(image, out_dir, stem)
    text = ocr.read(image) if ocr is not None else ""
    return image_item(str(path), page_idx, width=image.width, height=image.height, ocr_text=text, **extra)


def is_content_sized(size: tuple[int, int]) -> bool:
    return min(size) >= MIN_SIDE
