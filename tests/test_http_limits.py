"""Real processes under every launcher of `main:app` (`python main.py`, `uvicorn main:app`, gunicorn's
UvicornWorker): header blocks are bounded in size, count and time before the app or authentication
runs, and a connection that says nothing is closed (issue 12 item 10, issue 25 items 6 and 10: under
`uvicorn main:app` a 32 MB header used to be answered 200, the bounds lived only in `python main.py`)."""

from __future__ import annotations

import json
import re
import socket
import time

import httpx
import psutil
import pytest

from tests.procs import (
    LAUNCHERS,
    ROOT,
    Listener,
    kill_embedded_redis,
    service_env,
    start_service,
    stop_process,
)

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]


def _read_response(sock: socket.socket, timeout: float = 20.0) -> tuple[int, dict]:
    sock.settimeout(timeout)
    data = b""
    try:
        while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except ConnectionResetError:
        pass  # the server closed with unread bytes of ours: what it sent before is in ``data``
    head, _, body = data.partition(b"\r\n\r\n")
    if not head:
        return 0, {}
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _rss_kb(pid: int) -> int:
    """The service's resident memory: the process and its children (gunicorn's worker), not the
    embedded redis-server."""
    root = psutil.Process(pid)
    tree = [root, *root.children(recursive=True)]
    return sum(p.memory_info().rss for p in tree if "redis" not in p.name()) // 1024


@pytest.fixture(scope="module", params=LAUNCHERS)
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    with Listener() as http:
        env = service_env(tmp / "data", http, HEADER_TIMEOUT_SECONDS="1.5")
        proc = start_service(env, tmp / "service.log", launcher=request.param)
        yield proc, http.port
        stop_process(proc)
        kill_embedded_redis(tmp / "data")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


def _send_until_cut(sock: socket.socket, data_size: int, chunk: bytes) -> int:
    """Send up to ``data_size`` bytes of ``chunk``s; how many went out before the server cut us off."""
    sent = 0
    try:
        while sent < data_size:
            sock.sendall(chunk)
            sent += len(chunk)
    except OSError:
        pass  # the server answered and closed the connection
    return sent


def test_a_32_mb_header_is_cut_off_with_431(server) -> None:
    """Catches header bounds that depend on the launcher: under `uvicorn main:app` a 32 MB header to
    /health was read whole and answered 200. Every launcher cuts it off early with a JSON 431."""
    _, port = server
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: ")
        sent = _send_until_cut(sock, 32 * 1024 * 1024, b"a" * (256 * 1024))
        if sent == 32 * 1024 * 1024:
            sock.sendall(b"\r\n\r\n")
        status, body = _read_response(sock)
    assert sent < 32 * 1024 * 1024, "the server read the whole 32 MB header"
    assert status in (0, 431), status  # 0: the reset came before we could read the 431
    if status:
        assert body["code"] == "headers_too_large"


def test_oversized_header_is_431_json(server) -> None:
    """Catches an unbounded header parser: a 1 MB header line must be refused with a JSON 431."""
    _, port = server
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n")
        status, body = _read_response(sock)
    assert status == 431 and body["code"] == "headers_too_large"


def test_too_many_header_fields_is_431(server) -> None:
    """Catches a missing field-count bound (many small headers stay under the byte limit)."""
    _, port = server
    fields = b"".join(b"X-F%d: v\r\n" % i for i in range(150))
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
        status, body = _read_response(sock)
    assert status == 431 and body["code"] == "headers_too_large"


def test_stalled_header_block_is_closed_with_408(server) -> None:
    """Catches slowloris: a connection parked half-way through its headers must be answered 408
    and closed once HEADER_TIMEOUT_SECONDS (1.5 s here) have passed."""
    _, port = server
    with _connect(port) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        status, body = _read_response(sock, timeout=30)
    assert status == 408 and body["code"] == "header_timeout"


def test_a_connection_that_sends_nothing_is_closed(server) -> None:
    """Catches idle sockets held forever (20,000 of them took every file descriptor): a connection
    that never sends a byte is closed once HEADER_TIMEOUT_SECONDS have passed."""
    _, port = server
    with _connect(port) as sock:
        sock.settimeout(30)
        assert sock.recv(1024) == b""  # EOF from the server, not our 30 s timeout


def test_many_unterminated_huge_headers_cost_bounded_memory(server) -> None:
    """Catches per-connection header buffering: 30 clients each trying to send 16 MB of one header
    must each be cut off early, and the server must not grow by anything like 30 x 16 MB."""
    proc, port = server
    before = _rss_kb(proc.pid)
    sockets = [_connect(port) for _ in range(30)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /insert HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        sent_per_socket = [_send_until_cut(s, 16 * 1024 * 1024, b"b" * (256 * 1024)) for s in sockets]
        growth_mb = (_rss_kb(proc.pid) - before) / 1024
    finally:
        for sock in sockets:
            sock.close()
    assert all(sent < 16 * 1024 * 1024 for sent in sent_per_socket), "a connection took all 16 MB"
    # Buffering the headers would cost 30 x 16 MB = 480 MB; the bound is far above a busy machine's noise.
    assert growth_mb < 200, f"server grew by {growth_mb:.0f} MB"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if httpx.get(f"http://127.0.0.1:{port}/health", timeout=10).status_code == 200:
            break
        time.sleep(0.2)
    else:
        raise AssertionError("the server did not serve normal requests afterwards")


def test_normal_requests_with_bodies_still_work(server) -> None:
    """Catches a bound that counts body bytes as header bytes: a 3 MB upload in one go is fine."""
    _, port = server
    response = httpx.post(
        f"http://127.0.0.1:{port}/insert/text", json={"text": "Bounded headers, " * 150_000}, timeout=60
    )
    assert response.status_code == 202, response.text  # 2.5 M characters, below MAX_TEXT_CHARS
    upload = httpx.post(
        f"http://127.0.0.1:{port}/insert",
        files={"file": ("big.txt", b"Plain text body line.\n" * 150_000)},
        timeout=60,
    )
    assert upload.status_code == 202, upload.text


def test_the_docker_image_starts_a_tested_launcher() -> None:
    """Catches a Dockerfile whose CMD starts the service some way these tests do not cover."""
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    command = re.search(r"^CMD \[(.+)\]$", dockerfile, re.M)
    assert command is not None
    argv = json.loads(f"[{command.group(1)}]")
    assert " ".join(argv) in LAUNCHERS, argv
