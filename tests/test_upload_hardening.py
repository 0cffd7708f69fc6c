"""Hardening of the upload path (issue 12, items 1, 2, 3, 5, 11, 13): what a hostile or unlucky client
could do to it before. Every test names the bug it catches; each failed on the code before the fix.

Real Redis, real LightRAG storage (offline LLM stand-in) and, where the HTTP server's behaviour is the
point (a stalled body), a real uvicorn process fed through a raw socket.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
import uuid
from pathlib import Path

import httpx
import pytest

from src.rag.knowledge import PurgeOutcome, PurgeResult
from tests.conftest import Service, make_settings, start_service, upload, wait_for_task
from tests.docs_factory import story
from tests.helpers import upload_files
from tests.procs import service_env, stop_process
from tests.procs import start_service as start_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]
ADMIN = {"Authorization": "Bearer admin-secret"}


def stored_files(svc: Service) -> list[Path]:
    return sorted(upload_files(svc.settings.uploads_dir))


async def task_count(svc: Service) -> int:
    stats = (await svc.client.get("/api/queue/stats")).json()
    return sum(stats["counts"].values())


# ----------------------------------------------------------------------------- item 1
async def test_two_file_parts_are_refused_and_nothing_is_stored(service: Service) -> None:
    """Bug: with two `file` parts the first was silently dropped (its file reopened and truncated) while
    file_size and the content hash (so the default doc id) covered both parts: 202 for a document that
    was not what the record described. Now: 400 multiple_files, no file, no task."""
    first = story("lakes", "Firstpart").encode()
    second = story("hills", "Secondpart").encode()
    for files in (
        [("file", ("a.txt", first)), ("file", ("b.txt", second))],
        [("file", ("a.txt", first)), ("file", ("b.pdf", b"%PDF-1.4 not really"))],
    ):
        response = await service.client.post("/insert", files=files)
        assert response.status_code == 400, response.text
        assert response.json()["code"] == "multiple_files"
    assert stored_files(service) == []
    assert await task_count(service) == 0
    assert service.services.files.bytes_used == 0  # the partial file was un-accounted too


# ----------------------------------------------------------------------------- item 2
async def test_doc_id_with_a_trailing_newline_is_refused_by_every_route(service: Service) -> None:
    """Bug: `re.match` with a `$` anchor accepts "nl\\n" (`$` matches before a final newline), so
    /insert stored such an id in LightRAG while /insert/text refused it. Every route that takes a doc id
    (query string, form field, JSON body, path parameter) now answers 422 invalid_doc_id."""
    data = story("rivers", "Newline").encode()
    bad = "nl\n"
    answers = [
        await service.client.post("/insert", params={"doc_id": bad}, files={"file": ("a.txt", data)}),
        await service.client.post("/documents", params={"doc_id": bad}, files={"file": ("a.txt", data)}),
        await service.client.post("/insert", data={"doc_id": bad}, files={"file": ("a.txt", data)}),
        await service.client.post("/insert/text", json={"text": "some text", "doc_id": bad}),
        await service.client.get("/documents/nl%0A"),
        await service.client.delete("/documents/nl%0A"),
    ]
    for response in answers:
        assert response.status_code == 422, (response.request.url, response.text)
        assert response.json()["code"] == "invalid_doc_id", response.text
    for other in ("", "-lead", "x" * 129, "a b", "ünï"):
        response = await service.client.post("/insert/text", json={"text": "t", "doc_id": other})
        assert response.json()["code"] == "invalid_doc_id", (other, response.text)
    assert stored_files(service) == [] and await task_count(service) == 0
    ok = await service.client.post("/insert/text", json={"text": "fine", "doc_id": "ok-1.v2:x_y"})
    assert ok.status_code == 202, ok.text


# ----------------------------------------------------------------------------- item 3
async def test_idempotency_key_reused_for_another_request_is_refused(service: Service) -> None:
    """Bug: a reused Idempotency-Key with different content, doc id, route, priority or callback got the
    original task back with `duplicate: true` and the new content was dropped silently. Now the key
    stores the request's fingerprint: the same request gets the original task, any other 422."""
    key = {"Idempotency-Key": "retry-7"}
    data = story("moors", "Idemone").encode()
    first = await service.client.post("/insert", files={"file": ("a.txt", data)}, headers=key)
    assert first.status_code == 202, first.text
    task_id = first.json()["task_id"]

    same = await service.client.post("/insert", files={"file": ("a.txt", data)}, headers=key)
    assert same.status_code in (200, 202) and same.json()["duplicate"] and same.json()["task_id"] == task_id
    alias = await service.client.post("/documents", files={"file": ("a.txt", data)}, headers=key)
    assert alias.json()["task_id"] == task_id  # the alias of the same route is the same request

    others = [
        await service.client.post("/insert", files={"file": ("a.txt", data + b" more")}, headers=key),
        await service.client.post(
            "/insert", params={"doc_id": "other"}, files={"file": ("a.txt", data)}, headers=key
        ),
        await service.client.post(
            "/insert", params={"priority": 9}, files={"file": ("a.txt", data)}, headers=key
        ),
        await service.client.post(
            "/insert",
            params={"callback_url": "https://hooks.example.com/x"},
            files={"file": ("a.txt", data)},
            headers=key,
        ),
        await service.client.post("/insert/text", json={"text": data.decode()}, headers=key),
    ]
    for response in others:
        assert response.status_code == 422, response.text
        body = response.json()
        assert body["code"] == "idempotency_key_reused" and body["task_id"] == task_id
    assert await task_count(service) == 1
    assert len(stored_files(service)) <= 1  # the refused requests' files were removed
    final = await wait_for_task(service.client, task_id)
    assert final["status"] == "completed"
    again = await service.client.post("/insert", files={"file": ("a.txt", data)}, headers=key)
    assert again.status_code == 200 and again.json()["task_id"] == task_id


async def test_concurrent_requests_with_one_key_create_one_task(service: Service) -> None:
    """Bug it would catch: a check-then-create outside the create script, where two requests racing with
    one key could both create a task. The key is checked and recorded in the same Lua script."""
    key = {"Idempotency-Key": f"burst-{uuid.uuid4().hex}"}
    text = story("dunes", "Burstkey")
    answers = await asyncio.gather(
        *(service.client.post("/insert/text", json={"text": text}, headers=key) for _ in range(12))
    )
    assert all(a.status_code in (200, 202) for a in answers), [a.text for a in answers]
    assert len({a.json()["task_id"] for a in answers}) == 1
    assert sum(not a.json()["duplicate"] for a in answers) == 1
    assert await task_count(service) == 1


async def test_idempotency_keys_are_scoped_per_tenant(tmp_path, redis_url) -> None:
    """Bug it would catch: a key shared across tenants (tenant B reusing tenant A's key would get A's
    task, or a 422 that reveals A's request). Each tenant's key space is its own."""
    async with start_service(make_settings(tmp_path, redis_url, admin_token="admin-secret")) as svc:
        headers = {}
        for name in ("alpha", "beta"):
            tenant = await svc.client.post("/admin/tenants", json={"name": name}, headers=ADMIN)
            assert tenant.status_code == 201, tenant.text
            key = await svc.client.post(f"/admin/tenants/{name}/keys", json={"label": "t"}, headers=ADMIN)
            headers[name] = {"Authorization": f"Bearer {key.json()['api_key']}", "Idempotency-Key": "k1"}
        a = await svc.client.post("/insert/text", json={"text": "alpha text"}, headers=headers["alpha"])
        b = await svc.client.post("/insert/text", json={"text": "beta text"}, headers=headers["beta"])
        assert a.status_code == 202 and b.status_code == 202, (a.text, b.text)
        assert a.json()["task_id"] != b.json()["task_id"] and not b.json()["duplicate"]


# ----------------------------------------------------------------------------- item 5
async def test_reupload_while_a_delete_is_pending_is_not_answered_with_the_deleted_task(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Bug: while DELETE /documents waited (LightRAG's pipeline busy), a re-upload of the same content
    was answered `200 duplicate, completed`, and then the document was gone. The purge is held here
    with an event so the race is deterministic. Now: 409 doc_deleting meanwhile; after the delete a
    re-upload creates a new task that indexes the document again."""
    data = story("orchards", "Deletable").encode()
    first = (await upload(service.client, "d.txt", data)).json()
    assert (await wait_for_task(service.client, first["task_id"]))["status"] == "completed"
    doc_id = first["doc_id"]

    knowledge_bases = service.services.knowledge_bases
    original_purge = knowledge_bases.purge
    entered, release = asyncio.Event(), asyncio.Event()

    async def held_purge(tenant: str, doc: str, **_: object) -> PurgeResult:
        entered.set()
        await release.wait()
        return await original_purge(tenant, doc)

    monkeypatch.setattr(knowledge_bases, "purge", held_purge)
    deleting = asyncio.create_task(service.client.delete(f"/documents/{doc_id}"))
    await asyncio.wait_for(entered.wait(), 30)

    during = await upload(service.client, "d.txt", data)
    assert during.status_code == 409, during.text
    assert during.json()["code"] == "doc_deleting" and during.headers["Retry-After"]
    explicit = await upload(service.client, "d.txt", data, doc_id=doc_id)
    assert explicit.status_code == 409 and explicit.json()["code"] == "doc_deleting", explicit.text
    second_delete = await service.client.delete(f"/documents/{doc_id}")
    assert second_delete.status_code == 409 and second_delete.json()["code"] == "doc_deleting"

    release.set()
    deleted = await deleting
    assert deleted.status_code == 200, deleted.text
    assert (await service.client.get(f"/documents/{doc_id}")).status_code == 404

    after = await upload(service.client, "d.txt", data)
    assert after.status_code == 202 and not after.json()["duplicate"], after.text
    assert after.json()["task_id"] != first["task_id"]
    assert (await wait_for_task(service.client, after.json()["task_id"]))["status"] == "completed"
    assert (await service.client.get(f"/documents/{doc_id}")).json()["status"] == "processed"


async def test_failed_delete_gives_the_document_back_to_its_task(
    service: Service, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The "being deleted" mark must not outlive a delete that removed nothing: afterwards the same
    content is a duplicate of the completed task again (not a second indexing of a present document)."""
    data = story("ferns", "Keepme").encode()
    first = (await upload(service.client, "k.txt", data)).json()
    assert (await wait_for_task(service.client, first["task_id"]))["status"] == "completed"

    async def failing_purge(tenant: str, doc: str, **_: object) -> PurgeResult:
        return PurgeResult(doc, PurgeOutcome.FAILED, "refused")

    monkeypatch.setattr(service.services.knowledge_bases, "purge", failing_purge)
    failed = await service.client.delete(f"/documents/{first['doc_id']}")
    assert failed.status_code == 502 and failed.json()["code"] == "delete_failed"
    again = await upload(service.client, "k.txt", data)
    assert again.status_code == 200 and again.json()["task_id"] == first["task_id"], again.text


async def test_delete_and_reuploads_racing_for_real(service: Service) -> None:
    """The same race without any hook: three clients keep uploading the content while the delete runs.
    The delete is known to be under way once its "being deleted" mark is in Redis; an upload sent after
    that must be refused (409 doc_deleting) or, if the delete ended meanwhile, be a new task - never the
    task whose document is going away. After each round the document is indexed again. (The old code
    had no mark; the deterministic test above is the one that fails on it.)"""
    data = story("glens", "Racer").encode()
    redis = service.services.store.redis
    observed = 0
    for round_no in range(4):
        first = (await upload(service.client, "r.txt", data)).json()
        assert (await wait_for_task(service.client, first["task_id"]))["status"] == "completed"
        doc_id = first["doc_id"]
        lock = f"{service.prefix}doc:default:{doc_id}"
        deleting = asyncio.create_task(service.client.delete(f"/documents/{doc_id}"))

        async def uploader(deleting: asyncio.Task, lock: str, first: dict, round_no: int) -> None:
            nonlocal observed
            while not deleting.done():
                holder = await redis.get(lock) or ""
                marked = (holder.decode() if isinstance(holder, bytes) else holder).startswith("!")
                response = await upload(service.client, "r.txt", data)
                assert response.status_code in (200, 202, 409), response.text
                if marked:
                    observed += 1
                    if response.status_code == 409:
                        assert response.json()["code"] == "doc_deleting", response.text
                    else:
                        assert response.json()["task_id"] != first["task_id"], f"round {round_no}"

        await asyncio.gather(*(uploader(deleting, lock, first, round_no) for _ in range(3)))
        deleted = await deleting
        assert deleted.status_code in (200, 409), deleted.text
        after = await upload(service.client, "r.txt", data)
        assert after.status_code in (200, 202), after.text
        if deleted.status_code == 200:
            assert after.json()["task_id"] != first["task_id"], f"round {round_no}: deleted task returned"
        assert (await wait_for_task(service.client, after.json()["task_id"]))["status"] == "completed"
        document = await service.client.get(f"/documents/{doc_id}")
        assert document.status_code == 200 and document.json()["status"] == "processed", round_no
    assert observed, "no upload ran while a delete was under way; the race was not exercised"


# ----------------------------------------------------------------------------- item 13
async def test_uploads_are_refused_with_507_when_storage_is_short(tmp_path, redis_url) -> None:
    """Bug: nothing bounded the uploads directory or checked the disk, so uploads (and failed tasks'
    files) could fill it. Now 507 + Retry-After with a clear JSON message, and the tracked size goes
    down when a task's file is removed, so uploads are accepted again."""
    settings = make_settings(tmp_path, redis_url, max_uploads_dir_bytes=6000)
    async with start_service(settings) as svc:
        files = svc.services.files
        big = ("lorem ipsum " * 400).encode()  # 4800 bytes
        accepted = await upload(svc.client, "big.txt", big)
        assert accepted.status_code == 202, accepted.text
        assert files.bytes_used == len(big)
        refused = await upload(svc.client, "big2.txt", big + b"x")
        assert refused.status_code == 507, refused.text
        assert refused.json()["code"] == "insufficient_storage" and refused.headers["Retry-After"]
        assert "uploads directory is full" in refused.json()["detail"]
        text = await svc.client.post("/insert/text", json={"text": "y" * 2000})
        assert text.status_code == 507 and text.json()["code"] == "insufficient_storage"
        assert [p.name for p in stored_files(svc)] == [f"{accepted.json()['task_id']}.txt"]

        # The completed task's upload is removed, and the directory's tracked size shrinks with it.
        assert (await wait_for_task(svc.client, accepted.json()["task_id"]))["status"] == "completed"
        deadline = time.monotonic() + 30
        while files.bytes_used and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert files.bytes_used == 0 and stored_files(svc) == []
        assert (await upload(svc.client, "big2.txt", big + b"x")).status_code == 202

    settings = make_settings(tmp_path / "b", redis_url, min_free_disk_bytes=2**62)
    async with start_service(settings) as svc:
        refused = await upload(svc.client, "a.txt", b"hello world")
        assert refused.status_code == 507 and "free disk space" in refused.json()["detail"]
        assert stored_files(svc) == []


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param({"permanent_error": True}, id="permanent-provider-error"),
        pytest.param({"error_rate": 1.0, "error_status": 503}, id="dead-lettered-after-retries"),
        pytest.param(None, id="parse-error"),
    ],
)
async def test_failed_tasks_lose_their_upload_but_keep_their_error(tmp_path, redis_url, fault) -> None:
    """Bug: a permanently failed task kept its upload for the 7-day failed-task TTL (a way to fill the
    disk). The runner must call the handler's end-of-task hook for every final status, including a
    failure after the last retry (dead letter): the file goes, the error stays in the record."""
    from benchmarks.mock_llm import MockConfig, MockServer
    from tests.test_reliability import llm_settings

    with MockServer(MockConfig(error_endpoints=["chat"], **(fault or {}))) as mock:
        settings = llm_settings(tmp_path, redis_url, mock, llm_max_retries=0, max_attempts=2)
        async with start_service(settings) as svc:
            if fault is None:
                response = await upload(svc.client, "broken.pdf", b"%PDF-1.4\nthis is no pdf at all\n")
            else:
                response = await upload(svc.client, "f.txt", story("mires", "Failing").encode())
            assert response.status_code == 202, response.text
            task_id = response.json()["task_id"]
            assert len(stored_files(svc)) == 1
            final = await wait_for_task(svc.client, task_id, timeout=120)
            assert final["status"] == "failed" and final["error"], final
            if fault and "error_rate" in fault:
                assert final["failures"] == 2 and "gave up" in final["error"], final
            deadline = time.monotonic() + 30
            while stored_files(svc) and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert stored_files(svc) == [], "the failed task's upload was kept"
            assert svc.services.files.bytes_used == 0
            assert (await svc.client.get(f"/task/{task_id}")).json()["error"] == final["error"]


async def test_size_is_measured_at_start_up(tmp_path, redis_url) -> None:
    """The tracked size starts from what is on disk (files of tasks queued before a restart)."""
    settings = make_settings(tmp_path, redis_url)
    settings.uploads_dir.mkdir(parents=True)
    (settings.uploads_dir / "left-over.txt").write_bytes(b"z" * 1234)
    async with start_service(settings) as svc:
        assert svc.services.files.bytes_used == 1234


# ----------------------------------------------------------------------------- item 11 (process level)
def _multipart_head(boundary: str, total: int) -> bytes:
    return (
        f"POST /insert HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; boundary={boundary}"
        f"\r\nContent-Length: {total}\r\n\r\n"
    ).encode()


def _read_answer(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection (or ``timeout`` passes). A reset
    ends it too: a server that closes with body bytes unread sends RST (``b""`` may then be all)."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    except TimeoutError:
        pytest.fail(f"the server neither answered nor closed the stalled connection: {data!r}")
    return data


def _assert_408(answer: bytes, log: Path, client_port: int, detail: bytes) -> None:
    """The 408 as read, or - when the connection was reset before the client could read it (the
    client was still sending) - as the service's access log records it for this connection."""
    if not answer:
        line = f':{client_port} - \\"POST /insert HTTP/1.1\\" 408'
        assert line in log.read_text(errors="replace"), f"no 408 for port {client_port} in the log"
        return
    assert answer.startswith(b"HTTP/1.1 408"), answer[:200]
    assert detail in answer, answer[:400]


def _parts(uploads: Path) -> list[Path]:
    return list(uploads.glob("*.part"))


def test_stalled_and_trickling_bodies_get_408_and_their_partial_file_is_removed(
    tmp_path, redis_url, listen
) -> None:
    """Bug: an upload that stopped mid-body was held open with its `.part` file indefinitely (65 s+
    observed). Now a real uvicorn process answers 408 (JSON, connection closed) once the body is idle
    for UPLOAD_IDLE_TIMEOUT_SECONDS, or averages below UPLOAD_MIN_BYTES_PER_SECOND after the grace
    period, and removes the partial file."""
    http = listen()
    port = http.port
    env = service_env(
        tmp_path / "data",
        http,  # no LLM needed: nothing is indexed
        REDIS_URL=redis_url,
        REDIS_PREFIX=f"t{uuid.uuid4().hex[:8]}:",
        UPLOAD_IDLE_TIMEOUT_SECONDS="2",
        UPLOAD_MIN_BYTES_PER_SECOND="2000",
        UPLOAD_MIN_RATE_GRACE_SECONDS="1",
    )
    uploads = tmp_path / "data" / "uploads"
    proc = start_process(env, tmp_path / "service.log")
    try:
        boundary = "hardeningboundary"
        preamble = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="s.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n"
        ).encode()
        # 1. Stalled: half the body arrives at once (well above the minimum rate), then nothing.
        half = preamble + b"a" * 50_000
        with socket.create_connection(("127.0.0.1", port)) as sock:
            stalled_port = sock.getsockname()[1]
            sock.sendall(_multipart_head(boundary, 100_000) + half)
            deadline = time.monotonic() + 10
            while not _parts(uploads) and time.monotonic() < deadline:
                time.sleep(0.05)
            assert _parts(uploads), "the partial file never appeared"
            answer = _read_answer(sock, timeout=30)
        _assert_408(answer, tmp_path / "service.log", stalled_port, b"no request body data for 2 s")
        if answer:
            body = json.loads(answer.split(b"\r\n\r\n", 1)[1])
            assert body["code"] == "upload_timeout", body
        assert _parts(uploads) == []

        # 2. Trickling: a few bytes now and then, never idle for 2 s but far below 2000 bytes/s.
        with socket.create_connection(("127.0.0.1", port)) as sock:
            client_port = sock.getsockname()[1]
            sock.sendall(_multipart_head(boundary, 100_000) + preamble)
            sock.settimeout(0.5)
            answer = b""
            for _ in range(120):
                try:
                    sock.sendall(b"b" * 10)
                except OSError:  # closed by the server
                    break
                try:
                    answer += sock.recv(65536)
                except TimeoutError:
                    continue
                except ConnectionResetError:
                    break
                if answer:
                    break
            answer += _read_answer(sock, timeout=30)
        _assert_408(answer, tmp_path / "service.log", client_port, b"slower than 2000 bytes/s")
        assert _parts(uploads) == [] and list(upload_files(uploads)) == []

        # The server is fine afterwards.
        ok = httpx.post(f"http://127.0.0.1:{port}/insert/text", json={"text": "still serving"}, timeout=30)
        assert ok.status_code == 202, ok.text
    finally:
        stop_process(proc)
