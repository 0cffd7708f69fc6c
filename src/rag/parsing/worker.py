"""The parse child: ``python -I -c <boot> ROOT kind path out_dir limits_json`` (src/rag/parsing/
isolated.py starts it). Parses one document into a content list under an address-space limit.

Protocol: exit 0 with the content list as JSON on stdout; lines starting with ``@progress`` on
stderr report progress, other stderr lines are notes (success) or the user-facing reason
(failure); exit 2 = the document is unusable (do not retry), exit 3 = the memory limit was hit.
Imports only the format module it needs, so a child starts fast.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from src.rag.parsing.content import ContentList, DocumentParseError
from src.rag.parsing.job import PROGRESS_PREFIX, ParseJob
from src.rag.parsing.limits import ParseLimits
from src.rag.parsing.zipguard import check_zip_bounds

__all__ = ["EXIT_MEMORY", "EXIT_REJECTED", "PROGRESS_PREFIX", "main", "parse_in_process"]

EXIT_REJECTED = 2
EXIT_MEMORY = 3


def _parser(kind: str) -> Callable[[ParseJob], ContentList]:
    if kind == "pdf":
        from src.rag.parsing.pdf import parse_pdf

        return parse_pdf
    if kind == "docx":
        from src.rag.parsing.docx import parse_docx

        return parse_docx
    if kind == "pptx":
        from src.rag.parsing.pptx import parse_pptx

        return parse_pptx
    if kind == "xlsx":
        from src.rag.parsing.sheets import parse_xlsx

        return parse_xlsx
    if kind == "csv":
        from src.rag.parsing.sheets import parse_csv

        return parse_csv
    if kind in ("epub", "odt"):
        from src.rag.parsing import opendoc

        return opendoc.parse_epub if kind == "epub" else opendoc.parse_odt
    if kind == "rtf":
        from src.rag.parsing.text import parse_rtf

        return parse_rtf
    if kind == "image":
        from src.rag.parsing.image_file import parse_image

        return parse_image
    if kind == "bundle":
        from src.rag.parsing.bundle import parse_bundle

        return parse_bundle
    raise DocumentParseError(f"unsupported document kind {kind!r}")


def parse_in_process(kind: str, path: Path, out_dir: Path, limits: ParseLimits | None = None) -> ContentList:
    """Parse without a child (tools and tests); the service always goes through `run_isolated`."""
    limits = limits or ParseLimits()
    path = Path(path)
    if kind in ("docx", "pptx", "xlsx", "odt", "epub", "bundle"):
        check_zip_bounds(path, limits.max_expanded_bytes, limits.max_compression_ratio)
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    job = ParseJob(path, Path(out_dir), limits)
    items = _parser(kind)(job)
    if job.images_skipped:
        job.note(f"{job.images_skipped} picture(s) past MAX_IMAGES were left out")
    return items


#: The child yields the CPU to the service: OCR keeps both cores busy for minutes, and the
#: service's event loop (uploads, polls) must not wait behind it.
NICENESS = 10


def _limit_resources(max_bytes: int) -> None:
    import os
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (max_bytes, max_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(NICENESS)


def main(argv: list[str]) -> int:
    kind, path_arg, out_arg, limits_json = argv[:4]
    limits = ParseLimits.from_json(limits_json)
    path = Path(path_arg)
    too_big = f"{path.name}: parsing needs more than {limits.memory_bytes:,} bytes"
    try:
        _limit_resources(limits.memory_bytes)
        items = parse_in_process(kind, path, Path(out_arg), limits)
        sys.stdout.write(json.dumps(items, ensure_ascii=False))
        sys.stdout.flush()
        return 0
    except MemoryError:
        sys.stderr.write(too_big)
        return EXIT_MEMORY
    except DocumentParseError as exc:
        sys.stderr.write(str(exc))
        return EXIT_REJECTED
    except Exception as exc:  # anything else the libraries raise on a hostile file
        text = f"{type(exc).__name__}: {exc}".lower()
        if "memory" in text or "bad_alloc" in text:  # lxml, numpy, onnxruntime report it their way
            sys.stderr.write(too_big)
            return EXIT_MEMORY
        sys.stderr.write(f"{path.name}: could not be parsed ({type(exc).__name__})")
        return EXIT_REJECTED
