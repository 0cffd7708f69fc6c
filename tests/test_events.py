"""Server-Sent Events for one task: ordering, end of stream, Last-Event-ID resume."""

from __future__ import annotations

import asyncio
import json

import pytest

from tests.helpers import Service, story, upload, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def parse_sse(raw: str) -> list[dict]:
    events = []
    for block in raw.split("\n\n"):
        fields: dict[str, str] = {}
        for line in block.splitlines():
            if line.startswith(":") or ":" not in line:
                continue
            key, _, value = line.partition(":")
            fields[key] = value.lstrip(" ")
        if fields.get("event") == "task":
            events.append({"id": fields["id"], "task": json.loads(fields["data"])})
    return events


async def test_task_events_are_ordered_and_end_with_the_final_status(service: Service) -> None:
    body = (await upload(service.client, "a.txt", story("lighthouses", "Eventide", 20).encode())).json()
    response = await service.client.get(f"/task/{body['task_id']}/events")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    events = parse_sse(response.text)
    assert events, response.text
    ids = [float(e["id"]) for e in events]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)
    progress = [e["task"]["progress"] for e in events]
    assert progress == sorted(progress)
    assert events[-1]["task"]["status"] == "completed" and events[-1]["task"]["progress"] == 100.0
    order = ["pending", "processing", "completed"]
    seen = [order.index(e["task"]["status"]) for e in events]
    assert seen == sorted(seen)

    # Resume from the last id: nothing new, the stream just ends.
    resumed = await service.client.get(
        f"/task/{body['task_id']}/events", headers={"Last-Event-ID": events[-1]["id"]}
    )
    assert parse_sse(resumed.text) == []
    # Resume from an older id: exactly the current state once.
    older = await service.client.get(
        f"/task/{body['task_id']}/events", headers={"Last-Event-ID": events[0]["id"]}
    )
    replay = parse_sse(older.text)
    assert len(replay) == 1 and replay[0]["task"]["status"] == "completed"


async def test_events_for_unknown_task_is_404(service: Service) -> None:
    response = await service.client.get("/task/nope/events")
    assert response.status_code == 404 and response.json()["code"] == "task_not_found"


async def test_client_wait_for_uses_the_event_stream(service: Service) -> None:
    from src.client.client import AsyncRagClient

    client = AsyncRagClient(base_url="http://svc", transport=service.client._transport)
    async with client:
        accepted = await client.upload(story("reefs", "Streamwise").encode(), filename="s.txt")
        updates: list[dict] = []
        final = await client.wait_for(accepted["task_id"], timeout=120, on_update=updates.append)
    assert final["status"] == "completed"
    assert updates and updates[-1]["status"] == "completed"
    assert (await wait_for_task(service.client, accepted["task_id"]))["status"] == "completed"


async def read_events(client, path: str, seconds: float, headers: dict | None = None) -> list[dict]:
    """Read an endless SSE stream for a while (over a real socket) and parse what arrived."""
    raw = []
    try:
        async with asyncio.timeout(seconds):
            async with client.stream("GET", path, headers=headers or {}) as response:
                assert response.status_code == 200
                async for chunk in response.aiter_text():
                    raw.append(chunk)
    except TimeoutError:
        pass
    return parse_sse("".join(raw))


async def test_tenant_event_stream_and_last_event_id_resume(tmp_path, redis_url) -> None:
    import socket
    import threading

    import httpx
    import uvicorn

    from main import create_app
    from tests.helpers import make_settings

    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    app = create_app(settings, redis_prefix=f"evt{id(tmp_path)}:")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as client:
            for _ in range(200):
                try:
                    if (await client.get("/health")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.1)
            body = (await client.post("/insert/text", json={"text": story("dunes", "Allstream")})).json()
            await wait_for_task(client, body["task_id"])
            events = await read_events(client, "/events", 2.0)
            mine = [e for e in events if e["task"]["task_id"] == body["task_id"]]
            assert mine and mine[-1]["task"]["status"] == "completed"
            # Resume after the last event seen: nothing is replayed.
            again = await read_events(client, "/events", 1.5, headers={"Last-Event-ID": events[-1]["id"]})
            assert again == []
            # A change after that point is delivered on the resumed stream.
            second = (await client.post("/insert/text", json={"text": story("fjords", "Allstream2")})).json()
            await wait_for_task(client, second["task_id"])
            later = await read_events(client, "/events", 1.5, headers={"Last-Event-ID": events[-1]["id"]})
            assert {e["task"]["task_id"] for e in later} == {second["task_id"]}
    finally:
        server.should_exit = True
        thread.join(timeout=30)
