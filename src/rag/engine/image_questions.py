"""Answering a question that carries pictures (seed 000's job: a photo plus "这张图片有什么安全隐患？").

With a vision model, as RAG-Anything's ``aquery_with_multimodal`` does: each picture is described by
the vision model with RAG-Anything's query-image prompt, the description joins the question
(``User query: … Related image content: …`` + its enhancement suffix) to retrieve the knowledge
base's context; then the vision model answers with the pictures themselves and that context in one
prompt (RAG-Anything's final call would show the model only the description).

Without one, the offline OCR reads each picture (in the bounded parse child) and what it read joins
the question: the answer is the retrieved context (offline LLM stand-in, honest prefix) or the
LLM's answer, and the text says the picture was read by OCR, not seen.
"""

from __future__ import annotations

import asyncio
import base64
import shutil
import tempfile
from collections.abc import Awaitable, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from lightrag import LightRAG
from raganything.prompt import PROMPTS

from src.rag.engine import queries
from src.rag.knowledge import QueryResult, QuerySpec
from src.rag.parsing.isolated import run_isolated
from src.rag.parsing.limits import ParseLimits

VisionFunc = Callable[..., Awaitable[str]]

ANSWER_SYSTEM = (
    "You answer questions about the attached picture(s) for a city-inspection team. Use what you see "
    "and the knowledge base context below; say which facts come from the context. If the context "
    "does not cover the question, say so.\n\n---Knowledge base context---\n{context}"
)


def _ocr_one(path: Path, limits: ParseLimits) -> str:
    out = Path(tempfile.mkdtemp(prefix="query-ocr-"))
    try:
        items = run_isolated("image", path, out, limits)
        return "\n".join(str(i.get("ocr_text") or "") for i in items).strip()
    finally:
        shutil.rmtree(out, ignore_errors=True)


async def read_pictures(paths: list[Path], limits: ParseLimits) -> list[str]:
    """What OCR reads in each picture (in a child process each, off the loop)."""
    return [await asyncio.to_thread(_ocr_one, path, limits) for path in paths]


def question_with_ocr(question: str, texts: list[str]) -> str:
    parts = [question]
    for number, text in enumerate(texts, 1):
        said = text if text else "(no text found)"
        parts.append(f"[Attached picture {number}, its text read by OCR (not a vision model): {said}]")
    return "\n\n".join(parts)


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode("ascii")


async def answer(
    rag: LightRAG,
    spec: QuerySpec,
    paths: list[Path],
    *,
    vision: VisionFunc | None,
    limits: ParseLimits,
) -> QueryResult:
    """The answer (or, with ``only_need_context``, the retrieved context) to a question with pictures."""
    plain = replace(spec, images=())
    if vision is None:
        texts = await read_pictures(paths, limits)
        return await queries.whole(rag, replace(plain, text=question_with_ocr(spec.text, texts)))
    images = [await asyncio.to_thread(_b64, path) for path in paths]
    parts = [f"User query: {spec.text}"]
    for image in images:
        description = await vision(
            PROMPTS["QUERY_IMAGE_DESCRIPTION"],
            image_data=image,
            system_prompt=PROMPTS["QUERY_IMAGE_ANALYST_SYSTEM"],
        )
        parts.append(f"\nRelated image content: {description}")
    enhanced = "\n".join(parts) + PROMPTS["QUERY_ENHANCEMENT_SUFFIX"]
    retrieved = await queries.whole(rag, replace(plain, text=enhanced, only_need_context=True))
    if spec.only_need_context:
        return retrieved
    result: Any = await vision(
        spec.text, system_prompt=ANSWER_SYSTEM.format(context=retrieved.response), image_data=images
    )
    return QueryResult(str(result), retrieved.references)
