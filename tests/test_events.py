"""Server-Sent Events for one task: ordering, end of stream, Last-Event-ID resume."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import (
    FINAL,
    Service,
    make_settings,
    read_events_until,
    start_socket_service,
    story,
    wait_for_task,
)

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


async def test_task_events_are_ordered_and_end_with_the_final_status(tmp_path, redis_url) -> None:
    """Catches events out of order, repeated or skipped states, a stream that does not end at the final
    status, and a Last-Event-ID resume that replays old events. The stream is opened while the task
    is still pending (the runner is held), so the ordering checks see the whole life of the task."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_socket_service(settings) as svc:
        await svc.services.runner.stop(grace_seconds=0)
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
            data = story("lighthouses", "Eventide", 20).encode()
            task_id = (await client.post("/insert", files={"file": ("a.txt", data)})).json()["task_id"]

            async def release(events: list[dict]) -> None:
                assert events[0]["task"]["status"] == "pending", events
                await svc.services.runner.start()

            events = await read_events_until(
                client,
                f"/task/{task_id}/events",
                lambda ev: ev[-1]["task"]["status"] in FINAL,
                on_open=release,
            )
            statuses = [e["task"]["status"] for e in events]
            assert statuses[0] == "pending" and "processing" in statuses, statuses
            assert statuses[-1] == "completed", statuses
            ids = [float(e["id"]) for e in events]
            assert ids == sorted(ids) and len(set(ids)) == len(ids)
            progress = [e["task"]["progress"] for e in events]
            assert progress == sorted(progress) and progress[-1] == 100.0
            order = ["pending", "processing", "completed"]
            seen = [order.index(s) for s in statuses]
            assert seen == sorted(seen)

            # Resume from the last id: nothing new, the stream just ends.
            path = f"/task/{task_id}/events"
            resumed = await client.get(path, headers={"Last-Event-ID": events[-1]["id"]})
            assert parse_sse(resumed.text) == []
            # Resume from an older id: exactly the current state once.
            older = await client.get(path, headers={"Last-Event-ID": events[0]["id"]})
            replay = parse_sse(older.text)
            assert len(replay) == 1 and replay[0]["task"]["status"] == "completed"


async def test_events_for_unknown_task_is_404(service: Service) -> None:
    response = await service.client.get("/task/nope/events")
    assert response.status_code == 404 and response.json()["code"] == "task_not_found"


async def test_client_wait_for_uses_the_event_stream(service: Service) -> None:
    from src.client import AsyncRagClient

    client = AsyncRagClient(base_url="http://svc", transport=service.client._transport)
    async with client:
        accepted = await client.upload(story("reefs", "Streamwise").encode(), filename="s.txt")
        updates: list[dict] = []
        final = await client.wait_for(accepted["task_id"], timeout=120, on_update=updates.append)
    assert final["status"] == "completed"
    assert updates and updates[-1]["status"] == "completed"
    assert (await wait_for_task(service.client, accepted["task_id"]))["status"] == "completed"


async def test_tenant_event_stream_and_last_event_id_resume(tmp_path, redis_url) -> None:
    """Catches a tenant stream that misses a task's final state, and a Last-Event-ID resume that
    replays events from before that id (or drops later ones). Conditions, not read windows."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_socket_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
            body = (await client.post("/insert/text", json={"text": story("dunes", "Allstream")})).json()
            await wait_for_task(client, body["task_id"], expect="completed")

            def completed(task_id: str) -> Callable[[list[dict]], bool]:
                return lambda ev: any(
                    e["task"]["task_id"] == task_id and e["task"]["status"] == "completed" for e in ev
                )

            events = await read_events_until(client, "/events", completed(body["task_id"]))
            mine = [e for e in events if e["task"]["task_id"] == body["task_id"]]
            assert mine and mine[-1]["task"]["status"] == "completed"
            last = events[-1]["id"]

            # Resume after the last event seen: the next change arrives, and nothing older is replayed.
            second: dict = {}

            async def upload_second() -> None:
                text = story("fjords", "Allstream2")
                second.update((await client.post("/insert/text", json={"text": text})).json())

            async def later_events() -> list[dict]:
                return await read_events_until(
                    client,
                    "/events",
                    lambda ev: bool(second) and completed(second["task_id"])(ev),
                    headers={"Last-Event-ID": last},
                )

            reader = asyncio.create_task(later_events())
            await upload_second()
            later = await reader
            assert {e["task"]["task_id"] for e in later} == {second["task_id"]}, later
            assert all(float(e["id"]) > float(last) for e in later)
