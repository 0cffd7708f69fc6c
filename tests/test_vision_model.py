"""The optional vision model (src/rag/llm/vision.py) against the mock OpenAI-compatible endpoint,
which records the image bytes it was shown."""

from __future__ import annotations

import asyncio
import base64
import io

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.core.config import Settings
from src.rag.llm.vision import OpenAICompatibleVision, build_vision_func, vision_description
from src.rag.scheduler import CallScheduler, call_context
from tests.multimodal_docs import text_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def _settings(mock: MockServer, **extra) -> Settings:
    return Settings(vlm_base_url=mock.base_url, vlm_api_key="k", vlm_model="mock-vl", **extra)


async def _shown(mock: MockServer) -> list[dict]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{mock.root_url}/_mock/vision")).json()


async def test_image_bytes_reach_the_endpoint_unchanged() -> None:
    picture = text_image(["消防通道"])
    with MockServer() as mock:
        vision = OpenAICompatibleVision(_settings(mock), CallScheduler(2, "vlm-test"))
        answer = await vision("What hazard is shown?", image_data=base64.b64encode(picture).decode())
        assert answer.startswith("Mock vision answer: saw 1 image(s)")
        [seen] = await _shown(mock)
        assert base64.b64decode(seen["images"][0]) == picture
        assert "What hazard is shown?" in seen["text"]
        await vision.aclose()


async def test_prebuilt_messages_and_oversized_pictures_are_shrunk() -> None:
    from PIL import Image

    noise = Image.effect_noise((1500, 1500), 80).convert("RGB")
    buffer = io.BytesIO()
    noise.save(buffer, format="PNG")
    big = buffer.getvalue()
    with MockServer() as mock:
        vision = OpenAICompatibleVision(_settings(mock, vlm_max_image_bytes=200_000), CallScheduler(1, "t"))
        url = "data:image/png;base64," + base64.b64encode(big).decode()
        messages = [
            {
                "role": "user",
                "content": [{"type": "text", "text": "q"}, {"type": "image_url", "image_url": {"url": url}}],
            }
        ]
        await vision("ignored", messages=messages)
        [seen] = await _shown(mock)
        sent = base64.b64decode(seen["images"][0])
        assert len(big) > 200_000 >= len(sent) and sent.startswith(b"\xff\xd8\xff")
        await vision.aclose()


async def test_vision_calls_are_admitted_by_priority() -> None:
    with MockServer(MockConfig(vision_latency=0.2)) as mock:
        scheduler = CallScheduler(1, "vlm-prio")
        vision = OpenAICompatibleVision(_settings(mock), scheduler)
        image = base64.b64encode(text_image(["x"])).decode()
        order: list[str] = []

        async def ask(label: str, priority: int) -> None:
            with call_context(priority=priority):
                await vision(label, image_data=image)
            order.append(label)

        async def until(condition) -> None:
            for _ in range(10_000):
                if condition():
                    return
                await asyncio.sleep(0.001)
            raise AssertionError("scheduler state not reached")

        first = asyncio.create_task(ask("first", 5))
        await until(lambda: scheduler.active == 1)  # "first" holds the only slot
        low = asyncio.create_task(ask("low", 1))
        await until(lambda: scheduler.waiting == 1)
        high = asyncio.create_task(ask("high", 9))
        await asyncio.gather(first, low, high)
        assert order == ["first", "high", "low"]
        assert scheduler.peak == 1
        await vision.aclose()


def test_unconfigured_means_ocr_and_no_vision_function() -> None:
    settings = Settings()
    assert build_vision_func(settings) is None
    assert "not a vision model" in vision_description(settings)
