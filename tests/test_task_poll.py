"""GET /task/{id} through the app (issue 25 item 12): one Redis round trip per poll, the same
document as the documented route, and every error of the route (401, 404, 429, 503, 500) through
the one error table. The speed itself is measured by `python -m benchmarks.poll`, not here."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio.client import Redis
from redis.exceptions import ConnectionError as RedisConnectionError

from api.errors import DOMAIN_ERRORS
from api.task_poll import TaskPollMiddleware
from api.views import task_view
from src.ingestion.errors import TaskNotFound
from tests.helpers import ADMIN, ADMIN_TOKEN, make_settings, make_tenant, start_service, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]
NOT_FOUND = DOMAIN_ERRORS[TaskNotFound].code


@pytest.fixture
async def svc(tmp_path, redis_url):
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", admin_token=ADMIN_TOKEN)
    async with start_service(settings) as service:
        assert any(m.cls is TaskPollMiddleware for m in service.app.user_middleware)
        yield service


async def _task(svc, auth: dict) -> str:
    r = await svc.client.post("/insert/text", json={"text": "Maria Costa works in Lisbon."}, headers=auth)
    assert r.status_code == 202, r.text
    task_id = r.json()["task_id"]
    await wait_for_task(svc.client, task_id, headers=auth)
    return task_id


async def test_a_poll_costs_one_redis_round_trip_and_answers_the_task_view(svc, monkeypatch) -> None:
    """Catches a poll that grows Redis round trips (a per-request key lookup, a rate-limit check
    without a limit) or a document that differs from the route's TaskView."""
    auth = await make_tenant(svc, "acme")
    task_id = await _task(svc, auth)
    assert (await svc.client.get(f"/task/{task_id}", headers=auth)).status_code == 200  # caches warm

    commands: list[tuple] = []
    execute = Redis.execute_command

    async def counted(self, *args, **options):
        if asyncio.current_task() is me:  # the ASGI transport runs the app in the caller's task
            commands.append(args[:1])
        return await execute(self, *args, **options)

    me = asyncio.current_task()
    monkeypatch.setattr(Redis, "execute_command", counted)
    polls = [await svc.client.get(f"/task/{task_id}", headers=auth) for _ in range(5)]
    monkeypatch.undo()
    assert [p.status_code for p in polls] == [200] * 5
    assert commands == [("HGETALL",)] * 5, commands

    expected = task_view(await svc.services.tasks.task("acme", task_id)).model_dump(mode="json")
    assert polls[-1].json() == expected
    assert polls[-1].headers["content-type"] == "application/json"


async def test_poll_errors_come_from_the_error_table(svc, monkeypatch) -> None:
    """Catches the poll middleware answering errors its own way (a 500 for a foreign task, a plain
    text 401, a missing Retry-After)."""
    acme = await make_tenant(svc, "acme")
    other = await make_tenant(svc, "other")
    task_id = await _task(svc, acme)

    missing = await svc.client.get(f"/task/{task_id}")
    assert missing.status_code == 401 and missing.json()["code"] == "missing_api_key"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = await svc.client.get(f"/task/{task_id}", headers={"Authorization": "Bearer rsk_x_y"})
    assert wrong.status_code == 401 and wrong.json()["code"] == "invalid_api_key"
    for path, auth in (
        (f"/task/{task_id}", other),
        ("/task/no-such-task", acme),
        ("/task/" + "x" * 100, acme),
    ):
        answer = await svc.client.get(path, headers=auth)
        assert answer.status_code == 404 and answer.json()["code"] == NOT_FOUND, (path, answer.text)

    async def down(*_args, **_kw):
        raise RedisConnectionError("connection refused")

    monkeypatch.setattr(svc.services.tasks.store, "fields", down)
    unavailable = await svc.client.get(f"/task/{task_id}", headers=acme)
    assert unavailable.status_code == 503 and unavailable.json()["code"] == "store_unavailable"
    assert unavailable.headers["retry-after"] == "5"

    async def broken(*_args, **_kw):
        raise RuntimeError("a bug")

    monkeypatch.setattr(svc.services.tasks.store, "fields", broken)
    bug = await svc.client.get(f"/task/{task_id}", headers=acme)
    assert bug.status_code == 500 and bug.json()["code"] == "internal_error"
    monkeypatch.undo()

    created = await svc.client.post(
        "/admin/tenants", json={"name": "metered", "requests_per_minute": 2}, headers=ADMIN
    )
    assert created.status_code == 201, created.text
    key = await svc.client.post("/admin/tenants/metered/keys", json={}, headers=ADMIN)
    metered = {"Authorization": f"Bearer {key.json()['api_key']}"}
    codes = [(await svc.client.get("/task/anything", headers=metered)).status_code for _ in range(3)]
    assert codes == [404, 404, 429], codes
    limited = await svc.client.get("/task/anything", headers=metered)
    assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
