"""Chinese and mixed Chinese/English documents through the HTTP API, offline, on the default
multilingual embedding (e5) and the jieba-based extractor (issue 13)."""

from __future__ import annotations

import pytest

from tests.conftest import make_settings, start_service, upload, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

RESERVOIR = (
    "青龙水库位于杭州市西郊，是西湖街道主要的供水水源。"
    "二〇二三年，杭州市规划局委托浙江大学对青龙水库的大坝进行安全评估。"
    "评估报告指出，大坝的渗漏主要发生在东侧坝肩，建议在雨季前完成灌浆加固。"
    "西湖街道办事处负责组织周边居民的防汛演练。"
)
#: Other Chinese documents the right one must be ranked above (one chunk each).
DISTRACTORS = [
    "上城区图书馆新增了三千册少儿读物，周末开放时间延长到晚上九点，读者可以在线预约座位。",
    "滨江高新区的软件企业今年招聘了大量算法工程师，主要从事语音识别和图像处理方面的研发工作。",
    "余杭区的茶农在清明前采摘龙井茶，今年春季气温偏低，新茶上市时间比往年推迟了一周左右。",
]
MIXED = (
    "# 部署说明\n\n服务通过 `main.py` 启动，上传接口是 `/insert`。"
    "任务状态保存在 Redis 中，处理失败时会自动重试三次。\n\n"
    "The ingestion worker reads tasks from Redis and writes documents into LightRAG.\n"
)


async def _context(client, question: str, mode: str, **options: int) -> str:
    body = {"query": question, "mode": mode, "only_need_context": True, **options}
    response = await client.post("/query", json=body)
    assert response.status_code == 200, response.text
    return response.json()["response"]


async def test_chinese_document_is_found_by_a_chinese_question(tmp_path, redis_url) -> None:
    """Catches an English-only offline stack: with MiniLM most Chinese characters were [UNK] and
    the extractor found no Chinese entities, so naive and local retrieval missed the facts."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="e5")
    async with start_service(settings) as svc:
        documents = [("水库.txt", RESERVOIR), *((f"other{i}.txt", t) for i, t in enumerate(DISTRACTORS))]
        for name, text in documents:
            response = await upload(svc.client, name, text.encode())
            assert response.status_code == 202, response.text
            view = await wait_for_task(svc.client, response.json()["task_id"], timeout=400)
            assert view["status"] == "completed", view
        # Only the best chunk comes back: paraphrased questions that share almost no words with the
        # document must rank it first (MiniLM ranks a distractor first for both).
        for question in ("哪所高校检查过那座水坝的安全？", "防洪训练由哪个部门组织？"):
            naive = await _context(svc.client, question, "naive", chunk_top_k=1)
            assert "浙江大学" in naive and "东侧坝肩" in naive, (question, naive[:500])
            assert not any(text[:12] in naive for text in DISTRACTORS)
        local = await _context(svc.client, "青龙水库的安全评估是谁做的？", "local")
        assert "青龙水库" in local, local[:2000]


async def test_gbk_and_mixed_language_files(tmp_path, redis_url) -> None:
    """Catches mojibake: a GBK-encoded .txt used to be decoded as Windows-1252 and indexed as
    garbage. It must be decoded correctly (or refused), and a mixed Chinese/English Markdown file
    with code identifiers keeps both languages retrievable."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="e5")
    async with start_service(settings) as svc:
        gbk = await upload(svc.client, "gbk.txt", RESERVOIR.encode("gbk"))
        mixed = await upload(svc.client, "deploy.md", MIXED.encode())
        for response in (gbk, mixed):
            assert response.status_code == 202, response.text
            view = await wait_for_task(svc.client, response.json()["task_id"], timeout=400)
            assert view["status"] == "completed", view
        context = await _context(svc.client, "青龙水库的渗漏发生在哪里？", "naive")
        assert "东侧坝肩" in context
        assert "Ã" not in context and "Ö" not in context  # Windows-1252 mojibake of GBK bytes
        code = await _context(svc.client, "服务的上传接口是什么？", "naive")
        assert "/insert" in code and "main.py" in code
        english = await _context(svc.client, "Where does the ingestion worker read tasks from?", "naive")
        assert "Redis" in english
