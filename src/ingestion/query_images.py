"""Pictures attached to a question (seed 000: a photo plus "这张图片有什么安全隐患？"), as JSON
``image_base64`` data URLs or raw base64.

Each is decoded and checked off the event loop — at most ``QUERY_MAX_IMAGES`` pictures of at most
``QUERY_MAX_IMAGE_BYTES`` bytes and ``MAX_IMAGE_PIXELS`` pixels (read from the header, nothing is
decoded), and it must be a picture (magic bytes) — then kept in ``Settings.query_images_dir`` under
a random name while its query runs (a query task may run on another instance sharing DATA_DIR).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import io
import re
import uuid
import warnings
from collections.abc import Iterable
from pathlib import Path

from src.core.config import Settings
from src.ingestion.errors import ImageTooLarge, InvalidImage, TooManyImages
from src.rag.parsing.formats import is_image

_DATA_URL = re.compile(r"^data:image/[A-Za-z0-9.+-]+;base64,", re.IGNORECASE)
_NAME = re.compile(r"^[0-9a-f]{32}\.(png|jpg|gif|bmp|webp|tif)$")
_EXTENSIONS = (
    (b"\x89PNG", "png"),
    (b"\xff\xd8\xff", "jpg"),
    (b"GIF8", "gif"),
    (b"BM", "bmp"),
    (b"RIFF", "webp"),
    (b"II*\x00", "tif"),
    (b"MM\x00*", "tif"),
)


def _decode(encoded: str, position: int, settings: Settings) -> tuple[bytes, str]:
    raw = _DATA_URL.sub("", encoded.strip(), count=1)
    if len(raw) > (settings.query_max_image_bytes + 2) // 3 * 4 + 4:
        raise ImageTooLarge(
            f"image {position} exceeds QUERY_MAX_IMAGE_BYTES ({settings.query_max_image_bytes})"
        )
    try:
        data = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise InvalidImage(
            f"image {position} is not valid base64 (send a data:image/...;base64, URL)"
        ) from None
    if len(data) > settings.query_max_image_bytes:
        raise ImageTooLarge(
            f"image {position} exceeds QUERY_MAX_IMAGE_BYTES ({settings.query_max_image_bytes})"
        )
    if not is_image(data[:16]):
        raise InvalidImage(f"image {position} is not a PNG, JPEG, GIF, BMP, WebP or TIFF picture")
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            width, height = Image.open(io.BytesIO(data)).size  # the header only
    except Image.DecompressionBombError:  # past Pillow's own bound (twice its default)
        raise ImageTooLarge(
            f"image {position} has more than MAX_IMAGE_PIXELS ({settings.max_image_pixels:,}) pixels"
        ) from None
    except Exception:
        raise InvalidImage(f"image {position} is not a readable picture") from None
    if width * height > settings.max_image_pixels:
        raise ImageTooLarge(
            f"image {position} is {width}×{height} pixels, "
            f"more than MAX_IMAGE_PIXELS ({settings.max_image_pixels:,})"
        )
    extension = next(ext for magic, ext in _EXTENSIONS if data.startswith(magic))
    return data, extension


def _store(settings: Settings, encoded: list[str]) -> tuple[str, ...]:
    decoded = [_decode(item, n, settings) for n, item in enumerate(encoded, 1)]
    directory = settings.query_images_dir
    directory.mkdir(parents=True, exist_ok=True)
    names = []
    for data, extension in decoded:
        name = f"{uuid.uuid4().hex}.{extension}"
        (directory / name).write_bytes(data)
        names.append(name)
    return tuple(names)


async def store_query_images(settings: Settings, encoded: list[str]) -> tuple[str, ...]:
    """Check and keep the pictures of a question; returns their names (InvalidImage, TooManyImages,
    ImageTooLarge otherwise, nothing kept)."""
    if not encoded:
        return ()
    if len(encoded) > settings.query_max_images:
        raise TooManyImages(f"a question takes at most {settings.query_max_images} images (QUERY_MAX_IMAGES)")
    return await asyncio.to_thread(_store, settings, encoded)


def image_path(settings: Settings, name: str) -> Path:
    """The stored picture ``name`` (only names this module made are accepted)."""
    if not _NAME.match(name):
        raise InvalidImage(f"unknown query image {name!r}")
    return settings.query_images_dir / name


async def remove_query_images(settings: Settings, names: Iterable[str]) -> None:
    def remove() -> None:
        for name in names:
            with contextlib.suppress(FileNotFoundError, InvalidImage):
                image_path(settings, name).unlink()

    await asyncio.to_thread(remove)
