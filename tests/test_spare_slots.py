"""Spare task slots (src/tasks/admission.py) in the in-process service: the setting reaches the
runner, and the runner hears the process's LLM scheduler. The mock LLM hangs on every chat call, so
the documents that start hold the LLM's slots; nothing here depends on timing but a settle before
a negative check."""

from __future__ import annotations

import asyncio

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.rag.builder import process_schedulers
from src.tasks import admission
from tests.helpers import llm_settings, start_service, story, upload, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

HANGING_CHAT = MockConfig(hang_rate=1.0, hang_seconds=120, error_endpoints=["chat"])


@pytest.mark.parametrize(("spare", "started"), [(0, 2), (2, 3)])
async def test_a_full_llm_starts_spare_documents_up_to_its_room(
    tmp_path, redis_url, monkeypatch: pytest.MonkeyPatch, spare: int, started: int
) -> None:
    """Catches spare slots not wired to the LLM scheduler (config → runner → the process-wide
    scheduler) or lent beyond the LLM's room: two documents fill both LLM slots with their hanging
    extraction calls; with spare slots one more document starts (its call then waits: the room is
    half the LLM's slots), with SPARE_TASK_SLOTS=0 none does."""
    # The spare document counts as a call about to wait until its call does, however slow this
    # machine is today (else a 4th could start in between).
    monkeypatch.setattr(admission, "SPARE_START_SECONDS", 60.0)
    with MockServer(HANGING_CHAT) as mock:
        settings = llm_settings(
            tmp_path,
            redis_url,
            mock,
            max_concurrent_tasks=2,
            llm_max_async=2,
            spare_task_slots=spare,
            shutdown_grace_seconds=0.5,  # the hanging calls are handed back at once
        )
        llm = process_schedulers(settings).llm
        async with start_service(settings) as svc:
            runner = svc.services.runner
            for i in range(5):
                body = story("tidal power", f"Sparemarker{i}x").encode()
                assert (await upload(svc.client, f"d{i}.txt", body)).status_code == 202
            await wait_until(lambda: asyncio.sleep(0, result=llm.active == 2), message="both LLM slots taken")
            await wait_until(
                lambda: asyncio.sleep(0, result=runner.running_count == started),
                message=f"{started} documents started",
            )
            await asyncio.sleep(1.0)  # settle: nothing more may start
            assert runner.running_count == started
            lent = svc.services.metrics.registry.get_sample_value("ragsvc_spare_task_slots_lent_total")
            assert lent == started - 2
