"""`POST /insert?wait=` and `POST /insert/text?wait=`: answer 200 with the final task view when the
task ends within the wait, else 202 as without one; waiting never changes the task.

Real Redis and LightRAG storages; the LLM is the offline one, or the mock OpenAI-compatible server
holding every chat call (a stalled LLM).
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from tests.helpers import (
    Service,
    llm_settings,
    make_settings,
    start_service,
    story,
    wait_for_status,
    wait_for_task,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

#: Every chat call hangs (embeddings are local): a task stays `processing` until told otherwise.
STALLED = MockConfig(hang_rate=1.0, hang_seconds=20, error_endpoints=["chat"])


def _hub(svc: Service):
    return svc.services.events


async def test_wait_answers_200_with_the_final_view_of_a_small_document(service: Service) -> None:
    """Catches a wait that answers 202 although the task ended in time, or a 200 whose body is not
    the task's final view (what GET /task/{id} gives)."""
    text = story("kelp farms", "Waitsmall", 3)
    answered = await service.client.post("/insert/text", params={"wait": 60}, json={"text": text})
    assert answered.status_code == 200, answered.text
    view = answered.json()
    assert view["status"] == "completed" and view["stage"] == "done", view
    assert view["result"]["chunks_count"] >= 1
    polled = await service.client.get(f"/task/{view['task_id']}")
    assert polled.json() == view

    files = {"file": ("small.md", ("# Small\n\n" + story("salt marsh", "Waitfile", 3)).encode())}
    uploaded = await service.client.post("/insert", params={"wait": 30}, files=files)
    assert uploaded.status_code == 200, uploaded.text
    assert uploaded.json()["status"] == "completed" and uploaded.json()["filename"] == "small.md"
    files = {"file": ("alias.txt", story("dunes", "Waitalias", 3).encode())}
    alias = await service.client.post("/documents", params={"wait": 30}, files=files)
    assert alias.status_code == 200 and alias.json()["status"] == "completed", alias.text
    assert _hub(service).waiting == 0


async def test_a_duplicate_keeps_its_codes_with_wait(service: Service) -> None:
    """Catches a wait that turns a duplicate's acceptance body into a task view (clients read
    `duplicate` from it) or waits on it."""
    text = story("peat bogs", "Waitdup", 3)
    first = await service.client.post("/insert/text", json={"text": text})
    assert first.status_code == 202, first.text
    await wait_for_task(service.client, first.json()["task_id"], expect="completed")
    again = await service.client.post("/insert/text", params={"wait": 30}, json={"text": text})
    assert again.status_code == 200, again.text
    assert again.json()["duplicate"] is True and again.json()["task_id"] == first.json()["task_id"]
    assert "status_url" in again.json()


@pytest.mark.parametrize("wait", ["-1", "60.5", "1e9", "nan", "soon"])
async def test_wait_out_of_range_is_422_and_queues_nothing(service: Service, wait: str) -> None:
    """Catches an unbounded wait (a request held for hours) and a bad value accepted or a 500."""
    for path, kwargs in (
        ("/insert/text", {"json": {"text": "some text"}}),
        ("/insert", {"files": {"file": ("a.txt", b"some text")}}),
    ):
        refused = await service.client.post(path, params={"wait": wait}, **kwargs)
        assert refused.status_code == 422, refused.text
        assert refused.json()["code"] == "validation_error" and "wait" in refused.json()["detail"]
    assert (await service.client.get("/tasks")).json()["total"] == 0


async def test_wait_answers_202_when_the_llm_stalls(tmp_path, redis_url) -> None:
    """Catches a wait that outlives its bound, or answers something else than today's 202 when the
    task is still running at the end of it."""
    with MockServer(STALLED) as mock:
        async with start_service(llm_settings(tmp_path, redis_url, mock)) as svc:
            text = story("glaciers", "Waitstall", 3)
            answered = await svc.client.post("/insert/text", params={"wait": 1}, json={"text": text})
            assert answered.status_code == 202, answered.text
            body = answered.json()
            assert body["status_url"] == f"/task/{body['task_id']}" and body["duplicate"] is False
            assert _hub(svc).waiting == 0
            cancelled = await svc.client.delete(f"/task/{body['task_id']}")
            assert cancelled.status_code in (200, 202), cancelled.text
            await wait_for_task(svc.client, body["task_id"], expect="cancelled")


async def test_a_client_gone_mid_wait_does_not_cancel_the_task(tmp_path, redis_url) -> None:
    """Catches a wait tied to the task's life: the request is dropped while it waits (the client
    disconnects; with the ASGI transport the handler itself is cancelled), the task still completes
    and the waiter is released."""
    with MockServer(STALLED) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_timeout_seconds=2, llm_max_retries=50)
        async with start_service(settings) as svc:
            text = story("fjords", "Waitgone", 3)
            request = asyncio.create_task(
                svc.client.post("/insert/text", params={"wait": 60}, json={"text": text})
            )
            await wait_until(lambda: asyncio.sleep(0, result=_hub(svc).waiting == 1), message="waiting")
            listed = (await svc.client.get("/tasks")).json()
            assert listed["total"] == 1
            task_id = listed["tasks"][0]["task_id"]
            await wait_for_status(svc.client, task_id, "processing")
            request.cancel()
            with pytest.raises(asyncio.CancelledError):
                await request
            assert _hub(svc).waiting == 0
            async with httpx.AsyncClient(timeout=10) as control:
                await control.post(f"{mock.root_url}/_mock/config", json={"hang_rate": 0.0})
            await wait_for_task(svc.client, task_id, expect="completed", timeout=200)


async def test_waiters_beyond_the_bound_answer_202_at_once(tmp_path, redis_url) -> None:
    """Catches an unbounded number of held requests per process, and a refusal that is an error
    instead of today's 202."""
    async with start_service(make_settings(tmp_path, redis_url, insert_max_waiters=0)) as svc:
        answered = await svc.client.post(
            "/insert/text", params={"wait": 60}, json={"text": story("reefs", "Waitfull", 3)}
        )
        assert answered.status_code == 202, answered.text
        assert _hub(svc).waits_refused == 1 and _hub(svc).waiting == 0
        await wait_for_task(svc.client, answered.json()["task_id"], expect="completed")


async def test_a_waiter_that_misses_every_notice_still_sees_the_end(service: Service) -> None:
    """Catches a wait that relies on notices alone: a hub that never subscribed (every notice lost)
    still returns the final record through its bounded fallback re-read."""
    from src.tasks.fanout import TaskEventHub

    deaf = TaskEventHub(service.services.store, max_per_tenant=1, queue_size=8, recheck_seconds=0.05)
    accepted = await service.client.post("/insert/text", json={"text": story("moors", "Waitdeaf", 3)})
    assert accepted.status_code == 202, accepted.text
    final = await deaf.wait_final(accepted.json()["task_id"], 60)
    assert final is not None and final.status == "completed"
    assert deaf.notices == 0 and deaf.waiting == 0


async def test_stopping_the_hub_releases_its_waiters(service: Service) -> None:
    """Catches a shutdown held up to 60 s by requests waiting for tasks that will not end (the
    runner is stopped, so the task stays pending): stopping the fan-out ends every wait at once."""
    from src.tasks.fanout import TaskEventHub

    await service.services.runner.stop(grace_seconds=0)
    hub = TaskEventHub(service.services.store, max_per_tenant=1, queue_size=8)
    await hub.start()
    accepted = await service.client.post("/insert/text", json={"text": story("heaths", "Waitstop", 3)})
    assert accepted.status_code == 202, accepted.text
    waiting = asyncio.create_task(hub.wait_final(accepted.json()["task_id"], 60))
    await wait_until(lambda: asyncio.sleep(0, result=hub.waiting == 1), message="waiting")
    await hub.stop()
    assert await asyncio.wait_for(waiting, 30) is None
    assert hub.waiting == 0
    assert await hub.wait_final(accepted.json()["task_id"], 60) is None  # refused once stopped
