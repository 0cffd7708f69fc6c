"""The poll route's direct view (api/task_poll.py): the same document as `task_view` for every kind
of stored task (also in GET /tasks's page), and the middleware takes GET /task/{id} only."""

from __future__ import annotations

import json
import time

import pytest

from api.routes.tasks import list_tasks
from api.schemas import TaskList, TaskView
from api.task_poll import TaskPollMiddleware, task_view_json
from api.views import task_view
from src.tasks.models import Stage, TaskKind, TaskRecord, TaskStatus

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]
NOW = time.time()


def _records() -> list[TaskRecord]:
    base = dict(task_id="t-1", created_at=NOW, updated_at=NOW + 0.25)
    history = [
        {
            "attempt": 1,
            "owner": "a",
            "started_at": NOW,
            "ended_at": NOW + 2.5,
            "outcome": "crashed",
            "error": "x",
        },
        {
            "attempt": 2,
            "owner": "b",
            "started_at": NOW + 3,
            "ended_at": None,
            "outcome": "running",
            "error": "",
        },
    ]
    return [
        TaskRecord(**base),  # a fresh upload: every optional field empty
        TaskRecord(
            **base,
            tenant="acme",
            priority=9,
            kind=TaskKind.TEXT,
            doc_id="doc-1",
            filename="报告 2024 «final».txt",
            file_size=123_456,
            status=TaskStatus.COMPLETED,
            stage=Stage.DONE,
            progress=100.0,
            started_at=NOW + 1,
            finished_at=NOW + 5.123456,
            expires_at=NOW + 86400,
            attempt=2,
            failures=1,
            history=history,
            result={"doc_id": "doc-1", "chunks_count": 3, "resumed": False},
            callback_url="https://hooks.example.com/x?a=1",
            webhook={"delivered": True, "attempts": 1, "status_code": 200},
        ),
        TaskRecord(
            **base,
            kind=TaskKind.QUERY,
            status=TaskStatus.CANCELLING,
            stage=Stage.QUEUED,
            progress=33.333333333,
            cancel_requested=True,
            not_before=NOW + 7,
            error='failed: "quoted" \\ and \n newline',
            query={"query": "什么?", "mode": "mix", "options": {"top_k": 5}},
        ),
        *(TaskRecord(**base, status=status) for status in TaskStatus),
    ]


@pytest.mark.parametrize("record", _records(), ids=lambda r: f"{r.kind}-{r.status}-{r.attempt}")
def test_the_direct_view_is_the_task_view(record: TaskRecord) -> None:
    """Catches the poll route's document drifting from TaskView (a field added, a default or a
    timestamp format changed in one place only)."""
    stored = record.to_redis()
    expected = json.loads(task_view(TaskRecord.from_redis(stored)).model_dump_json())
    got = json.loads(task_view_json(stored))
    assert got == expected
    assert list(got) == list(TaskView.model_fields)


def test_hashes_written_by_the_lua_scripts_read_the_same() -> None:
    """The store's Lua scripts write some hashes themselves: empty history as cjson's ``{}``, fields
    left out or empty."""
    stored = {"task_id": "t-2", "created_at": str(NOW), "updated_at": str(NOW), "history": "{}", "stage": ""}
    expected = json.loads(task_view(TaskRecord.from_redis(stored)).model_dump_json())
    assert json.loads(task_view_json(stored)) == expected


@pytest.mark.parametrize(
    ("method", "path", "taken"),
    [
        ("GET", "/task/abc-123", True),
        ("GET", "/task/abc/events", False),
        ("GET", "/task/", False),
        ("GET", "/tasks", False),
        ("HEAD", "/task/abc", False),
        ("DELETE", "/task/abc", False),
        ("POST", "/task/abc", False),
    ],
)
async def test_the_middleware_takes_only_get_task_by_id(method: str, path: str, taken: bool) -> None:
    passed = []

    async def inner(scope, receive, send) -> None:
        passed.append(scope["path"])

    middleware = TaskPollMiddleware(inner, handlers={})
    polled = []

    async def poll(scope, receive, send) -> None:
        polled.append(scope["path"])

    middleware.poll = poll
    await middleware({"type": "http", "method": method, "path": path}, None, None)
    assert (polled, passed) == (([path], []) if taken else ([], [path]))


async def test_the_task_list_is_the_task_list_model() -> None:
    """Catches GET /tasks's direct page drifting from the TaskList model it documents."""
    rows = [record.to_redis() for record in _records()]

    class Tasks:
        async def stored_page(self, tenant: str, *, status, offset: int, limit: int):
            assert (tenant, status, offset, limit) == ("acme", None, 5, 50)
            return 99, rows

    response = await list_tasks("acme", Tasks(), status=None, limit=50, offset=5)
    views = [task_view(TaskRecord.from_redis(fields)) for fields in rows]
    expected = TaskList(total=99, offset=5, limit=50, tasks=views)
    assert response.media_type == "application/json"
    assert json.loads(response.body) == json.loads(expected.model_dump_json())
