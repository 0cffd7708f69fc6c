"""Tenant isolation of the streaming routes: `GET /events` and `POST /query/stream` never carry
another tenant's tasks or passages (the other routes: tests/test_tenancy.py). Served by uvicorn on a
socket, so streams are read as they arrive."""

from __future__ import annotations

import types
from collections.abc import Callable

import httpx
import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    make_settings,
    make_tenant,
    read_events_until,
    start_socket_service,
    story,
    wait_for_task,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


def completed(task_id: str) -> Callable[[list[dict]], bool]:
    return lambda events: any(
        e["task"]["task_id"] == task_id and e["task"]["status"] == "completed" for e in events
    )


async def test_event_streams_and_streamed_answers_stay_within_their_tenant(tmp_path, redis_url) -> None:
    """Catches a tenant stream (`/events`) that carries another tenant's task events, and a streamed
    query that reads another tenant's knowledge base. Positive controls: each tenant's own stream
    shows its own task, its own streamed answer its own passage."""
    settings = make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN)
    async with start_socket_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
            admin_view = types.SimpleNamespace(client=client)
            acme, globex = await make_tenant(admin_view, "acme"), await make_tenant(admin_view, "globex")

            async def insert(headers: dict[str, str], text: str) -> str:
                response = await client.post("/insert/text", json={"text": text}, headers=headers)
                assert response.status_code == 202, response.text
                task_id = response.json()["task_id"]
                await wait_for_task(client, task_id, expect="completed", headers=headers)
                return task_id

            first_acme = await insert(acme, story("orchards", "Acmeorchard"))
            globex_secret = story("vaults", "Globexvault") + " The vault code is Zebrafrost."
            globex_task: list[str] = []
            second_acme: list[str] = []

            async def while_acme_listens(_: list[dict]) -> None:
                # acme's stream is open: globex's task runs to its end, then acme's second one.
                globex_task.append(await insert(globex, globex_secret))
                second_acme.append(await insert(acme, story("meadows", "Acmemeadow")))

            acme_events = await read_events_until(
                client,
                "/events",
                lambda events: bool(second_acme) and completed(second_acme[0])(events),
                headers=acme,
                on_open=while_acme_listens,
            )
            seen = {e["task"]["task_id"] for e in acme_events}
            assert {first_acme, second_acme[0]} <= seen, seen
            assert globex_task[0] not in seen, "acme's event stream carried globex's task"

            globex_events = await read_events_until(
                client, "/events", completed(globex_task[0]), headers=globex
            )
            assert {e["task"]["task_id"] for e in globex_events} == {globex_task[0]}

            async def streamed(headers: dict[str, str]) -> str:
                query = {"query": "What is the Globexvault vault code?", "mode": "naive"}
                async with client.stream("POST", "/query/stream", json=query, headers=headers) as response:
                    assert response.status_code == 200, await response.aread()
                    return "".join([piece async for piece in response.aiter_text()])

            assert "Zebrafrost" in await streamed(globex)  # the passage is found for its own tenant...
            assert "Zebrafrost" not in await streamed(acme)  # ...and never for another
