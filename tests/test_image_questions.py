"""Image questions (seed 000's job: a photo + "这张图片有什么安全隐患？"): POST /query, /query/stream
and /query/async take pictures as JSON ``image_base64`` data URLs; offline the picture's OCR text
joins the question and the matching passages come back; with a vision model the model is shown
the picture and the retrieved context together. Bad pictures are refused with a clear 4xx."""

from __future__ import annotations

import base64
import io
import json

import httpx
import pytest

from benchmarks.mock_llm import MockServer
from tests.conftest import make_settings, start_service, upload, wait_for_task
from tests.helpers import wait_until
from tests.multimodal_docs import text_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(400)]

RULES = (
    "城市安全检查规定：消防通道必须保持畅通，禁止停放车辆和堆放杂物，违者由物业公司限期整改。"
    "井盖缺失必须在二十四小时内设置警示标志并报市政部门修复。"
)
OTHER = "图书馆周末开放时间延长到晚上九点，读者可以在线预约座位，少儿阅览室新增三千册读物。"


def data_url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode()


PHOTO = text_image(["消防通道 禁止停车"])


async def _indexed(svc) -> None:
    for name, text in (("rules.txt", RULES), ("library.txt", OTHER)):
        view = await wait_for_task(
            svc.client, (await upload(svc.client, name, text.encode())).json()["task_id"]
        )
        assert view["status"] == "completed", view


async def test_offline_photo_question_returns_the_matching_passages(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="e5")
    async with start_service(settings) as svc:
        await _indexed(svc)
        body = {"query": "这张图片有什么安全隐患？", "mode": "naive", "image_base64": data_url(PHOTO)}
        response = await svc.client.post("/query", json=body)
        assert response.status_code == 200, response.text
        answer = response.json()["response"]
        assert answer.startswith("[offline mode"), answer[:200]
        assert "消防通道必须保持畅通" in answer and "图书馆" not in answer, answer[:1000]

        streamed = await svc.client.post("/query/stream", json=body)
        lines = [json.loads(line) for line in streamed.text.splitlines() if line]
        assert "消防通道必须保持畅通" in "".join(line.get("response", "") for line in lines)

        accepted = await svc.client.post("/query/async", json=body)
        assert accepted.status_code == 202, accepted.text
        final = await wait_for_task(svc.client, accepted.json()["task_id"], timeout=200)
        assert final["status"] == "completed", final
        assert "消防通道必须保持畅通" in final["result"]["response"]

        # Removed by the task's end-of-task step, which runs just after the final status is written.
        async def pictures_gone() -> bool:
            return not list(settings.query_images_dir.glob("*"))

        await wait_until(pictures_gone, timeout=10, message="the question's pictures are removed")


async def test_vision_model_sees_the_photo_and_the_retrieved_context(tmp_path, redis_url) -> None:
    with MockServer() as mock:
        settings = make_settings(
            tmp_path, redis_url, embedding_provider="e5", vlm_base_url=mock.base_url, vlm_api_key="k"
        )
        async with start_service(settings) as svc:
            await _indexed(svc)
            body = {"query": "这张图片有什么安全隐患？", "mode": "naive", "image_base64": data_url(PHOTO)}
            response = await svc.client.post("/query", json=body)
            assert response.status_code == 200, response.text
            assert response.json()["response"].startswith("Mock vision answer: saw 1 image(s)")
            async with httpx.AsyncClient() as client:
                requests = (await client.get(f"{mock.root_url}/_mock/vision")).json()
            final = requests[-1]  # the answer: the picture and the knowledge base's context at once
            assert [base64.b64decode(i) for i in final["images"]] == [PHOTO]
            assert "消防通道必须保持畅通" in final["text"] and "这张图片有什么安全隐患" in final["text"]


async def test_bad_pictures_are_refused(tmp_path, redis_url) -> None:
    from PIL import Image

    bomb = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(bomb, format="PNG")
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", query_max_image_bytes=200_000)
    cases = [
        ({"image_base64": "data:image/png;base64,@@@not base64@@@"}, 400, "invalid_image"),
        ({"image_base64": base64.b64encode(b"%PDF-1.4 not a picture").decode()}, 400, "invalid_image"),
        ({"images": [data_url(PHOTO)] * 5}, 422, "too_many_images"),
        ({"image_base64": data_url(bomb.getvalue())}, 413, "image_too_large"),
        ({"image_base64": data_url(b"\x89PNG\r\n\x1a\n" + b"\x00" * 300_000)}, 413, "image_too_large"),
    ]
    async with start_service(settings) as svc:
        for extra, status, code in cases:
            for route in ("/query", "/query/async", "/query/stream"):
                response = await svc.client.post(route, json={"query": "q", **extra})
                assert (response.status_code, response.json()["code"]) == (status, code), (
                    route,
                    extra.keys(),
                )
        assert not list(settings.query_images_dir.glob("*"))
