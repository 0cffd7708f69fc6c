"""Tenants: API keys, isolation on every route (404, never a leak), quotas, rate limits,
priorities and fairness, per-tenant knowledge bases loaded lazily and evicted."""

from __future__ import annotations

import random
import time
from collections import Counter

import pytest

from src.tasks.models import TaskRecord
from src.tenancy.tenants import TenantQuota
from tests.helpers import ADMIN, Service, make_settings, make_tenant, start_service, story, wait_for_task

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


@pytest.fixture
async def multi(tmp_path, redis_url):
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        yield svc


async def test_keys_are_required_once_they_exist_and_admin_is_protected(multi: Service) -> None:
    assert (await multi.client.get("/tasks")).status_code == 200  # open until the first key exists
    assert (await multi.client.get("/admin/tenants")).status_code == 401
    assert (
        await multi.client.get("/admin/tenants", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    acme = await make_tenant(multi, "acme")
    missing = await multi.client.get("/tasks")
    assert missing.status_code == 401 and missing.json()["code"] == "missing_api_key"
    bad = await multi.client.get("/tasks", headers={"Authorization": "Bearer rsk_0000_forged"})
    assert bad.status_code == 401 and bad.json()["code"] == "invalid_api_key"
    assert (await multi.client.get("/tasks", headers=acme)).status_code == 200
    assert (
        await multi.client.get("/tasks", headers={"X-API-Key": acme["Authorization"][7:]})
    ).status_code == 200

    listed = (await multi.client.get("/admin/tenants/acme/keys", headers=ADMIN)).json()["keys"]
    assert len(listed) == 1 and "api_key" not in listed[0]
    assert (await multi.client.delete(f"/admin/keys/{listed[0]['key_id']}", headers=ADMIN)).status_code == 200
    assert (await multi.client.get("/tasks", headers=acme)).status_code == 401  # revoked
    bad_name = await multi.client.post("/admin/tenants", json={"name": "../evil"}, headers=ADMIN)
    assert bad_name.status_code == 422
    assert (await multi.client.post("/admin/tenants/ghost/keys", json={}, headers=ADMIN)).status_code == 404


async def test_admin_api_is_off_without_a_token(service: Service) -> None:
    assert (await service.client.get("/admin/tenants")).status_code == 404


async def test_no_tenant_can_see_or_touch_another_tenants_data(multi: Service) -> None:
    """Catches a scoped route that leaks another tenant's task or document (any answer but the exact
    404 of an unknown id: a 403, a 200, or a 404 whose body differs), a listing or stats that count
    another tenant's tasks, and a query that reads another tenant's knowledge base."""
    acme = await make_tenant(multi, "acme")
    globex = await make_tenant(multi, "globex")
    tasks = []
    for i in range(3):
        response = await multi.client.post(
            "/insert",
            files={"file": (f"a{i}.txt", story("secrets", f"Acmesecret{i}q").encode())},
            headers=acme,
        )
        assert response.status_code == 202
        tasks.append(response.json())
    for task in tasks:
        await wait_for_task(multi.client, task["task_id"], expect="completed", headers=acme)
    own = await multi.client.post(
        "/insert", files={"file": ("g.txt", story("widgets", "Globexown").encode())}, headers=globex
    )
    own_id = own.json()["task_id"]
    await wait_for_task(multi.client, own_id, expect="completed", headers=globex)

    # What globex gets for ids that do not exist anywhere: a probe of acme's ids must look the same.
    ghost_task, ghost_doc = "0" * 32, "doc-ghost"
    missing = {
        "get": await multi.client.get(f"/task/{ghost_task}", headers=globex),
        "cancel": await multi.client.delete(f"/task/{ghost_task}", headers=globex),
        "events": await multi.client.get(f"/task/{ghost_task}/events", headers=globex),
        "doc": await multi.client.get(f"/documents/{ghost_doc}", headers=globex),
        "deldoc": await multi.client.delete(f"/documents/{ghost_doc}", headers=globex),
    }
    assert {kind: r.status_code for kind, r in missing.items()} == dict.fromkeys(missing, 404)

    def same_as_missing(kind: str, r, real_id: str, ghost_id: str) -> bool:
        return r.status_code == 404 and r.text.replace(real_id, "ID") == missing[kind].text.replace(
            ghost_id, "ID"
        )

    rng = random.Random(5)
    leaks = []
    probed: Counter[str] = Counter()
    for _ in range(300):
        task = rng.choice(tasks)
        probe = rng.choice(["get", "cancel", "events", "doc", "deldoc", "list", "stats", "query"])
        if probe == "get":
            r = await multi.client.get(f"/task/{task['task_id']}", headers=globex)
            ok = same_as_missing(probe, r, task["task_id"], ghost_task)
        elif probe == "cancel":
            r = await multi.client.delete(f"/task/{task['task_id']}", headers=globex)
            ok = same_as_missing(probe, r, task["task_id"], ghost_task)
        elif probe == "events":
            r = await multi.client.get(f"/task/{task['task_id']}/events", headers=globex)
            ok = same_as_missing(probe, r, task["task_id"], ghost_task)
        elif probe == "doc":
            r = await multi.client.get(f"/documents/{task['doc_id']}", headers=globex)
            ok = same_as_missing(probe, r, task["doc_id"], ghost_doc)
        elif probe == "deldoc":
            r = await multi.client.delete(f"/documents/{task['doc_id']}", headers=globex)
            ok = same_as_missing(probe, r, task["doc_id"], ghost_doc)
        elif probe == "list":
            r = await multi.client.get("/tasks", headers=globex)
            # Exactly globex's own task (a non-empty list, so the check cannot pass vacuously).
            ok = [t["task_id"] for t in r.json()["tasks"]] == [own_id] and r.json()["total"] == 1
        elif probe == "stats":
            r = await multi.client.get("/api/queue/stats", headers=globex)
            ok = r.json()["counts"]["completed"] == 1 and r.json()["tenant"] == "globex"
        elif probe == "query":
            marker = f"Acmesecret{tasks.index(task)}q"
            r = await multi.client.post(
                "/query",
                json={"query": marker, "mode": rng.choice(["naive", "mix"]), "only_need_context": True},
                headers=globex,
            )
            ok = r.status_code == 200 and "Acmesecret" not in r.json()["response"]
        probed[probe] += 1
        if not ok:
            leaks.append((probe, r.status_code, r.text[:200]))
    assert leaks == []
    # Every scoped route was actually probed (the random draw cannot skip one silently).
    assert set(probed) == set(missing) | {"list", "stats", "query"} and min(probed.values()) >= 10, probed
    # The probes were refused for being another tenant's, not because the data was gone: acme sees all.
    for task in tasks:
        assert (await multi.client.get(f"/task/{task['task_id']}", headers=acme)).status_code == 200
        assert (await multi.client.get(f"/documents/{task['doc_id']}", headers=acme)).status_code == 200
    # Content de-duplication is per tenant: the same bytes under globex are globex's own new task.
    for task in tasks:
        data = story("secrets", f"Acmesecret{tasks.index(task)}q").encode()
        r = await multi.client.post("/insert", files={"file": ("x.txt", data)}, headers=globex)
        assert r.status_code == 202 and not r.json()["duplicate"] and r.json()["task_id"] != task["task_id"]
    # Acme still sees everything of its own, and its knowledge base is its own workspace.
    assert (await multi.client.get("/tasks", headers=acme)).json()["total"] == 3
    context = await multi.client.post(
        "/query", json={"query": "Acmesecret1q", "mode": "naive", "only_need_context": True}, headers=acme
    )
    assert "Acmesecret1q" in context.json()["response"]
    rag_dirs = {p.name for p in multi.settings.rag_dir.iterdir()}
    assert (
        f"{multi.settings.workspace}--acme" in rag_dirs and f"{multi.settings.workspace}--globex" in rag_dirs
    )


async def test_tenant_quotas_and_rate_limits_answer_429(multi: Service) -> None:
    small = await make_tenant(multi, "small", max_pending=2)
    chatty = await make_tenant(multi, "chatty", requests_per_minute=5)
    await multi.services.runner.stop(grace_seconds=0)
    for i in range(2):
        r = await multi.client.post("/insert/text", json={"text": f"doc {i} of small"}, headers=small)
        assert r.status_code == 202
    full = await multi.client.post("/insert/text", json={"text": "one too many"}, headers=small)
    assert (
        full.status_code == 429 and full.json()["code"] == "tenant_queue_full" and full.headers["retry-after"]
    )

    statuses = [(await multi.client.get("/tasks", headers=chatty)).status_code for _ in range(7)]
    assert statuses[:5] == [200] * 5 and statuses[5:] == [429, 429]
    limited = await multi.client.get("/tasks", headers=chatty)
    assert limited.json()["code"] == "rate_limited" and int(limited.headers["retry-after"]) >= 1
    assert (await multi.client.get("/tasks", headers=small)).status_code == 200  # others unaffected


def record(task_id: str, tenant: str, priority: int, created: float) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        tenant=tenant,
        priority=priority,
        doc_id=f"doc-{task_id}",
        filename="x.txt",
        content_sha256=task_id,
        created_at=created,
        updated_at=created,
    )


async def test_scheduler_is_priority_first_and_fair_between_tenants(multi: Service) -> None:
    store = multi.services.store
    await multi.services.runner.stop(grace_seconds=0)
    now = time.time()
    for i in range(30):  # tenant "bulk" uploads 30 files first
        assert (await store.create(record(f"bulk{i:02d}", "bulk", 5, now + i * 0.001))).created
    assert (await store.create(record("single", "solo", 5, now + 1))).created
    assert (await store.create(record("urgent", "late", 9, now + 2))).created
    assert (await store.create(record("lowly", "solo", 1, now + 0.5))).created
    order = []
    while (claimed := await store.claim("test-worker", 60)) is not None:
        order.append(claimed.task_id)
    assert order[0] == "urgent", "the highest priority runs first even if it came last"
    assert order.index("single") <= 2, f"one tenant's bulk upload starved another's single file: {order[:5]}"
    assert order[-1] == "lowly", "a low-priority task runs after all normal ones"
    bulk = [t for t in order if t.startswith("bulk")]
    assert bulk == sorted(bulk), "within a tenant and priority, oldest first"


async def test_per_tenant_running_cap_is_respected_by_the_scheduler(multi: Service) -> None:
    store = multi.services.store
    await multi.services.runner.stop(grace_seconds=0)
    await multi.services.tenants.create_tenant("capped", TenantQuota(max_running=1))
    now = time.time()
    for i in range(3):
        await store.create(record(f"cap{i}", "capped", 5, now + i))
    await store.create(record("free0", "free", 5, now + 10))
    first = await store.claim("w", 60)
    second = await store.claim("w", 60)
    third = await store.claim("w", 60)
    assert [first.task_id, second.task_id, third] == ["cap0", "free0", None]
    from src.tasks.models import TaskStatus

    assert await store.finish("cap0", first.attempt, TaskStatus.COMPLETED, stage="done", progress=100) == "ok"
    assert (await store.claim("w", 60)).task_id == "cap1"


async def test_idle_knowledge_bases_are_evicted_and_reload_with_their_data(tmp_path, redis_url) -> None:
    settings = make_settings(tmp_path, redis_url, admin_token="admin-secret", max_cached_tenants=1)
    async with start_service(settings) as svc:
        one = await make_tenant(svc, "one")
        two = await make_tenant(svc, "two")
        r = await svc.client.post("/insert/text", json={"text": story("moss", "Evictmark")}, headers=one)
        await wait_for_task(svc.client, r.json()["task_id"], expect="completed", headers=one)
        await svc.client.post("/query", json={"query": "x", "mode": "naive"}, headers=two)
        assert "one" not in svc.services.engines.loaded()  # evicted: only one may stay loaded
        context = await svc.client.post(
            "/query", json={"query": "Evictmark", "mode": "naive", "only_need_context": True}, headers=one
        )
        assert "Evictmark" in context.json()["response"]
