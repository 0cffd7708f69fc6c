"""Pictures, tables and equations inside our tasks (issue 24 phase B): a configured vision model is
shown the pictures while the document's task runs; cancelling during the picture descriptions
leaves no picture entity; deleting a document removes its picture entities, chunks and files."""

from __future__ import annotations

import asyncio
import base64
import io
from pathlib import Path

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.core.defaults import DEFAULT_TENANT
from tests.conftest import make_settings, start_service, upload, wait_for_task
from tests.multimodal_docs import docx_rich, text_image

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def _vision_settings(tmp_path: Path, redis_url: str, mock: MockServer, **extra):
    return make_settings(
        tmp_path,
        redis_url,
        embedding_provider="hash",
        vlm_base_url=mock.base_url,
        vlm_api_key="k",
        vlm_model="mock-vl",
        **extra,
    )


async def _graph(svc) -> dict[str, str]:
    async with svc.services.engines.use(DEFAULT_TENANT) as engine:
        return {
            n["entity_id"]: n.get("entity_type")
            for n in await engine.rag.chunk_entity_relation_graph.get_all_nodes()
        }


async def _vision_requests(mock: MockServer) -> list[dict]:
    async with httpx.AsyncClient() as client:
        return (await client.get(f"{mock.root_url}/_mock/vision")).json()


def _pixels(data: bytes) -> bytes:
    from PIL import Image

    return Image.open(io.BytesIO(data)).convert("RGB").tobytes()


async def test_a_configured_vision_model_sees_the_pictures_of_a_document(tmp_path, redis_url) -> None:
    picture = text_image(["井盖缺失"])
    with MockServer() as mock:
        async with start_service(_vision_settings(tmp_path, redis_url, mock)) as svc:
            response = await upload(svc.client, "photo.png", picture)
            view = await wait_for_task(svc.client, response.json()["task_id"], timeout=200)
            assert view["status"] == "completed", view
            [request] = await _vision_requests(mock)
            assert _pixels(base64.b64decode(request["images"][0])) == _pixels(picture)
            nodes = await _graph(svc)
            assert [name for name, kind in nodes.items() if kind == "image"], nodes
            context = await svc.client.post(
                "/query",
                json={
                    "query": "picture seen by the mock vision model",
                    "mode": "naive",
                    "only_need_context": True,
                },
            )
            assert "seen by the mock vision model" in context.json()["response"]


async def test_cancel_while_pictures_are_described_leaves_no_picture_entity(tmp_path, redis_url) -> None:
    with MockServer(MockConfig(vision_latency=60)) as mock:
        async with start_service(_vision_settings(tmp_path, redis_url, mock)) as svc:
            data = docx_rich(
                ["Donghu Street inspection report."], [["a", "b"], ["1", "2"]], text_image(["x"])
            )
            task_id = (await upload(svc.client, "report.docx", data)).json()["task_id"]
            async with httpx.AsyncClient() as client:
                for _ in range(2000):  # until the vision call is in flight
                    stats = (await client.get(f"{mock.root_url}/_mock/stats")).json()
                    if stats["in_flight"]:
                        break
                    await asyncio.sleep(0.05)
            assert stats["in_flight"], "the picture was never sent to the vision model"
            assert (await svc.client.delete(f"/task/{task_id}")).status_code == 202
            final = await wait_for_task(svc.client, task_id, timeout=60)
            assert final["status"] == "cancelled", final
            doc_id = final["doc_id"]
            assert (await svc.client.get(f"/documents/{doc_id}")).status_code == 404
            nodes = await _graph(svc)
            assert not [n for n, kind in nodes.items() if kind in ("image", "table")], nodes


async def test_delete_removes_picture_entities_chunks_and_files(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_service(settings) as svc:
        data = docx_rich(
            ["Donghu Street inspection report."], [["街道", "隐患"], ["东湖", "12"]], text_image(["井盖缺失"])
        )
        view = await wait_for_task(
            svc.client, (await upload(svc.client, "r.docx", data)).json()["task_id"], timeout=200
        )
        assert view["status"] == "completed", view
        doc_id = view["result"]["doc_id"]
        nodes = await _graph(svc)
        kinds = sorted(kind for kind in nodes.values() if kind in ("image", "table", "equation"))
        assert kinds == ["equation", "image", "table"], nodes
        async with svc.services.engines.use(DEFAULT_TENANT) as engine:
            parsed = engine.ingestor.parsed_dir(doc_id)
        assert any(parsed.rglob("*.png")), "the picture is kept for later (vision) queries"
        assert (await svc.client.delete(f"/documents/{doc_id}")).status_code == 200
        nodes = await _graph(svc)
        assert not [n for n, kind in nodes.items() if kind in ("image", "table", "equation")], nodes
        assert not parsed.exists()
