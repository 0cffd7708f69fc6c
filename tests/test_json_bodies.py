"""JSON request bodies against a real service process (issue 25 item 2): authentication before the
body is read, a byte limit declared and streamed, and the upload pace on JSON routes, under every
launcher (tests/test_json_body_bounds.py counts the bytes the app reads). The hostile round
measured a 300 MB body *without an API key* growing the service from 299 to 859 MB before its 401,
and JSON bodies that stopped mid-way held their connections forever."""

from __future__ import annotations

import json
import select
import socket
import time

import httpx
import psutil
import pytest

from tests.procs import LAUNCHERS, Listener, kill_embedded_redis, service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]
ADMIN = {"Authorization": "Bearer json-admin"}
MB = 1024 * 1024
BIG = 300 * MB


def _rss_mb(pid: int) -> float:
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if "redis" not in p.name()) / MB


@pytest.fixture(scope="module", params=LAUNCHERS)
def server(request, tmp_path_factory):
    """The service under each launcher: the bounds live in the app, so they hold under all of them."""
    tmp = tmp_path_factory.mktemp("json")
    with Listener() as http:
        env = service_env(
            tmp / "data",
            http,
            ADMIN_TOKEN="json-admin",
            UPLOAD_IDLE_TIMEOUT_SECONDS="1.5",
            MAX_TEXT_CHARS="1000000",
        )
        proc = start_service(env, tmp / "service.log", launcher=request.param)
        base = http.url
        assert httpx.post(f"{base}/admin/tenants", json={"name": "acme"}, headers=ADMIN).status_code == 201
        key = httpx.post(f"{base}/admin/tenants/acme/keys", json={}, headers=ADMIN).json()["api_key"]
        yield proc, http.port, key
        stop_process(proc)
        kill_embedded_redis(tmp / "data")


def _post_streaming(
    port: int, path: str, headers: bytes, total: int, *, chunked: bool
) -> tuple[int, dict, int]:
    """POST ``total`` bytes of JSON-looking body in 1 MB pieces until the server answers and cuts us
    off; returns (status, body, bytes of body sent)."""
    piece = b"[" + b"1," * (MB // 2 - 1) + b"1"
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        framing = b"transfer-encoding: chunked\r\n" if chunked else b"content-length: %d\r\n" % total
        sock.sendall(b"POST %s HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n" % path.encode()
                     + framing + headers + b"\r\n")  # fmt: skip
        sock.setblocking(False)
        answer = b""
        try:
            while sent < total:
                try:
                    data = sock.recv(65536)
                    if not data:
                        break
                    answer += data
                    if b"\r\n\r\n" in answer:
                        break  # the server answered: a client would stop sending now
                except BlockingIOError:
                    pass
                frame = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
                sock.setblocking(True)
                sock.settimeout(30)
                sock.sendall(frame)
                sock.setblocking(False)
                sent += len(piece)
        except OSError:
            pass  # reset by the server, which closed the connection after answering
        sock.setblocking(True)
        sock.settimeout(30)
        try:
            while b"\r\n\r\n" not in answer or not answer.rstrip().endswith(b"}"):
                data = sock.recv(65536)
                if not data:
                    break
                answer += data
        except OSError:
            pass
    head, _, body = answer.partition(b"\r\n\r\n")
    status = int(head.split(b" ", 2)[1]) if head else 0
    return status, json.loads(body) if body.strip().startswith(b"{") else {}, sent


def test_a_300_mb_body_without_a_key_is_refused_before_it_is_read(server) -> None:
    """Catches authentication after the body: without a key, a declared 300 MB body is 413 at once
    and a chunked one (length unknown) is 401 before its bytes are read; the service stays flat."""
    proc, port, _ = server
    before = _rss_mb(proc.pid)
    declared = _post_streaming(port, "/query", b"", BIG, chunked=False)
    streamed = _post_streaming(port, "/query", b"", BIG, chunked=True)
    growth = _rss_mb(proc.pid) - before
    assert declared[0] == 413 and declared[1]["code"] == "too_large", declared[:2]
    assert streamed[0] == 401 and streamed[1]["code"] == "missing_api_key", streamed[:2]
    assert declared[2] < 64 * MB and streamed[2] < 64 * MB, (declared[2], streamed[2])
    assert growth < 50, f"the service grew by {growth:.0f} MB for two refused bodies"


def test_the_refusal_reaches_a_client_that_is_still_sending(server) -> None:
    """Catches closing a connection with the client's bytes unread: the kernel then resets it and
    the client, still sending its body, lost the 413 it had been sent (the JSON error never
    arrived). The service sends its answer and FIN, drains what the client still sends for a
    bounded time (lingering close), and the client reads the whole answer."""
    _, port, _ = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"content-length: %d\r\n\r\n" % BIG + b"[" + b"1," * 32768
        )
        readable, _, _ = select.select([sock], [], [], 30)
        assert readable, "no answer to a 300 MB body without a key"
        # A client that has not looked at the answer yet keeps sending; nothing it sent is lost.
        sock.settimeout(30)
        for _ in range(16):
            sock.sendall(b"1," * 131072)
        answer, started = b"", time.monotonic()
        while True:
            data = sock.recv(65536)
            if not data:  # FIN: the service ended the connection cleanly
                break
            answer += data
        drained_for = time.monotonic() - started
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 413"), answer[:200]
    assert json.loads(body)["code"] == "too_large", body
    assert drained_for < 20, f"the connection stayed open {drained_for:.1f} s after the answer"


def test_a_300_mb_body_with_a_key_is_cut_off_at_the_limit(server) -> None:
    """Catches a JSON body read whole before any size check (4 x 500 MB to /query: +3.4 GB): with a
    valid key, a chunked 300 MB body to /insert/text (limit 6 x MAX_TEXT_CHARS + 64 KiB, about 6 MB
    here) and to /query (limit 1 MiB + its pictures, about 57 MB) is 413 once the limit is passed;
    the rest is not read and memory stays bounded."""
    proc, port, key = server
    auth = b"authorization: Bearer %s\r\n" % key.encode()
    before = _rss_mb(proc.pid)
    text = _post_streaming(port, "/insert/text", auth, BIG, chunked=True)
    query = _post_streaming(port, "/query", auth, BIG, chunked=True)
    growth = _rss_mb(proc.pid) - before
    assert text[0] == 413 and text[1]["code"] == "too_large", text[:2]
    assert query[0] == 413 and query[1]["code"] == "too_large", query[:2]
    assert text[2] < 64 * MB and query[2] < 128 * MB, (text[2], query[2])
    assert growth < 200, f"the service grew by {growth:.0f} MB"
    ok = httpx.post(
        f"http://127.0.0.1:{port}/insert/text",
        json={"text": "still fine"},
        headers={"Authorization": f"Bearer {key}"},
    )
    assert ok.status_code == 202, ok.text


def test_a_json_body_that_stops_mid_way_is_408(server) -> None:
    """Catches JSON routes without the uploads' body timeouts (1,500 bodies stopped mid-way held
    their connections): a body that stalls is answered 408 body_timeout after
    UPLOAD_IDLE_TIMEOUT_SECONDS (1.5 s here) and the connection is closed."""
    _, port, key = server
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /query HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 1000\r\n"
            b'authorization: Bearer %s\r\n\r\n{"query": "half' % key.encode()
        )
        answer = b""
        while chunk := sock.recv(65536):  # EOF: the server closed (our 30 s timeout would raise)
            answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:200]
    assert json.loads(body)["code"] == "body_timeout"
