"""An uploaded picture → image items: one per frame (a multi-page TIFF is a scanned document), each
with a stored copy, its size and the text OCR read in it."""

from __future__ import annotations

from src.rag.parsing.content import ContentList, DocumentParseError
from src.rag.parsing.images import check_pixels, open_image, picture_item
from src.rag.parsing.job import ParseJob


def parse_image(job: ParseJob) -> ContentList:
    image = open_image(job.path, job.name, job.limits.max_image_pixels)
    frames = min(getattr(image, "n_frames", 1) or 1, job.limits.max_ocr_pages)
    if (image.format or "").upper() == "GIF":
        frames = 1  # animation frames repeat one picture
    items: ContentList = []
    for frame in range(frames):
        if frame:
            try:
                image.seek(frame)
                check_pixels(image.size, f"{job.name} frame {frame + 1}", job.limits.max_image_pixels)
                image.load()
            except DocumentParseError:
                raise
            except (EOFError, OSError, ValueError):
                break
        item = picture_item(image, job.out_dir, f"p{frame + 1}", frame, job.picture_ocr)
        job.budget.take(item["ocr_text"])
        items.append(item)
        job.progress(frame + 1, frames)
    return items
