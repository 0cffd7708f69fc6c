"""Prometheus metrics and structured JSON logs."""

from __future__ import annotations

import asyncio
import io
import json
import logging

import pytest
from prometheus_client.parser import text_string_to_metric_families

from src.core.config import Settings
from src.core.logs import JsonFormatter, _ContextFilter, current_task_id, current_tenant
from tests.helpers import Service, make_settings, story, upload, upload_files, wait_for_task, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
ADMIN = "metrics-admin"


@pytest.fixture
def settings(tmp_path, redis_url) -> Settings:
    return make_settings(tmp_path, redis_url, admin_token=ADMIN)  # /metrics needs the admin token


def samples(text: str) -> dict[tuple[str, tuple], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


async def test_metrics_describe_tasks_uploads_llm_and_loop(service: Service) -> None:
    body = (await upload(service.client, "m.txt", story("orchards", "Metricor").encode())).json()
    await wait_for_task(service.client, body["task_id"])

    admin = {"Authorization": f"Bearer {ADMIN}"}

    async def lag_sampled() -> bool:  # the loop-lag sampler has taken a sample (no fixed sleep)
        text = (await service.client.get("/metrics", headers=admin)).text
        return samples(text).get(("ragsvc_event_loop_lag_seconds_count", ()), 0) >= 1

    await wait_until(lag_sampled, timeout=30, message="an event-loop lag sample")
    response = await service.client.get("/metrics", headers=admin)
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    values = samples(response.text)
    assert values[("ragsvc_tasks", (("status", "completed"), ("tenant", "default")))] == 1
    assert values[("ragsvc_queue_depth", ())] == 0
    assert values[("ragsvc_task_slots", ())] == service.settings.max_concurrent_tasks
    assert values[("ragsvc_upload_bytes_total", ())] == body["file_size"]
    assert values[("ragsvc_uploads_total", (("outcome", "accepted"),))] == 1
    assert values[("ragsvc_task_duration_seconds_count", (("outcome", "completed"),))] == 1
    assert values[("ragsvc_admission_wait_seconds_count", ())] == 1
    assert values[("ragsvc_llm_call_seconds_count", ())] >= 1
    assert values[("ragsvc_event_loop_lag_seconds_count", ())] >= 1
    stages = {labels for (name, labels) in values if name == "ragsvc_stage_duration_seconds_count"}
    assert (("stage", "parsing"),) in stages


def test_json_log_lines_carry_the_task_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(_ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("test.jsonlog")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    token = current_task_id.set("task-123")
    tenant_token = current_tenant.set("acme")
    try:
        logger.info("indexing %s", "doc-1")
    finally:
        current_task_id.reset(token)
        current_tenant.reset(tenant_token)
    logger.info("no task here")
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["task_id"] == "task-123" and first["msg"] == "indexing doc-1" and first["level"] == "info"
    assert first["tenant"] == "acme"
    assert "task_id" not in second


def test_third_party_tracebacks_stay_json_lines(capsys) -> None:
    """Catches LightRAG's own plain-text handler (propagate=False) writing multi-line tracebacks
    into the JSON log stream (issue 12 item 16): every line on stderr must parse as JSON."""
    from src.core.logs import configure_logging

    root = logging.getLogger()
    saved_handlers, saved_level = root.handlers[:], root.level
    try:
        configure_logging("INFO", "json")
        lightrag_logger = logging.getLogger("lightrag")
        assert lightrag_logger.handlers == [] and lightrag_logger.propagate
        try:
            raise ValueError("boom\nsecond line")
        except ValueError:
            lightrag_logger.exception("extraction failed:\n  detail line")
        lightrag_logger.error("Traceback (most recent call last):\n  File x, line 1\nValueError: y")
    finally:
        root.handlers[:] = saved_handlers
        root.setLevel(saved_level)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 2
    entries = [json.loads(line) for line in lines]
    assert entries[0]["logger"] == "lightrag" and "ValueError: boom" in entries[0]["exc"]
    assert entries[1]["msg"].startswith("Traceback")


async def test_a_client_abort_mid_upload_is_logged_at_info_without_a_traceback(
    tmp_path, redis_url, caplog: pytest.LogCaptureFixture
) -> None:
    """Catches a client that closes its connection half-way through an upload being logged as an
    unhandled error with a traceback (an everyday event, not a fault): one info line, no record at
    warning or above, no traceback, and the partial file removed."""
    import main  # noqa: F401 - its import configures logging (replacing the root's handlers) first
    from tests.helpers import start_socket_service

    caplog.set_level(logging.INFO)
    root = logging.getLogger()
    if caplog.handler not in root.handlers:
        root.addHandler(caplog.handler)
    async with start_socket_service(make_settings(tmp_path, redis_url)) as svc:
        port = int(svc.url.rsplit(":", 1)[1])
        first = len(caplog.records)
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        part = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\n'
        writer.write(
            b"POST /insert HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
            b"Content-Length: 100000\r\n\r\n" + part + b"x" * 1000
        )
        await writer.drain()
        await wait_until(
            lambda: asyncio.sleep(0, result=any(svc.settings.uploads_dir.glob("*.part"))),
            message="the upload started",
        )
        writer.close()

        def about_the_abort() -> list[logging.LogRecord]:
            records = caplog.records[first:]
            return [r for r in records if "disconnect" in r.getMessage().lower() or r.exc_info]

        logged = await wait_until(
            lambda: asyncio.sleep(0, result=about_the_abort()), timeout=30, message="the abort was logged"
        )
        await wait_until(
            lambda: asyncio.sleep(0, result=not any(upload_files(svc.settings.uploads_dir))),
            message="the partial file removed",
        )
        assert [(r.levelno, bool(r.exc_info)) for r in logged] == [(logging.INFO, False)], [
            (r.levelname, r.getMessage()[:200]) for r in logged
        ]
        loud = [r for r in caplog.records[first:] if r.levelno >= logging.WARNING]
    assert loud == [], [(r.name, r.getMessage()[:200]) for r in loud]
