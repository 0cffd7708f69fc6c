"""Documented promises that had no test: query provider failure (502), document delete while
indexing (409), the text size limit (413), the sweeper's removal of leftover uploads, and what
shutdown does to webhooks in flight and to the service's background loops.

Real Redis, real LightRAG storages; the LLM is the offline one or the mock OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import (
    hold,
    llm_settings,
    make_settings,
    release,
    start_service,
    story,
    upload,
    upload_files,
    wait_for_task,
    wait_held,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


async def test_query_answers_502_when_the_llm_provider_fails(tmp_path, redis_url) -> None:
    """Catches a provider failure during a query surfacing as a 500 with a stack trace, or as a 200
    carrying an error string as the "answer" (a client could not tell it from a real answer)."""
    with MockServer(MockConfig()) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock, llm_max_retries=1)) as svc:
            body = (await upload(svc.client, "q.txt", story("orchards", "Querybreak").encode())).json()
            await wait_for_task(svc.client, body["task_id"], expect="completed")
            ok = await svc.client.post("/query", json={"query": "Querybreak orchards", "mode": "naive"})
            assert ok.status_code == 200 and ok.json()["response"], ok.text

            async with httpx.AsyncClient(timeout=10) as control:
                configured = await control.post(
                    f"{mock.root_url}/_mock/config",
                    json={"permanent_error": True, "permanent_error_status": 401},
                )
            assert configured.status_code == 200, configured.text
            query = {"query": "Who founded the Querybreak project in Lisbon?", "mode": "naive"}
            failed = await svc.client.post("/query", json=query)
            assert failed.status_code == 502, failed.text
            assert failed.json()["code"] == "query_failed"
            assert "Traceback" not in failed.text
            # Retrieval alone needs no LLM call for a naive query: still answered.
            context = await svc.client.post("/query", json={**query, "only_need_context": True})
            assert context.status_code == 200 and "Querybreak" in context.json()["response"]


async def test_streamed_query_answers_502_when_the_llm_provider_fails_before_the_first_piece(
    tmp_path, redis_url
) -> None:
    """Catches a streamed query whose provider fails before any piece is sent answering 200 (the
    client sees a successful stream carrying an error line) instead of the documented 502."""
    with MockServer(MockConfig()) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock, llm_max_retries=1)) as svc:
            body = (await upload(svc.client, "q.txt", story("orchards", "Streambreak").encode())).json()
            await wait_for_task(svc.client, body["task_id"], expect="completed")
            async with httpx.AsyncClient(timeout=10) as control:
                failing = {"permanent_error": True, "permanent_error_status": 401}
                await control.post(f"{mock.root_url}/_mock/config", json=failing)
            query = {"query": "Who founded the Streambreak project in Lisbon?", "mode": "naive"}
            streamed = await svc.client.post("/query/stream", json=query)
            assert streamed.status_code == 502, streamed.text
            assert streamed.json()["code"] == "query_failed"


async def test_delete_document_is_409_while_it_is_being_indexed(tmp_path, redis_url) -> None:
    """Catches a DELETE /documents/{id} accepted while the document's task is running (LightRAG
    would delete under a live pipeline, and the task would then complete a document that is gone)."""
    with MockServer(MockConfig()) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, embedding_provider="hash")
        async with start_service(settings) as svc:
            await hold(mock, "extract")  # the task stays in its extraction until released
            body = (await upload(svc.client, "d.txt", story("bridges", "Deletemid", 6).encode())).json()
            await wait_held(mock)
            refused = await svc.client.delete(f"/documents/{body['doc_id']}")
            assert refused.status_code == 409, refused.text
            assert refused.json()["code"] == "doc_in_progress"
            assert body["task_id"] in refused.json()["detail"]
            # The refused delete changed nothing: the task completes and its document is there.
            await release(mock)
            await wait_for_task(svc.client, body["task_id"], expect="completed")
            assert (await svc.client.get(f"/documents/{body['doc_id']}")).status_code == 200
            deleted = await svc.client.delete(f"/documents/{body['doc_id']}")
            assert deleted.status_code == 200, deleted.text
            assert (await svc.client.get(f"/documents/{body['doc_id']}")).status_code == 404


async def test_text_over_max_text_chars_is_413_and_leaves_nothing(tmp_path, redis_url) -> None:
    """Catches MAX_TEXT_CHARS not applied to /insert/text (or off by one), and a refused text that
    still leaves a stored file or a task behind."""
    async with start_service(make_settings(tmp_path, redis_url, max_text_chars=200)) as svc:
        await svc.services.runner.stop(grace_seconds=0)  # keep the accepted one's file in place
        too_long = await svc.client.post("/insert/text", json={"text": "x" * 201})
        assert too_long.status_code == 413, too_long.text
        assert too_long.json()["code"] == "too_large" and "200" in too_long.json()["detail"]
        assert list(upload_files(svc.settings.uploads_dir)) == []
        assert (await svc.client.get("/tasks")).json()["total"] == 0
        at_limit = await svc.client.post("/insert/text", json={"text": "y" * 200})
        assert at_limit.status_code == 202, at_limit.text
        stored = [p.name for p in upload_files(svc.settings.uploads_dir)]
        assert len(stored) == 1 and stored[0].startswith(at_limit.json()["task_id"]), stored
        assert (await svc.client.get("/tasks")).json()["total"] == 1


async def test_sweeper_removes_leftover_uploads_of_expired_tasks_only(tmp_path, redis_url) -> None:
    """Catches a sweeper that drops expired ids from the indexes but leaves their files on disk (the
    uploads directory only grows), and one that deletes files of tasks that are still alive."""
    settings = make_settings(tmp_path, redis_url, ttl_completed_seconds=2, sweep_seconds=0.3)
    async with start_service(settings) as svc:
        done = (await upload(svc.client, "a.txt", story("moors", "Sweepdone").encode())).json()
        await wait_for_task(svc.client, done["task_id"], expect="completed")
        # What a crash between the final write and the file removal leaves: the upload and a partial.
        uploads = settings.uploads_dir
        leftovers = [uploads / f"{done['task_id']}.txt", uploads / f"{done['task_id']}.txt.part"]
        for path in leftovers:
            path.write_text("left behind")
        # A live task's upload must survive every sweep.
        await svc.services.runner.stop(grace_seconds=0)
        alive = (await upload(svc.client, "b.txt", story("fens", "Sweepalive").encode())).json()
        alive_files = [p for p in upload_files(uploads) if p.name.startswith(alive["task_id"])]
        assert len(alive_files) == 1, list(upload_files(uploads))
        # The runner's loops are stopped; run the sweeper by hand until the record has expired.
        runner = svc.services.runner

        async def swept() -> bool:
            await runner.sweep()
            return not any(p.exists() for p in leftovers)

        await wait_until(swept, timeout=30, interval=0.3, message="an expired task's leftovers removed")
        assert (await svc.client.get(f"/task/{done['task_id']}")).status_code == 404
        assert all(p.exists() for p in alive_files), "the sweeper removed a live task's upload"
        assert (await svc.client.get(f"/task/{alive['task_id']}")).json()["status"] == "pending"


class HeldReceiver:
    """A loopback webhook receiver that answers each delivery only once released (never, unless
    :meth:`release` is called: a hung receiver)."""

    def __init__(self) -> None:
        self.deliveries: list[bytes] = []
        self.started = threading.Event()
        self.answer = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server API
                receiver.started.set()
                body = self.rfile.read(int(self.headers["content-length"]))
                if not receiver.answer.wait(timeout=3600):
                    return
                receiver.deliveries.append(body)
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def release(self) -> None:
        self.answer.set()

    def close(self) -> None:
        self.answer.set()
        self.server.shutdown()
        self.server.server_close()


async def test_shutdown_lets_a_webhook_in_flight_finish(tmp_path, redis_url) -> None:
    """Catches a shutdown that cancels deliveries in flight at once: a task that completed just
    before SIGTERM would never be reported to its receiver."""
    receiver = HeldReceiver()
    try:
        settings = make_settings(tmp_path, redis_url, webhook_allowed_hosts="127.0.0.1")
        async with start_service(settings) as svc:
            response = await svc.client.post(
                "/insert",
                params={"callback_url": receiver.url},
                files={"file": ("w.txt", story("kites", "Hookdown").encode())},
            )
            await wait_for_task(svc.client, response.json()["task_id"], expect="completed")
            await wait_until(
                lambda: asyncio.to_thread(receiver.started.wait, 0.2), message="delivery started"
            )
            assert receiver.deliveries == []  # still in flight when the service stops...
            webhooks = svc.services.webhooks
            closing = webhooks.close

            async def answered_while_stopping(*args: Any, **kwargs: Any) -> None:
                receiver.release()  # ...and answered only once the service is stopping
                await closing(*args, **kwargs)

            webhooks.close = answered_while_stopping
        assert len(receiver.deliveries) == 1, "the delivery in flight at shutdown was dropped"
        assert b'"task.completed"' in receiver.deliveries[0]
    finally:
        receiver.close()


async def test_shutdown_is_bounded_with_a_hung_webhook_receiver_and_leaves_no_loops(
    tmp_path, redis_url
) -> None:
    """Catches a shutdown that waits forever for a receiver that never answers, and background loops
    (sweeper, heartbeat, dispatcher, webhook jobs) left running after the service stopped — they
    would keep hitting a closed Redis pool and log errors forever."""
    receiver = HeldReceiver()  # never answers
    try:
        settings = make_settings(tmp_path, redis_url, webhook_allowed_hosts="127.0.0.1")
        before = asyncio.all_tasks()
        stopping = asyncio.Event()

        async def run() -> None:
            async with start_service(settings) as svc:
                response = await svc.client.post(
                    "/insert",
                    params={"callback_url": receiver.url},
                    files={"file": ("h.txt", story("kites", "Hookhang").encode())},
                )
                await wait_for_task(svc.client, response.json()["task_id"], expect="completed")
                await wait_until(
                    lambda: asyncio.to_thread(receiver.started.wait, 0.2), message="delivery started"
                )
                await svc.services.runner.sweep()  # the sweeper works while the service is up
                stopping.set()

        try:
            async with asyncio.timeout(120):
                await run()
        except TimeoutError:
            raise AssertionError("shutdown did not finish: it waits for a hung webhook receiver") from None
        assert stopping.is_set()
        assert receiver.deliveries == []
        current = asyncio.current_task()
        left = [t for t in asyncio.all_tasks() - before if t is not current and not t.done()]
        assert left == [], f"background tasks still running after shutdown: {[t.get_name() for t in left]}"
    finally:
        receiver.close()
