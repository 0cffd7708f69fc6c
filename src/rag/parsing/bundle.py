"""A content list parsed elsewhere (e.g. MinerU on a GPU machine), uploaded as a ``.zip``: the
parser's output folder zipped, i.e. one ``*content_list.json`` plus the images its ``img_path``
entries name (relative to the JSON). Items are validated and bounded like everything else: images
are decoded under the pixel bound, stored and OCR'd; unknown item types with text become text."""

from __future__ import annotations

import json
import posixpath
import zipfile
from typing import Any

from src.rag.parsing.content import (
    ContentList,
    DocumentParseError,
    equation_item,
    table_item,
    text_item,
)
from src.rag.parsing.images import open_image, picture_item
from src.rag.parsing.job import ParseJob
from src.rag.parsing.zipguard import read_member

#: Items one bundle may hold.
MAX_ITEMS = 100_000


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value] if value.strip() else []
    if isinstance(value, list):
        return [str(v) for v in value if isinstance(v, (str, int, float)) and str(v).strip()]
    return []


def _page(raw: dict[str, Any]) -> int:
    page = raw.get("page_idx", 0)
    return page if isinstance(page, int) and 0 <= page < 1_000_000 else 0


def parse_bundle(job: ParseJob) -> ContentList:
    try:
        archive = zipfile.ZipFile(job.path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise DocumentParseError(f"{job.name}: not a readable .zip") from exc
    with archive:
        names = [
            n for n in archive.namelist() if n.endswith("content_list.json") and not n.startswith("__MACOSX")
        ]
        if len(names) != 1:
            found = "none" if not names else ", ".join(sorted(names)[:5])
            raise DocumentParseError(
                f"{job.name}: a content-list upload is a .zip with exactly one *content_list.json "
                f"(found {found})"
            )
        base = posixpath.dirname(names[0])
        try:
            raw_list = json.loads(read_member(archive, names[0], job.limits.max_expanded_bytes))
        except (ValueError, UnicodeDecodeError) as exc:
            raise DocumentParseError(f"{job.name}: {names[0]} is not valid JSON ({exc})") from None
        if not isinstance(raw_list, list):
            raise DocumentParseError(f"{job.name}: {names[0]} must hold a JSON list of content items")
        if len(raw_list) > MAX_ITEMS:
            raise DocumentParseError(f"{job.name}: more than {MAX_ITEMS:,} content items")
        members = set(archive.namelist())
        items: ContentList = []
        for position, raw in enumerate(raw_list):
            if not isinstance(raw, dict):
                raise DocumentParseError(f"{job.name}: item {position} is not a JSON object")
            item = _item(job, archive, members, base, raw, position)
            if item is not None:
                items.append(item)
            if position % 100 == 99:
                job.progress(position + 1, len(raw_list))
    if not items:
        raise DocumentParseError(f"{job.name}: the content list has no usable items")
    return items


def _item(
    job: ParseJob, archive: zipfile.ZipFile, members: set[str], base: str, raw: dict[str, Any], position: int
) -> dict[str, Any] | None:
    kind = raw.get("type")
    page = _page(raw)
    if kind == "image":
        path = raw.get("img_path")
        if not isinstance(path, str) or not path:
            raise DocumentParseError(f"{job.name}: image item {position} has no img_path")
        member = posixpath.normpath(posixpath.join(base, path))
        if member.startswith("../") or member not in members:
            raise DocumentParseError(f"{job.name}: image item {position}: {path} is not in the .zip")
        data = read_member(archive, member, job.limits.max_expanded_bytes)
        image = open_image(data, f"{job.name} ({path})", job.limits.max_image_pixels)
        if job.images_kept >= job.limits.max_images:
            job.images_skipped += 1
            return None
        job.images_kept += 1
        item = picture_item(
            image,
            job.out_dir,
            f"p{page + 1}-{job.images_kept}",
            page,
            job.picture_ocr,
            caption=_strings(raw.get("image_caption", raw.get("img_caption"))),
            footnote=_strings(raw.get("image_footnote", raw.get("img_footnote"))),
        )
        job.budget.take(item["ocr_text"])
        return item
    if kind == "table":
        body = raw.get("table_body")
        if not isinstance(body, str) or not body.strip():
            return None
        job.budget.take(body)
        return table_item(body, page, _strings(raw.get("table_caption")), _strings(raw.get("table_footnote")))
    if kind == "equation":
        latex = raw.get("latex") or raw.get("text")
        if not isinstance(latex, str) or not latex.strip():
            return None
        job.budget.take(latex)
        return equation_item(latex.strip(), page)
    text = raw.get("text")
    if not isinstance(text, str):
        items = raw.get("list_items")
        text = "\n".join(_strings(items)) if isinstance(items, list) else ""
    if not text.strip() or kind in ("discarded", "page_number", "header", "footer"):
        return None
    job.budget.take(text)
    return text_item(text, page)
