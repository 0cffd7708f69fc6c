"""Cancel of a task at moments other than mid-extraction: while parsing, chunking, extracting,
merging, just indexed (before the completion is recorded), just completed, during retry backoff, and
from another instance. (Queued = pending, never claimed: tests/test_tasks.py::test_cancel_pending_task;
the per-document indexer has no in-process queue stage.) Whatever the moment, the outcome must be
consistent: `cancelled` means nothing of the document is left (knowledge base, uploads, locks),
`completed` means it is all there.

The task is held at a moment by making the store's progress write for that stage wait (the runner
reports every stage through `TaskStore.report_progress` from inside the attempt), so the cancel
lands exactly there, whatever the engine does between stages.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.tasks.models import Stage
from tests.helpers import (
    Service,
    context_for,
    extraction_calls,
    hold,
    llm_settings,
    make_settings,
    mock_stats,
    release,
    start_service,
    story,
    upload,
    upload_files,
    wait_for_status,
    wait_for_task,
    wait_held,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]


def hold_at(svc: Service, stage: str) -> tuple[asyncio.Event, Callable[[], None]]:
    """Make the first progress write of ``stage`` wait (until cancelled or released).

    Returns (reached, release): ``reached`` is set when the attempt got there."""
    store = svc.services.store
    real = store.report_progress
    reached = asyncio.Event()
    gate = asyncio.Event()

    async def held(task_id: str, epoch: int, at: str, progress: float) -> Any:
        if str(at) == stage and not gate.is_set():
            reached.set()
            await gate.wait()
        return await real(task_id, epoch, at, progress)

    store.report_progress = held
    return reached, gate.set


async def assert_cancelled_and_gone(svc: Service, task: dict, marker: str) -> dict:
    """The cancel's consistent outcome: cancelled, recorded, and nothing of the document left."""
    final = await wait_for_task(svc.client, task["task_id"], expect="cancelled")
    assert final["history"] and final["history"][-1]["outcome"] == "cancelled", final
    assert (await svc.client.get(f"/documents/{task['doc_id']}")).status_code == 404
    assert marker not in await context_for(svc, f"{marker} project")

    # Removed by the task's end-of-task step, which runs just after the final status is written.
    async def upload_gone() -> bool:
        return not [p for p in upload_files(svc.settings.uploads_dir) if p.name.startswith(task["task_id"])]

    await wait_until(upload_gone, timeout=10, message="the cancelled upload's file is removed")
    return final


async def resubmit_completes(svc: Service, name: str, data: bytes, marker: str) -> None:
    """No lock, guard or stale state of the cancelled task blocks the same document afterwards."""
    again = await upload(svc.client, name, data)
    assert again.status_code == 202 and not again.json()["duplicate"], again.text
    await wait_for_task(svc.client, again.json()["task_id"], expect="completed", timeout=150)
    assert marker in await context_for(svc, f"{marker} project")


@pytest.mark.parametrize(
    "stage",
    [Stage.PARSING, Stage.CHUNKING, Stage.EXTRACTING, Stage.MERGING, Stage.DONE],
    ids=["parsing", "chunking", "extracting", "merging", "indexed-not-yet-recorded"],
)
async def test_cancel_at_each_stage_leaves_nothing_behind(tmp_path, redis_url, stage: Stage) -> None:
    """Catches a cancel that is lost or half-done at a stage boundary: a task stuck `cancelling`, a
    document left in the knowledge base (worst at `done`: indexed, not yet recorded completed), an
    upload file or doc lock left behind so that the same document cannot be submitted again."""
    marker = f"Moment{stage.value.replace('-', '')}x"
    data = story("harbour cranes", marker, 40).encode()
    with MockServer(MockConfig(latency=0.2)) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, chunk_token_size=200, llm_max_async=2)
        async with start_service(settings) as svc:
            reached, release = hold_at(svc, stage.value)
            task = (await upload(svc.client, "moment.txt", data)).json()
            try:
                await wait_until(lambda: asyncio.sleep(0, result=reached.is_set()), message=f"stage {stage}")
            except AssertionError:
                view = (await svc.client.get(f"/task/{task['task_id']}")).json()
                raise AssertionError(f"the task never reported stage {stage}: {view}") from None
            cancel = await svc.client.delete(f"/task/{task['task_id']}")
            assert cancel.status_code == 202 and cancel.json()["status"] == "cancelling", cancel.text
            await assert_cancelled_and_gone(svc, task, marker)
            release()
            await resubmit_completes(svc, "moment.txt", data, marker)


async def test_cancel_just_after_completion_is_409_and_keeps_the_document(tmp_path, redis_url) -> None:
    """Catches a cancel of a completed task that is accepted (202) or that deletes the document the
    client was told is indexed."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        task = (await upload(svc.client, "done.txt", story("quays", "Justdone").encode())).json()
        await wait_for_task(svc.client, task["task_id"], expect="completed")
        refused = await svc.client.delete(f"/task/{task['task_id']}")
        assert refused.status_code == 409 and refused.json()["code"] == "task_finished", refused.text
        view = (await svc.client.get(f"/task/{task['task_id']}")).json()
        assert view["status"] == "completed" and not view["cancel_requested"], view
        assert (await svc.client.get(f"/documents/{task['doc_id']}")).status_code == 200
        assert "Justdone" in await context_for(svc, "Justdone project")


async def test_cancel_during_retry_backoff_ends_the_task_without_waiting_out_the_backoff(
    tmp_path, redis_url
) -> None:
    """Catches a cancel that waits for the retry backoff to expire (or is lost because the task is in
    the delayed queue, not running), and a cancelled task that is retried anyway."""
    config = MockConfig(error_rate=1.0, error_status=503, error_endpoints=["chat"], retry_after=0.01)
    with MockServer(config) as mock:
        settings = llm_settings(
            tmp_path, redis_url, mock, llm_max_retries=1, retry_base_seconds=600, retry_max_seconds=600
        )
        async with start_service(settings) as svc:
            task = (await upload(svc.client, "flaky.txt", story("ferries", "Backoffcancel").encode())).json()
            backoff = Stage.RETRY_WAIT.value
            waiting = await wait_for_status(svc.client, task["task_id"], "pending", stage=backoff)
            assert waiting["attempt"] == 1 and waiting["not_before"], waiting
            assert waiting["history"][-1]["outcome"] == "retry", waiting
            calls = mock_stats(mock)["calls"]
            cancel = await svc.client.delete(f"/task/{task['task_id']}")
            assert cancel.status_code in (200, 202), cancel.text
            # Far less than the 600 s backoff: the cancel is handled at once.
            final = await wait_for_task(svc.client, task["task_id"], expect="cancelled", timeout=60)
            assert final["history"][-1]["outcome"] == "cancelled", final
            assert mock_stats(mock)["calls"].get("chat", 0) == calls.get("chat", 0), "retried after cancel"
            assert (await svc.client.get(f"/documents/{task['doc_id']}")).status_code == 404


async def test_cancel_from_another_instance_stops_the_running_attempt(tmp_path, redis_url) -> None:
    """Catches a cancel that only works on the instance running the task: asked on another instance
    (same Redis), the running attempt must stop, its LLM work must end and its data be purged."""
    shared = dict(upload_dir=tmp_path / "uploads")
    with MockServer(MockConfig()) as mock:
        runner_settings = llm_settings(
            tmp_path / "a", redis_url, mock, llm_max_async=1, chunk_token_size=200, **shared
        )
        other_settings = llm_settings(tmp_path / "b", redis_url, mock, **shared)
        async with start_service(runner_settings) as a:
            async with start_service(other_settings, prefix=a.prefix) as b:
                await b.services.runner.stop(grace_seconds=0)  # only instance a runs tasks
                await hold(mock, "extract", "glean")  # instance a's attempt waits in its first call
                data = story("locks", "Crosscancel", 30).encode()
                task = (await upload(b.client, "cross.txt", data)).json()
                await wait_held(mock)
                calls_at_cancel = extraction_calls(mock_stats(mock))
                cancel = await b.client.delete(f"/task/{task['task_id']}")
                assert cancel.status_code == 202 and cancel.json()["status"] == "cancelling", cancel.text
                final = await wait_for_task(b.client, task["task_id"], expect="cancelled")
                assert final["history"][-1]["outcome"] == "cancelled", final
                # Instance a stopped the attempt: once the held call is answered, at most its
                # gleaning follows. Several chunks at one call at a time: a live attempt would go
                # on with its next chunks' calls.
                await release(mock)
                await wait_until(
                    lambda: asyncio.to_thread(lambda: mock_stats(mock)["in_flight"] == 0),
                    message="the held call answered",
                )
                assert extraction_calls(mock_stats(mock)) - calls_at_cancel <= 2
                assert (await a.client.get(f"/documents/{task['doc_id']}")).status_code == 404
                assert "Crosscancel" not in await context_for(a, "Crosscancel project")
