"""The vision model: any OpenAI-compatible chat endpoint that takes image content (vLLM, Ollama's
``/v1``, OpenAI, Qwen-VL, ...), as RAG-Anything's ``vision_model_func``.

RAG-Anything calls it two ways: ``(prompt, system_prompt=..., image_data=<base64>)`` from
``ImageModalProcessor`` and ``aquery_with_multimodal``, and ``(prompt, messages=[...])`` with
``image_url`` parts already built from ``aquery_vlm_enhanced``. Every call is admitted by the
vision scheduler (``VLM_MAX_ASYNC`` slots, by task priority and tenant, like the LLM's), so an
image question at priority 9 overtakes a bulk upload's picture descriptions. A picture larger than
``VLM_MAX_IMAGE_BYTES`` is re-encoded smaller (in a thread) before it is sent.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import io
import logging
from typing import Any
from urllib.parse import urlparse

from src.core.config import Settings
from src.rag.usage import record_chat

from ..retry import LazyOpenAIClient, build_retrying
from ..scheduler import CallScheduler

logger = logging.getLogger(__name__)

_MIME_BY_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"RIFF", "image/webp"),
    (b"BM", "image/bmp"),
)
#: Longer side of a picture re-encoded because it was over VLM_MAX_IMAGE_BYTES.
SHRINK_MAX_SIDE = 1600

_SCHEDULERS: dict[int, CallScheduler] = {}


def vision_scheduler(limit: int) -> CallScheduler:
    """The process-wide vision scheduler (all knowledge bases share its ``limit`` slots)."""
    scheduler = _SCHEDULERS.get(limit)
    if scheduler is None:
        scheduler = _SCHEDULERS[limit] = CallScheduler(limit, "vlm")
    return scheduler


def image_mime(data: bytes) -> str:
    for magic, mime in _MIME_BY_MAGIC:
        if data.startswith(magic):
            return mime
    return "image/png"


def shrink_image(data: bytes, max_bytes: int) -> bytes:
    """``data`` re-encoded as a JPEG of at most SHRINK_MAX_SIDE (smaller until under ``max_bytes``)."""
    from PIL import Image

    image = Image.open(io.BytesIO(data)).convert("RGB")
    side = SHRINK_MAX_SIDE
    while True:
        copy = image.copy()
        copy.thumbnail((side, side))
        buffer = io.BytesIO()
        copy.save(buffer, format="JPEG", quality=85)
        if buffer.tell() <= max_bytes or side <= 256:
            return buffer.getvalue()
        side //= 2


async def data_url(image_base64: str, max_bytes: int) -> str:
    """A ``data:`` URL for a base64 picture, re-encoded (off the loop) when over ``max_bytes``."""
    raw = image_base64.split(",", 1)[1] if image_base64.startswith("data:") else image_base64
    try:
        data = base64.b64decode(raw, validate=False)
    except (binascii.Error, ValueError):
        return f"data:image/png;base64,{raw}"
    if len(data) > max_bytes:
        data = await asyncio.to_thread(shrink_image, data, max_bytes)
        raw = base64.b64encode(data).decode("ascii")
    return f"data:{image_mime(data)};base64,{raw}"


class OpenAICompatibleVision:
    """``vision_model_func`` over an OpenAI-compatible endpoint, admitted by ``scheduler``."""

    def __init__(self, settings: Settings, scheduler: CallScheduler | None = None) -> None:
        self.model = settings.vlm_model
        self.base_url = settings.vlm_base_url
        self.max_image_bytes = settings.vlm_max_image_bytes
        self._attempts = int(settings.vlm_max_retries)
        self._client = LazyOpenAIClient(
            self.base_url, settings.vlm_api_key or "not-needed", float(settings.vlm_timeout_seconds)
        )
        self.scheduler = scheduler or vision_scheduler(settings.vlm_max_async)

    async def aclose(self) -> None:
        await self._client.aclose()

    async def _messages(
        self,
        prompt: str,
        system_prompt: str | None,
        history_messages: list[dict[str, Any]] | None,
        image_data: str | list[str] | None,
    ) -> list[dict[str, Any]]:
        messages: list[dict[str, Any]] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.extend(history_messages or [])
        images = [image_data] if isinstance(image_data, str) else list(image_data or [])
        if not images:
            messages.append({"role": "user", "content": prompt})
            return messages
        parts: list[dict[str, Any]] = [{"type": "text", "text": prompt}]
        for image in images:
            url = await data_url(image, self.max_image_bytes)
            parts.append({"type": "image_url", "image_url": {"url": url}})
        messages.append({"role": "user", "content": parts})
        return messages

    async def _shrink_parts(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """RAG-Anything's prebuilt messages, with oversized inline pictures re-encoded."""
        result = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                parts = []
                for part in content:
                    url = (part.get("image_url") or {}).get("url", "") if isinstance(part, dict) else ""
                    if url.startswith("data:"):
                        part = {
                            **part,
                            "image_url": {
                                **part["image_url"],
                                "url": await data_url(url, self.max_image_bytes),
                            },
                        }
                    parts.append(part)
                message = {**message, "content": parts}
            result.append(message)
        return result

    async def __call__(
        self,
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        image_data: str | list[str] | None = None,
        messages: list[dict[str, Any]] | None = None,
        **kwargs: Any,
    ) -> str:
        if messages:
            request_messages = await self._shrink_parts(messages)
        else:
            request_messages = await self._messages(prompt, system_prompt, history_messages, image_data)
        return await self.scheduler.run(self._complete, request_messages)

    async def _complete(self, messages: list[dict[str, Any]]) -> str:
        async for attempt in build_retrying(self._attempts):
            with attempt:
                client = await self._client.aget()
                response = await client.chat.completions.create(model=self.model, messages=messages)
                if not response.choices:
                    raise RuntimeError(f"vision endpoint returned no choices for model {self.model!r}")
                content = response.choices[0].message.content or ""
                record_chat("vision", getattr(response, "usage", None), messages, content)
                return content
        raise RuntimeError("unreachable")  # pragma: no cover

    def describe(self) -> str:
        host = urlparse(self.base_url).netloc if self.base_url else "api.openai.com"
        return f"openai-compatible vision model={self.model} at {host}"

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAICompatibleVision:
        return self


def build_vision_func(settings: Settings) -> OpenAICompatibleVision | None:
    """The vision model when one is configured (VLM_BASE_URL / VLM_API_KEY), else None."""
    return OpenAICompatibleVision(settings) if settings.vision_configured else None


def vision_description(settings: Settings) -> str:
    """One line for /health: what reads pictures, without secrets."""
    if settings.vision_configured:
        host = urlparse(settings.vlm_base_url).netloc if settings.vlm_base_url else "api.openai.com"
        return f"openai-compatible vision model={settings.vlm_model} at {host}"
    from src.rag.parsing.ocr import OCR_ENGINE

    return OCR_ENGINE
