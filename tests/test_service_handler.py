"""IngestHandler's end-of-task hooks, called directly (no Redis, no LightRAG): `after_final` drops a
finished task's upload, `forget` removes the files of an expired task. Both must never raise."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from src.ingestion.files import UNOWNED_PART_SECONDS, UploadFiles
from src.ingestion.handler import IngestHandler
from src.rag.delegated import DelegatedKnowledgeBases
from src.tasks.models import TaskRecord, TaskStatus
from tests.helpers import make_settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


class NobodyAnswers:
    async def answer(self, tenant: str, spec: object, *, priority: int = 5) -> str:
        raise AssertionError("the end-of-task hooks never query")


@pytest.fixture
def handler(tmp_path: Path) -> IngestHandler:
    settings = make_settings(tmp_path, None)
    settings.uploads_dir.mkdir(parents=True)
    knowledge_bases = DelegatedKnowledgeBases(settings, NobodyAnswers())  # no knowledge base is touched
    return IngestHandler(settings, knowledge_bases, UploadFiles(settings.uploads_dir))


def stored(handler: IngestHandler, task_id: str, suffix: str = ".txt") -> TaskRecord:
    path = handler.files.dir / f"{task_id}{suffix}"
    path.write_text("some document")
    return TaskRecord(
        task_id=task_id,
        doc_id=f"doc-{task_id}",
        filename="a.txt",
        stored_name=path.name,
        created_at=1.0,
        updated_at=1.0,
    )


@pytest.mark.parametrize("status", [TaskStatus.COMPLETED, TaskStatus.CANCELLED, TaskStatus.FAILED])
async def test_after_final_removes_the_upload_of_a_finished_task(handler: IngestHandler, status) -> None:
    """Catches uploads kept on disk after the task ended; FAILED included: a permanently failed
    task is never retried, so keeping its file only fills the disk (issue #12 item 13)."""
    task = stored(handler, f"t-{status.value}")
    other = stored(handler, "bystander")
    await handler.after_final(task, status)
    assert not handler.files.path(task.stored_name).exists()
    assert handler.files.path(other.stored_name).exists()


@pytest.mark.parametrize("status", [TaskStatus.PENDING, TaskStatus.PROCESSING, TaskStatus.CANCELLING])
async def test_after_final_keeps_the_upload_of_a_task_that_may_still_run(
    handler: IngestHandler, status
) -> None:
    """Catches deleting the file a retried or still-cancelling task needs."""
    task = stored(handler, "live")
    await handler.after_final(task, status)
    assert handler.files.path(task.stored_name).exists()


async def test_after_final_never_raises(handler: IngestHandler) -> None:
    """Catches a cleanup failure escaping into the runner after the outcome was recorded: a file
    already gone, a record without a file, and a removal the OS refuses (a directory)."""
    gone = stored(handler, "gone")
    handler.files.path(gone.stored_name).unlink()
    await handler.after_final(gone, TaskStatus.COMPLETED)
    await handler.after_final(gone.model_copy(update={"stored_name": ""}), TaskStatus.COMPLETED)
    (handler.files.dir / "dir.txt").mkdir()
    refused = gone.model_copy(update={"task_id": "dir", "stored_name": "dir.txt"})
    await handler.after_final(refused, TaskStatus.FAILED)
    assert (handler.files.dir / "dir.txt").is_dir()


async def test_forget_removes_every_leftover_of_that_task_only(handler: IngestHandler) -> None:
    """Catches expired tasks' files staying forever, and a glob that also matches other ids."""
    stored(handler, "expired", ".txt")
    stored(handler, "expired", ".part")
    stored(handler, "expired-not", ".txt")
    stored(handler, "kept", ".pdf")
    await handler.forget("expired")
    assert sorted(p.name for p in handler.files.dir.iterdir()) == ["expired-not.txt", "kept.pdf"]
    await handler.forget("expired")  # nothing left: still fine


async def test_forget_never_raises(handler: IngestHandler) -> None:
    """Catches a removal error escaping into the runner's sweep loop."""
    (handler.files.dir / "stuck.d").mkdir()
    await handler.forget("stuck")
    assert (handler.files.dir / "stuck.d").is_dir()


def test_part_files_are_removed_only_when_their_writer_is_provably_gone(tmp_path: Path) -> None:
    """Catches start-up cleanup deleting part files that a live instance sharing the directory is
    still writing (the second instance's start made the first one's upload answer 500), deleting
    complete uploads, or keeping the parts of a writer that is gone (a crashed earlier run of this
    instance, a dead instance, or an old unowned part) forever."""
    old = time.time() - 2 * UNOWNED_PART_SECONDS
    live = UploadFiles(tmp_path, instance_id="live-1")
    assert live.claim_instance()
    previous = UploadFiles(tmp_path, instance_id="me")  # this instance's crashed earlier run
    assert previous.claim_instance()
    dead = UploadFiles(tmp_path, instance_id="dead-1")
    assert dead.claim_instance()
    for files, task in ((live, "t1"), (previous, "t2"), (dead, "t3")):
        files.part_path(task).write_text("x")
    previous.release_instance()
    dead.release_instance()
    (tmp_path / "t4.gone-2.part").write_text("x")  # no lock file: age decides
    (tmp_path / "t5.gone-2.part").write_text("x")
    os.utime(tmp_path / "t5.gone-2.part", (old, old))
    (tmp_path / "t6.part").write_text("x")  # unowned, from an older version
    (tmp_path / "t7.part").write_text("x")
    os.utime(tmp_path / "t7.part", (old, old))
    (tmp_path / "0c1f2a3b-t8.txt").write_text("a stored upload")

    me = UploadFiles(tmp_path, instance_id="me")
    assert me.claim_instance()
    assert me.remove_abandoned_parts() == 3  # periodic pass: the dead instance's and the old ones
    assert (tmp_path / "t2.me.part").exists()  # its own are left to the start-up pass
    assert me.remove_abandoned_parts(own=True) == 1
    left = sorted(p.name for p in tmp_path.iterdir() if p.is_file())
    assert left == ["0c1f2a3b-t8.txt", "t1.live-1.part", "t4.gone-2.part", "t6.part"]
    twin = UploadFiles(tmp_path, instance_id="me")
    assert not twin.claim_instance()  # the same instance id alive twice: its files are left alone
    twin.part_path("t9").write_text("x")
    assert twin.remove_abandoned_parts(own=True) == 0 and me.remove_abandoned_parts() == 0
    live.release_instance()
    assert me.remove_abandoned_parts() == 1  # the live instance stopped: its part is abandoned now


def test_orphan_candidates_are_stored_uploads_past_their_age(tmp_path: Path) -> None:
    """Catches the orphan sweep looking at part files or foreign names, or at files just stored."""
    files = UploadFiles(tmp_path, instance_id="me")
    (tmp_path / "2f6c0d4e-aaaa.txt").write_text("stored")
    files.part_path("2f6c0d4e-bbbb").write_text("streaming")
    (tmp_path / "notes").write_text("not an upload name")
    assert files.orphans(older_than=60) == {}
    later = files.orphans(older_than=60, now=time.time() + 120)
    assert later == {"2f6c0d4e-aaaa": tmp_path / "2f6c0d4e-aaaa.txt"}
