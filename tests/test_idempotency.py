"""Idempotency-Key over HTTP: same task for 24 h, per tenant, free again after a failed or cancelled
task, and one task for concurrent requests with one key. (Store-level rules: tests/unit/test_store.py.)"""

from __future__ import annotations

import asyncio

import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    Service,
    make_pdf,
    make_settings,
    make_tenant,
    start_service,
    story,
    upload,
    upload_files,
    wait_for_task,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]
DAY = 24 * 3600


@pytest.fixture
async def held(tmp_path, redis_url):
    """A service whose runner is stopped: tasks stay pending, so answers are deterministic."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN)) as svc:
        await svc.services.runner.stop(grace_seconds=0)
        yield svc


def files_of(svc: Service) -> list[str]:
    return sorted(p.name for p in upload_files(svc.settings.uploads_dir))


async def test_idempotency_key_is_kept_24_hours_then_freed(held: Service) -> None:
    """Catches a key stored without expiry (it would pin a task id forever), with the wrong TTL
    (seconds vs milliseconds), or still honoured once it has expired."""
    key = {"Idempotency-Key": "nightly-import-7"}
    first = await upload(held.client, "a.txt", story("salt", "Idemttl").encode(), headers=key)
    assert first.status_code == 202 and not first.json()["duplicate"]
    redis = held.services.redis.client
    idem_keys = [k async for k in redis.scan_iter(match=f"{held.prefix}idem:*")]
    assert len(idem_keys) == 1, idem_keys
    ttl = await redis.ttl(idem_keys[0])
    assert DAY - 120 < ttl <= DAY, ttl

    again = await upload(held.client, "a.txt", story("salt", "Idemttl").encode(), headers=key)
    assert again.status_code == 202 and again.json()["task_id"] == first.json()["task_id"]

    await redis.pexpire(idem_keys[0], 1)  # the 24 h have passed
    await wait_until(lambda: _gone(redis, idem_keys[0]), timeout=10, message="the key expiring")
    later = await upload(held.client, "c.txt", story("salt", "Idemttl3").encode(), headers=key)
    assert later.status_code == 202 and not later.json()["duplicate"]
    assert later.json()["task_id"] != first.json()["task_id"]


async def _gone(redis, key: bytes) -> bool:
    return not await redis.exists(key)


async def test_idempotency_key_is_scoped_to_the_tenant(held: Service) -> None:
    """Catches a key shared across tenants: the second tenant would get the first tenant's task id
    (a cross-tenant leak) and its own document would silently not be indexed."""
    acme = await make_tenant(held, "acme")
    globex = await make_tenant(held, "globex")
    key = {"Idempotency-Key": "shared-client-key"}
    mine = await upload(held.client, "a.txt", story("hops", "Acmeidem").encode(), headers={**acme, **key})
    theirs = await upload(
        held.client, "g.txt", story("malt", "Globexidem").encode(), headers={**globex, **key}
    )
    assert mine.status_code == 202 and theirs.status_code == 202, (mine.text, theirs.text)
    assert not theirs.json()["duplicate"] and theirs.json()["task_id"] != mine.json()["task_id"]
    # Within a tenant the key still answers with that tenant's own task.
    repeat = await upload(
        held.client, "g.txt", story("malt", "Globexidem").encode(), headers={**globex, **key}
    )
    assert repeat.json()["task_id"] == theirs.json()["task_id"] and repeat.json()["duplicate"]
    assert (await held.client.get(f"/task/{mine.json()['task_id']}", headers=globex)).status_code == 404
    assert len(files_of(held)) == 2, files_of(held)


async def test_idempotency_key_is_free_again_after_a_cancelled_task(held: Service) -> None:
    """Catches a key that keeps pointing at a cancelled task: the client's retry would get a dead
    task back forever instead of a new one."""
    key = {"Idempotency-Key": "retry-after-cancel"}
    first = (await upload(held.client, "a.txt", story("reeds", "Cancelidem").encode(), headers=key)).json()
    cancelled = await held.client.delete(f"/task/{first['task_id']}")
    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    retry = await upload(held.client, "a.txt", story("reeds", "Cancelidem").encode(), headers=key)
    assert retry.status_code == 202 and not retry.json()["duplicate"], retry.text
    assert retry.json()["task_id"] != first["task_id"]
    # ... and from then on the key answers with the new task: the same request is its duplicate,
    # another request under the key is refused, naming the task the key now belongs to.
    same = await upload(held.client, "a.txt", story("reeds", "Cancelidem").encode(), headers=key)
    assert same.status_code == 202 and same.json()["duplicate"], same.text
    assert same.json()["task_id"] == retry.json()["task_id"]
    other = await held.client.post("/insert/text", json={"text": "anything"}, headers=key)
    assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused", other.text
    assert other.json()["task_id"] == retry.json()["task_id"]


async def test_idempotency_key_is_free_again_after_a_failed_task(tmp_path, redis_url) -> None:
    """Catches a key that keeps pointing at a failed task (a client retrying the same request with
    the same key would be told about the old failure forever instead of getting a new attempt)."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        key = {"Idempotency-Key": "retry-after-failure"}
        broken = make_pdf(["Some text that will not survive"])[:200]  # header intact, body cut
        first = (await upload(svc.client, "r.pdf", broken, headers=key)).json()
        await wait_for_task(svc.client, first["task_id"], expect="failed")
        retry = await upload(svc.client, "r.pdf", broken, headers=key)
        assert retry.status_code == 202 and not retry.json()["duplicate"], retry.text
        assert retry.json()["task_id"] != first["task_id"]
        await wait_for_task(svc.client, retry.json()["task_id"], expect="failed")
        # A different request under the key is still refused (the key names one request).
        other = await upload(svc.client, "r.pdf", make_pdf([story("weirs", "Failidem", 4)]), headers=key)
        assert other.status_code == 422 and other.json()["code"] == "idempotency_key_reused"


async def test_concurrent_requests_with_one_key_create_one_task(held: Service) -> None:
    """Catches a check-then-create race (two tasks under one key) and a losing request that leaves its
    stored upload behind."""
    key = {"Idempotency-Key": "double-click"}
    answers = await asyncio.gather(
        *[
            upload(held.client, "gulls.txt", story("gulls", "Raceidemq").encode(), headers=key)
            for _ in range(8)
        ]
    )
    assert [a.status_code for a in answers] == [202] * 8, [a.text for a in answers]
    ids = {a.json()["task_id"] for a in answers}
    assert len(ids) == 1, ids
    assert sorted(a.json()["duplicate"] for a in answers) == [False] + [True] * 7
    (task_id,) = ids
    assert (await held.client.get("/tasks")).json()["total"] == 1
    stored = files_of(held)
    assert len(stored) == 1 and stored[0].startswith(task_id), stored
