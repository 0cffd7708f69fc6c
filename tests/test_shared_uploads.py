"""Several instances on one uploads directory, and the files crashes leave in it (issue 25 items 3
and 7): each instance removes only part files whose writer is provably gone, and stored uploads no
task refers to are swept once they are old enough. In-process services on real Redis; the kill -9
mid-batch case with real processes is in tests/test_restart.py."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from tests.docs_factory import story
from tests.helpers import make_settings, start_service, wait_for_task, wait_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]


async def test_a_second_instance_starting_keeps_the_first_ones_upload_in_flight(tmp_path, redis_url) -> None:
    """Catches start-up cleanup deleting every `.part` file of the shared directory: a second
    instance starting while the first streamed an upload removed its part file and the upload
    answered 500. Now the upload completes (202, then completed) and the second instance removed
    only the part file of an instance that is gone."""
    shared = tmp_path / "shared-uploads"
    first_settings = make_settings(tmp_path / "a", redis_url, upload_dir=shared)
    second_settings = make_settings(tmp_path / "b", redis_url, upload_dir=shared)
    text = story("estuaries", "Sharedir").encode()
    half, rest = text[: len(text) // 2], text[len(text) // 2 :]
    released = asyncio.Event()

    async def body():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="e.txt"\r\n\r\n' + half
        await released.wait()
        yield rest + b"\r\n--b--\r\n"

    async with start_service(first_settings) as first:
        uploading = asyncio.create_task(
            first.client.post(
                "/insert", content=body(), headers={"content-type": "multipart/form-data; boundary=b"}
            )
        )
        await wait_until(lambda: asyncio.sleep(0, result=list(shared.glob("*.part"))), message="streaming")
        (shared / "crashed-task.gone-instance.part").write_text("left by a dead instance")
        (shared / ".instances").mkdir(exist_ok=True)
        (shared / ".instances" / "gone-instance.lock").write_text("")  # its lock, no longer held
        async with start_service(second_settings, prefix=first.prefix) as second:
            assert second.services.instance_id != first.services.instance_id
            assert not (shared / "crashed-task.gone-instance.part").exists()
            released.set()
            response = await uploading
            assert response.status_code == 202, response.text
            await wait_for_task(first.client, response.json()["task_id"], expect="completed")


async def test_stored_uploads_no_task_refers_to_are_swept_once_old_enough(tmp_path, redis_url) -> None:
    """Catches complete uploads without a task staying on disk forever (only part files used to be
    swept): a stored file no record refers to is removed after ORPHAN_UPLOAD_SECONDS, while a
    pending task's upload, whatever its age, is kept and still indexed."""
    settings = make_settings(tmp_path, redis_url, orphan_upload_seconds=1.0, role="api")
    async with start_service(settings) as svc:
        accepted = await svc.client.post(
            "/insert", files={"file": ("k.txt", story("dunes", "Keepit").encode())}
        )
        assert accepted.status_code == 202, accepted.text
        uploads = svc.settings.uploads_dir
        kept = next(uploads.glob(f"{accepted.json()['task_id']}.*"))
        orphan = uploads / "5e1d0c2a-0000-4000-8000-000000000000.txt"
        orphan.write_text("a file whose task record was never written")
        past = time.time() - 10
        os.utime(kept, (past, past))  # the pending task's file is old too
        await wait_until(lambda: asyncio.sleep(0, result=not orphan.exists()), timeout=30, message="swept")
        assert kept.exists()
        assert (await svc.client.get(f"/task/{accepted.json()['task_id']}")).json()["status"] == "pending"
