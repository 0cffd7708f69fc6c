"""Every way an upload can be wrong gets a 4xx JSON error and leaves nothing behind."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers import Service, make_pdf, make_settings, start_service, upload, upload_files

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


def leftovers(svc: Service) -> list[Path]:
    return list(upload_files(svc.settings.uploads_dir))


async def assert_nothing_stored(svc: Service) -> None:
    assert leftovers(svc) == []
    stats = (await svc.client.get("/api/queue/stats")).json()
    assert sum(stats["counts"].values()) == 0 and stats["pending"] == 0


@pytest.fixture
async def small(tmp_path, redis_url):
    async with start_service(make_settings(tmp_path, redis_url, max_upload_bytes=10_000)) as svc:
        yield svc


async def test_oversize_upload_is_cut_off_with_413(small: Service) -> None:
    response = await upload(small.client, "big.txt", b"a" * 50_000)
    assert response.status_code == 413
    assert response.json()["code"] == "too_large"
    await assert_nothing_stored(small)


async def test_oversize_streamed_without_content_length(small: Service) -> None:
    """No Content-Length: the limit must be enforced on the bytes as they stream in."""
    boundary = "testboundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="big.txt"\r\n'
        "Content-Type: text/plain\r\n\r\n"
    ).encode()
    sent = 0

    async def body():
        nonlocal sent
        yield head
        for _ in range(100):  # 100 x 1 KB, limit is 10 KB
            sent += 1
            yield b"b" * 1024
        yield f"\r\n--{boundary}--\r\n".encode()

    response = await small.client.post(
        "/insert", content=body(), headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert response.status_code == 413
    assert sent < 100, "the server kept reading after the limit"
    await assert_nothing_stored(small)


async def test_file_at_the_limit_is_accepted_and_one_byte_more_is_413(small: Service) -> None:
    """Catches an off-by-one in MAX_UPLOAD_BYTES either way (the limit refused, limit + 1 kept)
    and a stored file that is not the bytes sent. The runner is held so the file stays to be read."""
    await small.services.runner.stop(grace_seconds=0)
    at_limit = await upload(small.client, "edge.txt", b"c" * 10_000)
    assert at_limit.status_code == 202, at_limit.text
    assert at_limit.json()["file_size"] == 10_000
    [stored] = leftovers(small)
    assert stored.read_bytes() == b"c" * 10_000
    over = await upload(small.client, "over.txt", b"d" * 10_001)
    assert over.status_code == 413 and over.json()["code"] == "too_large", over.text
    assert leftovers(small) == [stored]


@pytest.mark.parametrize(
    ("name", "data", "status", "code"),
    [
        ("empty.txt", b"", 400, "empty_file"),
        ("tool.exe", b"MZ\x90\x00binary", 415, "unsupported_type"),
        ("noext", b"hello", 415, "unsupported_type"),
        ("fake.pdf", b"this is not a pdf at all", 415, "content_mismatch"),
        ("fake.docx", b"plain text pretending", 415, "content_mismatch"),
        ("binary.txt", b"\x00\x01\x02\x03" * 50, 415, "content_mismatch"),
    ],
)
async def test_rejected_uploads(service: Service, name: str, data: bytes, status: int, code: str) -> None:
    response = await upload(service.client, name, data)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    assert response.json()["detail"]
    await assert_nothing_stored(service)


async def test_not_multipart_missing_field_and_truncated(service: Service) -> None:
    plain = await service.client.post("/insert", content=b"hello", headers={"content-type": "text/plain"})
    assert plain.status_code == 400 and plain.json()["code"] == "not_multipart"

    wrong_field = await service.client.post("/insert", files={"document": ("a.txt", b"hello")})
    assert wrong_field.status_code == 400 and wrong_field.json()["code"] == "missing_file"

    boundary = "cutoff"
    truncated = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.txt"\r\n\r\nhalf of a file'
    ).encode()
    cut = await service.client.post(
        "/insert", content=truncated, headers={"content-type": f"multipart/form-data; boundary={boundary}"}
    )
    assert cut.status_code == 400 and cut.json()["code"] == "truncated"

    no_boundary = await service.client.post(
        "/insert", content=b"x", headers={"content-type": "multipart/form-data"}
    )
    assert no_boundary.status_code == 400
    await assert_nothing_stored(service)


@pytest.mark.parametrize(
    "evil",
    [
        "../../etc/passwd.txt",
        "..\\..\\windows\\win.ini.txt",
        "/abs/path/x.txt",
        "nul\x00byte.txt",
        "é" * 300 + ".txt",
        "  ..hidden.md",
    ],
)
async def test_hostile_filenames_are_stored_safely(service: Service, evil: str) -> None:
    """Catches a client file name reaching the file system (path traversal, NUL, overlong names).
    The runner is held so the stored file is still there to be checked (a check over no file
    would pass vacuously)."""
    await service.services.runner.stop(grace_seconds=0)
    response = await upload(service.client, evil, b"harmless text about the Velomire river")
    assert response.status_code == 202, response.text
    body = response.json()
    shown = body["filename"]
    assert "/" not in shown and "\\" not in shown and "\x00" not in shown and len(shown) <= 200
    stored = leftovers(service)
    # The only file written is inside the uploads dir, named by the task id, not by the client.
    assert len(stored) == 1, stored
    assert stored[0].parent == service.settings.uploads_dir and stored[0].name.startswith(body["task_id"])
    assert not (service.settings.data_dir.parent / "etc").exists()


async def test_bad_doc_id_and_bad_query_bodies(service: Service) -> None:
    response = await upload(service.client, "a.txt", b"hello", doc_id="../escape")
    assert response.status_code == 422 and response.json()["code"] == "invalid_doc_id"
    for body in (
        {},
        {"query": ""},
        {"query": "x", "mode": "telepathy"},
        {"query": "x", "top_k": 0},
        {"query": "x" * 9000},
    ):
        bad = await service.client.post("/query", json=body)
        assert bad.status_code == 422, (body, bad.text)
        assert bad.json()["code"] == "validation_error" and bad.json()["detail"]
    text = await service.client.post("/insert/text", json={"text": "   "})
    assert text.status_code == 400 and text.json()["code"] == "empty_text"
    await assert_nothing_stored(service)


async def test_unknown_task_and_document(service: Service) -> None:
    for method in ("GET", "DELETE"):
        response = await service.client.request(method, "/task/does-not-exist")
        assert response.status_code == 404 and response.json()["code"] == "task_not_found"
    assert (await service.client.get("/documents/nope")).status_code == 404
    assert (await service.client.delete("/documents/nope")).status_code == 404


async def test_corrupt_pdf_fails_the_task_with_a_clear_error(service: Service) -> None:
    broken = make_pdf(["Some text"])[:200]  # header intact, body cut
    response = await upload(service.client, "broken.pdf", broken)
    assert response.status_code == 202
    from tests.helpers import wait_for_task

    final = await wait_for_task(service.client, response.json()["task_id"])
    assert final["status"] == "failed" and final["error"]
    ttl = await service.services.redis.client.ttl(f"{service.prefix}task:{final['task_id']}")
    assert service.settings.ttl_failed_seconds - 60 < ttl <= service.settings.ttl_failed_seconds


@pytest.mark.parametrize("route", ["/insert", "/documents", "/batch"])
async def test_a_filename_that_is_not_utf8_is_a_clear_400(service: Service, route: str) -> None:
    """Catches the multipart parser's UnicodeDecodeError on a part header (`filename="\\xff.txt"`)
    escaping as a 500 internal_error: RFC 7578 part headers are UTF-8, so the request is refused
    with 400 part_header_not_utf8 and nothing is kept (on /batch, also a good file before it)."""
    field = "files" if route == "/batch" else "file"
    good = (
        f'--b\r\nContent-Disposition: form-data; name="{field}"; filename="ok.txt"\r\n'
        "Content-Type: text/plain\r\n\r\nA good file before the bad one.\r\n"
    ).encode()
    bad = (
        b'--b\r\nContent-Disposition: form-data; name="' + field.encode() + b'"; filename="\xff\xfe.txt"\r\n'
        b"Content-Type: text/plain\r\n\r\nSome text.\r\n--b--\r\n"
    )
    body = (good if route == "/batch" else b"") + bad
    response = await service.client.post(
        route, content=body, headers={"content-type": "multipart/form-data; boundary=b"}
    )
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "part_header_not_utf8", response.text
    await assert_nothing_stored(service)
