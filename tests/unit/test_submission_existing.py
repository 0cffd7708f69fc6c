"""The answer to a duplicate upload when the task that holds the document cannot be shown: its record
expired between the store's check and the read, or it is another tenant's (a doc id shared across
tenants must never hand out another tenant's task). Real Redis, no app."""

from __future__ import annotations

import pytest

from src.ingestion.errors import DocConflict
from src.ingestion.submission import SubmissionService
from src.tasks.store import TaskStore
from tests.unit.helpers import record

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def submissions(store: TaskStore) -> SubmissionService:
    service = SubmissionService.__new__(SubmissionService)  # only the store is read here
    service.store = store
    return service


async def test_a_duplicate_of_a_vanished_or_foreign_task_is_409_never_that_task(store: TaskStore) -> None:
    """Catches a duplicate answered with a task of another tenant (a leak of its id, status and
    filename) or a crash on a record that expired meanwhile: both are 409 doc_in_progress."""
    service = submissions(store)
    with pytest.raises(DocConflict) as gone:
        await service._existing("acme", "expired-task")
    assert gone.value.context["task_id"] == "expired-task"

    await store.create(record("foreign", tenant="globex"))
    with pytest.raises(DocConflict):
        await service._existing("acme", "foreign")

    await store.create(record("own", tenant="acme"))
    accepted = await service._existing("acme", "own")
    assert accepted.duplicate and accepted.record.task_id == "own" and accepted.record.tenant == "acme"
