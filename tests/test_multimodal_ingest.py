"""Issue 24 through the HTTP API, offline with no configuration: scanned PDFs, photos, spreadsheets
and slides in Chinese and English are accepted, parsed (OCR where there is no text), indexed and
found; bombs fail their task with a clear error while the service stays healthy."""

from __future__ import annotations

import io

import pytest

from tests.conftest import make_settings, start_service, upload, wait_for_task
from tests.multimodal_docs import pptx_deck, scanned_pdf, text_image, xlsx_book

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

SCAN_PAGES = [
    ["东湖街道城市体检报告", "东湖街道的排水管网老化严重，", "雨季时低洼路段经常积水。"],
    ["消防检查结果", "幸福小区的消防通道被违规占用，", "物业公司已被责令限期整改。"],
]


async def _context(client, question: str, mode: str) -> str:
    response = await client.post("/query", json={"query": question, "mode": mode, "only_need_context": True})
    assert response.status_code == 200, response.text
    return response.json()["response"]


async def test_scanned_chinese_pdf_offline_is_found_in_naive_and_local_mode(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="e5")
    async with start_service(settings) as svc:
        response = await upload(svc.client, "体检扫描件.pdf", scanned_pdf(SCAN_PAGES))
        assert response.status_code == 202, response.text
        view = await wait_for_task(svc.client, response.json()["task_id"], timeout=500)
        assert view["status"] == "completed", view
        naive = await _context(svc.client, "哪个小区的消防通道被占用了？", "naive")
        assert "幸福小区" in naive and "消防通道" in naive, naive[:1000]
        local = await _context(svc.client, "东湖街道的排水管网有什么问题？", "local")
        assert "排水管网" in local, local[:2000]


async def test_photo_spreadsheet_and_slides_offline(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="e5")
    async with start_service(settings) as svc:
        documents = {
            "现场照片.jpg": text_image(["井盖缺失 注意安全", "Manhole cover missing"], fmt="JPEG"),
            "隐患统计.xlsx": xlsx_book({"统计": [["街道", "隐患数"], ["东湖街道", 12], ["西湖街道", 3]]}),
            "汇报.pptx": pptx_deck([("整改计划", "三月底前完成管网改造")]),
        }
        for name, data in documents.items():
            response = await upload(svc.client, name, data)
            assert response.status_code == 202, (name, response.text)
            view = await wait_for_task(svc.client, response.json()["task_id"], timeout=400)
            assert view["status"] == "completed", (name, view)
        assert "井盖缺失" in await _context(svc.client, "哪里的井盖缺失了？", "naive")
        assert "| 东湖街道 | 12 |" in await _context(svc.client, "东湖街道有多少隐患？", "naive")
        assert "三月底前完成管网改造" in await _context(svc.client, "整改计划是什么？", "naive")


async def test_pixel_bomb_fails_its_task_and_health_stays_ok(tmp_path, redis_url) -> None:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("1", (30_000, 30_000)).save(buffer, format="PNG")
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_service(settings) as svc:
        response = await upload(svc.client, "bomb.png", buffer.getvalue())
        assert response.status_code == 202, response.text
        view = await wait_for_task(svc.client, response.json()["task_id"], timeout=120)
        assert view["status"] == "failed", view
        assert "bomb.png" in view["error"] and "MAX_IMAGE_PIXELS" in view["error"], view["error"]
        assert str(tmp_path) not in view["error"]
        assert (await svc.client.get("/health")).status_code == 200


async def test_content_that_is_not_its_extension_is_refused(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_service(settings) as svc:
        for name, data in (("photo.png", b"%PDF-1.4 not a picture"), ("sheet.xlsx", b"name,count\n")):
            response = await upload(svc.client, name, data)
            assert response.status_code == 415, response.text
            assert response.json()["code"] == "content_mismatch"
        response = await upload(svc.client, "tool.exe", b"MZ")
        assert (response.status_code, response.json()["code"]) == (415, "unsupported_type")


async def test_health_says_pictures_are_read_by_ocr_not_a_vision_model(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", health_details="public")
    async with start_service(settings) as svc:
        body = (await svc.client.get("/health")).json()
        assert body["parser"] == "offline"
        assert body["pictures"].startswith("ocr: RapidOCR") and "not a vision model" in body["pictures"]


async def test_a_parser_without_its_models_is_refused_at_start_up(tmp_path, redis_url) -> None:
    """Catches: PARSER=mineru accepted at start and failing (or downloading) at the first upload."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", parser="docling")
    with pytest.raises(Exception, match="PARSER=docling: docling is not installed"):
        async with start_service(settings):
            pass
