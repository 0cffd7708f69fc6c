"""POST/GET/DELETE /batch through the HTTP API: many files in one request (seed 003).

Each file gets /insert's checks and its own error entry; whatever breaks the request itself refuses
the whole batch and leaves nothing on disk or in the queue; the batch's status is read from its
tasks; a cancel of the batch cancels what is still pending or running and nothing else.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.helpers import (
    ADMIN_TOKEN,
    Service,
    make_settings,
    make_tenant,
    start_service,
    story,
    upload_files,
    wait_for_status,
    wait_until,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

BOUNDARY = "batchboundary"
MULTIPART = {"content-type": f"multipart/form-data; boundary={BOUNDARY}"}


def parts(*files: tuple[str, bytes]) -> list[tuple[str, tuple[str, bytes]]]:
    return [("files", (name, data)) for name, data in files]


def part(name: str, data: bytes, field: str = "files", filename: bool = True) -> bytes:
    disposition = f'form-data; name="{field}"' + (f'; filename="{name}"' if filename else "")
    return f"--{BOUNDARY}\r\nContent-Disposition: {disposition}\r\n\r\n".encode() + data + b"\r\n"


END = f"--{BOUNDARY}--\r\n".encode()


def stored(svc: Service) -> list[str]:
    return sorted(p.name for p in upload_files(svc.settings.uploads_dir))


async def assert_nothing_kept(svc: Service) -> None:
    """No file on disk, no task, no batch: a refused batch leaves no trace."""
    assert stored(svc) == []
    stats = (await svc.client.get("/api/queue/stats")).json()
    assert sum(stats["counts"].values()) == 0 and stats["pending"] == 0, stats
    assert await svc.services.store.redis.keys(f"{svc.prefix}batch:*") == []


async def batch_done(svc: Service, batch_id: str, headers: dict | None = None) -> dict:
    async def probe() -> dict | None:
        response = await svc.client.get(f"/batch/{batch_id}", headers=headers)
        assert response.status_code == 200, response.text
        body = response.json()
        return body if body["done"] else None

    return await wait_until(probe, message=f"batch {batch_id} done")


@pytest.fixture
async def small(tmp_path, redis_url) -> AsyncIterator[Service]:
    settings = make_settings(
        tmp_path, redis_url, max_upload_bytes=10_000, max_batch_files=6, max_batch_bytes=200_000
    )
    async with start_service(settings) as svc:
        yield svc


async def test_batch_of_three_files_completes_and_reports_counts_progress_done(service: Service) -> None:
    files = parts(
        ("alpha.txt", story("tides", "Alphawren").encode()),
        ("beta.md", story("glaciers", "Betamorrow").encode()),
        ("gamma.txt", story("orchards", "Gammaquill").encode()),
    )
    response = await service.client.post("/batch", files=files, params={"priority": 7})
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["errors"] == [] and [t["filename"] for t in body["tasks"]] == [
        "alpha.txt",
        "beta.md",
        "gamma.txt",
    ]
    assert all(t["status"] == "pending" and not t["duplicate"] for t in body["tasks"])
    assert body["status_url"] == f"/batch/{body['batch_id']}" == response.headers["location"]
    for task in body["tasks"]:  # ordinary tasks, with the batch's options
        view = (await service.client.get(f"/task/{task['task_id']}")).json()
        assert view["priority"] == 7 and view["doc_id"] == task["doc_id"]

    final = await batch_done(service, body["batch_id"])
    assert final["total"] == 3 and final["counts"]["completed"] == 3 and final["progress"] == 100.0
    assert sum(final["counts"].values()) == 3 and set(final["counts"]) >= {"pending", "expired"}
    assert [t["status"] for t in final["tasks"]] == ["completed"] * 3
    assert [t["task_id"] for t in final["tasks"]] == [t["task_id"] for t in body["tasks"]]
    assert final["errors"] == [] and final["created_at"].endswith("Z")
    # The batch outlives its tasks' records.
    ttl = await service.services.store.redis.ttl(f"{service.prefix}batch:{body['batch_id']}")
    assert ttl >= service.settings.ttl_failed_seconds


async def test_bad_files_get_their_own_error_entries_and_the_good_ones_are_accepted(small: Service) -> None:
    """Catches one bad file failing the whole batch, or a bad file answered with another code than
    /insert gives it."""
    files = parts(
        ("big.txt", b"a" * 50_000),
        ("tool.exe", b"MZ\x90\x00binary"),
        ("good-one.txt", story("ferries", "Ferrowind").encode()),
        ("good-two.md", b"# Notes\n" + story("dunes", "Dunewhistle").encode()),
        ("empty.txt", b""),
        ("fake.pdf", b"not a pdf at all"),
    )
    response = await small.client.post("/batch", files=files)
    assert response.status_code == 202, response.text
    body = response.json()
    assert [t["filename"] for t in body["tasks"]] == ["good-one.txt", "good-two.md"]
    errors = {e["filename"]: (e["status_code"], e["error"]) for e in body["errors"]}
    assert errors == {
        "big.txt": (413, "too_large"),
        "tool.exe": (415, "unsupported_type"),
        "empty.txt": (400, "empty_file"),
        "fake.pdf": (415, "content_mismatch"),
    }
    assert all(e["detail"] for e in body["errors"])
    task_ids = {t["task_id"] for t in body["tasks"]}
    assert all(name.split(".")[0] in task_ids for name in stored(small)), stored(small)  # no .part left

    final = await batch_done(small, body["batch_id"])
    assert final["counts"]["completed"] == 2 and final["errors"] == body["errors"]


async def test_too_many_parts_is_refused_whole_and_leaves_nothing(small: Service) -> None:
    """Catches a server that keeps reading and storing parts past MAX_BATCH_FILES, or that keeps the
    files (or tasks) of a refused batch."""
    sent = 0

    async def body() -> AsyncIterator[bytes]:
        nonlocal sent
        for i in range(40):
            sent += 1
            yield part(f"doc{i}.txt", f"document number {i} ".encode() * 20)
        yield END

    response = await small.client.post("/batch", content=body(), headers=MULTIPART)
    assert response.status_code == 413, response.text
    assert response.json()["code"] == "too_many_files" and "6" in response.json()["detail"]
    assert sent < 40, "the server kept reading parts after the limit"
    await assert_nothing_kept(small)


async def test_batch_byte_bound_is_enforced_declared_and_streamed(small: Service) -> None:
    """MAX_BATCH_BYTES holds with a Content-Length (refused before reading) and without one."""
    files = parts(*[(f"f{i}.txt", bytes([97 + i]) * 9_000) for i in range(5)])  # each file fits
    declared = await small.client.post("/batch", files=files)
    assert declared.status_code == 202, declared.text  # 45 KB: within the 200 KB bound
    small.settings.max_batch_bytes = 30_000  # the same request is now over the bound
    refused = await small.client.post("/batch", files=files)
    assert refused.status_code == 413 and refused.json()["code"] == "too_large", refused.text

    async def streamed() -> AsyncIterator[bytes]:
        for i in range(5):
            yield part(f"s{i}.txt", bytes([97 + i]) * 9_000)
        yield END

    cut = await small.client.post("/batch", content=streamed(), headers=MULTIPART)
    assert cut.status_code == 413 and cut.json()["code"] == "too_large", cut.text
    assert "batch limit" in cut.json()["detail"]
    assert [name for name in stored(small) if name.endswith(".part")] == []


@pytest.mark.parametrize("route", ["/batch", "/insert"])
async def test_part_headers_and_other_fields_are_bounded(small: Service, route: str) -> None:
    """Catches a server that buffers an endless part header or a huge ignored field (the parser keeps
    header bytes in memory; ignored fields cost reading time)."""
    field = "files" if route == "/batch" else "file"

    async def streamed(*pieces: bytes) -> AsyncIterator[bytes]:  # no Content-Length, 4 KB chunks
        data = b"".join(pieces)
        for start in range(0, len(data), 4096):
            yield data[start : start + 4096]

    huge_field = part("note", b"x" * 200_000, field="note", filename=False)
    response = await small.client.post(
        route, content=streamed(huge_field, part("a.txt", b"hello", field), END), headers=MULTIPART
    )
    assert response.status_code == 400 and response.json()["code"] == "part_headers_too_large", response.text

    endless = f'--{BOUNDARY}\r\nContent-Disposition: form-data; name="{field}"; filename="'.encode()
    header = await small.client.post(route, content=streamed(endless, b"a" * 150_000), headers=MULTIPART)
    assert header.status_code == 400 and header.json()["code"] == "part_headers_too_large", header.text

    small.settings.max_upload_bytes = 1_000_000  # the byte limits are not what stops it
    small.settings.max_batch_bytes = 10_000_000
    big_field = part("note", b"x" * 500_000, field="note", filename=False) + part("a.txt", b"hello", field)
    bounded = await small.client.post(route, content=big_field + END, headers=MULTIPART)
    assert bounded.status_code == 400 and bounded.json()["code"] == "part_headers_too_large", bounded.text
    await assert_nothing_kept(small)


async def test_no_files_and_malformed_bodies_are_400_json(service: Service) -> None:
    only_field = await service.client.post(
        "/batch", content=part("note", b"hi", "note", False) + END, headers=MULTIPART
    )
    assert only_field.status_code == 400 and only_field.json()["code"] == "missing_file", only_field.text
    empty = await service.client.post("/batch", content=END, headers=MULTIPART)
    assert empty.status_code == 400 and empty.json()["code"] in ("missing_file", "bad_multipart"), empty.text
    plain = await service.client.post("/batch", content=b"hello", headers={"content-type": "text/plain"})
    assert plain.status_code == 400 and plain.json()["code"] == "not_multipart"
    no_boundary = await service.client.post(
        "/batch", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400 and no_boundary.json()["code"] == "bad_multipart"

    truncated = part("a.txt", b"a whole first file") + f"--{BOUNDARY}\r\n".encode()
    truncated += b'Content-Disposition: form-data; name="files"; filename="b.txt"\r\n\r\nhalf of'
    cut = await service.client.post("/batch", content=truncated, headers=MULTIPART)
    assert cut.status_code == 400 and cut.json()["code"] == "truncated", cut.text

    broken = part("a.txt", b"a whole first file") + f"--{BOUNDARY}\r\nno colon header\rX\n\r\n".encode()
    bad = await service.client.post("/batch", content=broken + b"data\r\n" + END, headers=MULTIPART)
    assert bad.status_code == 400 and bad.json()["code"] == "bad_multipart", bad.text

    wrong = await service.client.post("/batch", files=parts(("a.txt", b"hello")), params={"priority": 12})
    assert wrong.status_code == 422 and wrong.json()["code"] == "validation_error"
    hook = await service.client.post(
        "/batch", files=parts(("a.txt", b"hello")), params={"callback_url": "ftp://x"}
    )
    assert hook.status_code == 422 and hook.json()["code"] == "invalid_callback_url"
    await assert_nothing_kept(service)


async def test_a_batch_with_no_file_accepted_is_refused_with_every_error(small: Service) -> None:
    """Catches a 202 with an empty task list (a batch nobody can act on) and a refusal that hides
    why each file was refused."""
    oversize = await small.client.post(
        "/batch", files=parts(("a.txt", b"a" * 20_000), ("b.txt", b"b" * 20_000))
    )
    assert oversize.status_code == 413, oversize.text
    body = oversize.json()
    assert body["code"] == "batch_rejected" and [e["error"] for e in body["errors"]] == ["too_large"] * 2

    mixed = await small.client.post("/batch", files=parts(("a.exe", b"MZ"), ("b.txt", b"")))
    assert mixed.status_code == 400, mixed.text
    assert mixed.json()["code"] == "batch_rejected"
    assert [(e["filename"], e["error"]) for e in mixed.json()["errors"]] == [
        ("a.exe", "unsupported_type"),
        ("b.txt", "empty_file"),
    ]
    await assert_nothing_kept(small)


async def test_duplicate_content_in_one_batch_is_one_task_flagged_duplicate(service: Service) -> None:
    data = story("meadows", "Twinnacle").encode()
    response = await service.client.post("/batch", files=parts(("one.txt", data), ("two.txt", data)))
    assert response.status_code == 202, response.text
    first, second = response.json()["tasks"]
    assert first["task_id"] == second["task_id"] and first["doc_id"] == second["doc_id"]
    assert (first["duplicate"], second["duplicate"]) == (False, True)
    assert (await service.client.get("/tasks")).json()["total"] == 1
    assert len(stored(service)) <= 1  # the duplicate's file was not kept
    final = await batch_done(service, response.json()["batch_id"])
    assert final["total"] == 2 and final["counts"]["completed"] == 2
    assert [t["duplicate"] for t in final["tasks"]] == [False, True]


def hold_slow_tasks(svc: Service) -> asyncio.Event:
    """Tasks of files named slow* wait at the start of their run until the event is set."""
    gate = asyncio.Event()
    handler = svc.services.runner.handler
    real = handler.run

    async def gated(task: Any, report: Any) -> Any:
        if task.filename.startswith("slow"):
            await gate.wait()
        return await real(task, report)

    handler.run = gated
    return gate


async def test_delete_batch_cancels_pending_and_running_tasks_and_leaves_completed_ones(
    tmp_path, redis_url
) -> None:
    """Catches a batch cancel that misses running (or pending) tasks, that touches a completed task
    (its own, or an earlier one a duplicate entry names), or that stumbles on a task named twice."""
    async with start_service(make_settings(tmp_path, redis_url, max_concurrent_tasks=2)) as svc:
        gate = hold_slow_tasks(svc)
        try:
            earlier = await svc.client.post("/insert", files={"file": ("other.txt", b"an earlier upload")})
            await wait_for_status(svc.client, earlier.json()["task_id"], "completed")
            files = parts(
                ("fast.txt", story("quays", "Fastwater").encode()),
                ("slow1.txt", story("cranes", "Slowone").encode()),
                ("slow2.txt", story("barges", "Slowtwo").encode()),
                ("slow3.txt", story("locks", "Slowthree").encode()),
                ("again.txt", b"an earlier upload"),  # a duplicate of a completed task
                ("slow3-copy.txt", story("locks", "Slowthree").encode()),  # a duplicate of slow3
            )
            response = await svc.client.post("/batch", files=files)
            assert response.status_code == 202, response.text
            batch = response.json()
            ids = {t["filename"]: t["task_id"] for t in batch["tasks"]}
            assert ids["again.txt"] == earlier.json()["task_id"]
            await wait_for_status(svc.client, ids["fast.txt"], "completed")

            async def two_running() -> dict | None:
                view = (await svc.client.get(f"/batch/{batch['batch_id']}")).json()
                return view if view["counts"]["processing"] == 2 else None

            view = await wait_until(two_running, message="two slow tasks running")
            assert view["counts"]["pending"] == 2 and not view["done"] and 0 < view["progress"] < 100

            cancel = await svc.client.delete(f"/batch/{batch['batch_id']}")
            assert cancel.status_code == 202, cancel.text
            outcomes = {t["filename"]: t["outcome"] for t in cancel.json()["tasks"]}
            assert outcomes == {
                "fast.txt": "finished",
                "slow1.txt": "cancelling",
                "slow2.txt": "cancelling",
                "slow3.txt": "cancelled",
                "again.txt": "finished",
                "slow3-copy.txt": "cancelled",
            }
            assert cancel.json()["counts"] == {"finished": 2, "cancelling": 2, "cancelled": 2}
            final = await batch_done(svc, batch["batch_id"])
        finally:
            gate.set()
        assert final["counts"]["completed"] == 2 and final["counts"]["cancelled"] == 4
        assert final["progress"] == 100.0
        assert (await svc.client.get(f"/documents/{batch['tasks'][0]['doc_id']}")).status_code == 200
        assert (await svc.client.get(f"/task/{ids['again.txt']}")).json()["status"] == "completed"

        again = await svc.client.delete(f"/batch/{batch['batch_id']}")
        assert again.status_code == 200, again.text
        assert {t["outcome"] for t in again.json()["tasks"]} == {"finished"}


async def test_expired_task_records_count_as_expired(service: Service) -> None:
    response = await service.client.post(
        "/batch", files=parts(("a.txt", b"first file"), ("b.txt", b"second file"))
    )
    batch = response.json()
    await batch_done(service, batch["batch_id"])
    await service.services.store.redis.delete(f"{service.prefix}task:{batch['tasks'][0]['task_id']}")
    view = (await service.client.get(f"/batch/{batch['batch_id']}")).json()
    assert view["counts"]["expired"] == 1 and view["counts"]["completed"] == 1 and view["done"]
    assert view["tasks"][0]["status"] == "expired" and view["progress"] == 100.0
    cancel = (await service.client.delete(f"/batch/{batch['batch_id']}")).json()
    assert [t["outcome"] for t in cancel["tasks"]] == ["expired", "finished"]


async def test_another_tenants_batch_and_unknown_ids_are_404(tmp_path, redis_url) -> None:
    async with start_service(make_settings(tmp_path, redis_url, admin_token=ADMIN_TOKEN)) as svc:
        alice = await make_tenant(svc, "alice")
        bob = await make_tenant(svc, "bob")
        response = await svc.client.post("/batch", files=parts(("a.txt", b"alice's file")), headers=alice)
        assert response.status_code == 202, response.text
        batch_id = response.json()["batch_id"]
        assert (await svc.client.get(f"/batch/{batch_id}", headers=alice)).status_code == 200
        for method in ("GET", "DELETE"):
            for headers, path in (
                (bob, f"/batch/{batch_id}"),
                (alice, "/batch/no-such-batch"),
                (alice, "/batch/" + "x" * 300),
            ):
                answer = await svc.client.request(method, path, headers=headers)
                assert answer.status_code == 404 and answer.json()["code"] == "batch_not_found", answer.text
        anonymous = await svc.client.get(f"/batch/{batch_id}")
        assert anonymous.status_code == 401
        view = await batch_done(svc, batch_id, headers=alice)
        assert view["counts"]["completed"] == 1  # bob's DELETE did not cancel it


async def test_openapi_documents_the_batch_routes(service: Service) -> None:
    spec = (await service.client.get("/openapi.json")).json()
    post = spec["paths"]["/batch"]["post"]
    body = post["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert body["properties"]["files"]["type"] == "array" and body["required"] == ["files"]
    assert post["summary"] and "MAX_BATCH_FILES" in post["description"]
    assert {p["name"] for p in post["parameters"]} == {"priority", "callback_url"}
    assert spec["paths"]["/batch/{batch_id}"]["get"]["summary"]
    assert spec["paths"]["/batch/{batch_id}"]["delete"]["summary"]


async def test_a_full_disk_or_queue_refuses_single_files_of_a_batch(tmp_path, redis_url) -> None:
    """Catches a storage or queue refusal of one file that fails (or leaks the files of) the whole
    batch: the files before it are kept and queued, the refused one is an entry with /insert's code."""
    big = ("lorem ipsum " * 400).encode()  # 4800 bytes; the directory takes 6000

    async def body() -> AsyncIterator[bytes]:  # no Content-Length: the bound is met mid-body
        yield part("first.txt", big) + part("second.txt", big.upper()) + END

    settings = make_settings(tmp_path / "disk", redis_url, max_uploads_dir_bytes=6000)
    async with start_service(settings) as svc:
        response = await svc.client.post("/batch", content=body(), headers=MULTIPART)
        assert response.status_code == 202, response.text
        assert [t["filename"] for t in response.json()["tasks"]] == ["first.txt"]
        [error] = response.json()["errors"]
        assert (error["filename"], error["status_code"], error["error"]) == (
            "second.txt",
            507,
            "insufficient_storage",
        )
        assert all(name.startswith(response.json()["tasks"][0]["task_id"]) for name in stored(svc))

    settings = make_settings(tmp_path / "queue", redis_url, tenant_max_pending=1, max_concurrent_tasks=1)
    async with start_service(settings) as svc:
        gate = hold_slow_tasks(svc)
        try:
            files = parts(*[(f"slow{i}.txt", f"document {i} ".encode() * 50) for i in range(4)])
            response = await svc.client.post("/batch", files=files)
            assert response.status_code == 202, response.text
            tasks, errors = response.json()["tasks"], response.json()["errors"]
            # One task may run and one wait: the others are refused by the tenant's queue limit.
            assert 1 <= len(tasks) <= 2 and len(tasks) + len(errors) == 4, response.text
            assert {(e["status_code"], e["error"]) for e in errors} == {(429, "tenant_queue_full")}
            kept = {name.split(".")[0] for name in stored(svc)}
            assert kept <= {t["task_id"] for t in tasks}, kept
        finally:
            gate.set()


async def test_a_full_queue_refuses_the_whole_batch_before_reading_its_body(tmp_path, redis_url) -> None:
    """Catches a batch that, on a full queue, is read (and its files stored) before being refused,
    or refused with anything but 429 queue_full + Retry-After (the README: refused whole, nothing
    kept). The same for a single upload: its 429 comes before its body is read."""
    settings = make_settings(tmp_path, redis_url, max_pending_tasks=2)
    async with start_service(settings) as svc:
        await svc.services.runner.stop(grace_seconds=0)  # the queue stays full
        for i in range(2):
            response = await svc.client.post("/insert/text", json={"text": f"document number {i}"})
            assert response.status_code == 202, response.text
        before = stored(svc)
        sent = 0

        async def body() -> AsyncIterator[bytes]:
            nonlocal sent
            for i in range(40):
                sent += 1
                yield part(f"doc{i}.txt", f"document number {i} ".encode() * 2000)
            yield END

        response = await svc.client.post("/batch", content=body(), headers=MULTIPART)
        assert response.status_code == 429, response.text
        assert response.json()["code"] == "queue_full" and int(response.headers["retry-after"]) > 0
        assert sent < 40, f"the server read {sent} parts of a batch it refused"
        assert stored(svc) == before
        assert await svc.services.store.redis.keys(f"{svc.prefix}batch:*") == []

        sent = 0

        async def one_file() -> AsyncIterator[bytes]:
            nonlocal sent
            yield part("big.txt", b"")[:-2]  # the part's headers, then its content in pieces
            for _ in range(200):
                sent += 1
                yield b"x" * 65536
            yield b"\r\n" + END

        single = await svc.client.post("/insert", content=one_file(), headers=MULTIPART)
        assert single.status_code == 429 and single.json()["code"] == "queue_full", single.text
        assert sent < 200, f"the server read {sent} of 200 pieces of an upload it refused"
        assert stored(svc) == before
        stats = (await svc.client.get("/api/queue/stats")).json()
        assert stats["pending"] == 2, stats
