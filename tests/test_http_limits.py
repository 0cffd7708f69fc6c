"""Real uvicorn process (`python main.py`): header blocks are bounded in size, count and time
before the app or authentication runs (issue 12 item 10)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path

import httpx
import pytest

from tests.procs import Listener, kill_embedded_redis, service_env, start_service

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]


def _read_response(sock: socket.socket, timeout: float = 20.0) -> tuple[int, dict]:
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data or len(data) < data.find(b"\r\n\r\n") + 4 + _length(data):
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), json.loads(body) if body else {}


def _length(data: bytes) -> int:
    for line in data.split(b"\r\n\r\n", 1)[0].split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            return int(line.split(b":", 1)[1])
    return 0


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("limits")
    with Listener() as http:
        env = service_env(tmp / "data", http, HEADER_TIMEOUT_SECONDS="1.5")
        proc = start_service(env, tmp / "service.log")
        yield proc, http.port
        proc.terminate()
        proc.wait(timeout=30)
        kill_embedded_redis(tmp / "data")


def _connect(port: int) -> socket.socket:
    return socket.create_connection(("127.0.0.1", port), timeout=10)


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


def test_many_unterminated_huge_headers_cost_bounded_memory(server) -> None:
    """Catches per-connection header buffering: 30 clients each trying to send 16 MB of one header
    must each be cut off early, and the server must not grow by anything like 30 x 16 MB."""
    proc, port = server
    before = _rss_kb(proc.pid)
    sockets = [_connect(port) for _ in range(30)]
    sent_per_socket = []
    try:
        for sock in sockets:
            sock.sendall(b"POST /insert HTTP/1.1\r\nHost: x\r\nX-Huge: ")
        chunk = b"b" * (256 * 1024)
        for sock in sockets:
            sent = 0
            try:
                while sent < 16 * 1024 * 1024:
                    sock.sendall(chunk)
                    sent += len(chunk)
            except OSError:
                pass  # the server answered 431 and closed the connection
            sent_per_socket.append(sent)
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
