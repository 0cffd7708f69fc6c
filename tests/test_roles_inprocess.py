"""ROLE=worker and ROLE=api in-process (the process test is tests/test_roles.py): what each role
serves and what it leaves alone at start-up."""

from __future__ import annotations

import pytest

from tests.helpers import ADMIN, ADMIN_TOKEN, Service, make_settings, start_service, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_worker_serves_only_its_probes_and_keeps_the_api_s_part_files(tmp_path, redis_url) -> None:
    """Catches a worker that serves the API (or its OpenAPI schema), answers a non-JSON 404, or
    deletes, at its start, the part file of an upload an api process is streaming into the shared
    uploads directory."""
    settings = make_settings(tmp_path, redis_url, role="worker")
    settings.uploads_dir.mkdir(parents=True)
    streaming = settings.uploads_dir / "in-flight-upload.part"
    streaming.write_bytes(b"half an upload")
    async with start_service(settings) as worker:
        assert streaming.exists()
        assert (await worker.client.get("/health")).json()["status"] == "ok"
        for method, path in (("POST", "/query/async"), ("GET", "/docs"), ("GET", "/ui"), ("GET", "/tasks")):
            refused = await worker.client.request(method, path)
            assert refused.status_code == 404 and refused.json()["code"] == "not_found", (path, refused.text)
        assert worker.services.runner.running_count == 0 and worker.services.runner._loops  # noqa: SLF001


async def test_api_role_starts_no_runner_and_loads_no_knowledge_base(tmp_path, redis_url) -> None:
    """Catches an api process that claims tasks or loads (and resumes) a knowledge base at start-up."""
    async with start_service(make_settings(tmp_path, redis_url, role="api")) as api:
        assert api.services.runner._loops == []  # noqa: SLF001
        assert api.services.knowledge_bases.loaded() == []
        accepted = await api.client.post("/insert/text", json={"text": "waits for a worker"})
        assert accepted.status_code == 202, accepted.text
        view = (await api.client.get(f"/task/{accepted.json()['task_id']}")).json()
        assert view["status"] == "pending" and view["attempt"] == 0


async def test_api_role_health_is_degraded_until_a_worker_is_seen(tmp_path, redis_url) -> None:
    """Catches an api process that says `ok` while no worker is alive: everything it accepts would
    wait forever. It is `degraded` (503 + Retry-After) until a worker's heartbeat is seen, then ok."""
    api_settings = make_settings(tmp_path / "api", redis_url, role="api", admin_token=ADMIN_TOKEN)
    async with start_service(api_settings) as api:
        alone = await api.client.get("/health")
        assert alone.status_code == 503 and alone.json() == {"status": "degraded"}
        assert alone.headers["retry-after"]
        details = (await api.client.get("/health", headers=ADMIN)).json()
        assert details["workers_seen"] == 0 and details["redis"]["ok"] is True
        worker_settings = make_settings(tmp_path / "worker", redis_url, role="worker")
        async with start_service(worker_settings, prefix=api.prefix):
            healthy = await wait_until(
                lambda: _ok(api), timeout=30, message="api /health ok once a worker runs"
            )
            assert healthy.json() == {"status": "ok"}


async def _ok(svc: Service):
    response = await svc.client.get("/health")
    return response if response.status_code == 200 else None
