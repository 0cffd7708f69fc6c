"""An idle-connection flood against a real service process whose open-files limit is small (512),
so that the flood of the hostile round (20,000 idle sockets) fits a test's budget (issue 25 item 6:
every route answered 503 for seconds and the embedded-Redis supervisor, unable to open a socket,
SIGKILLed a healthy redis-server)."""

from __future__ import annotations

import json
import os
import resource
import socket
from pathlib import Path

import httpx
import pytest

from tests.helpers import story, wait_sync
from tests.procs import embedded_redis_pid, kill_embedded_redis, service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]
ADMIN = {"Authorization": "Bearer flood-admin"}
#: The service's open-files limit: its connection cap is derived from it (256 with this limit).
SERVICE_FILES = 512


def _limit_files() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (SERVICE_FILES, SERVICE_FILES))


def _flood(port: int, source: str, count: int) -> list[socket.socket]:
    """``count`` connections from ``source`` that send nothing."""
    sockets = []
    for _ in range(count):
        sock = socket.socket()
        sock.bind((source, 0))
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sockets.append(sock)
    return sockets


def _answer(sock: socket.socket, timeout: float) -> bytes:
    """What the server sent before closing (b"" for a plain close), or b"open" if it said nothing."""
    sock.settimeout(timeout)
    data = b""
    try:
        while chunk := sock.recv(4096):
            data += chunk
    except TimeoutError:
        return b"open"
    except ConnectionResetError:
        pass
    return data


def _open_files(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_an_idle_connection_flood_leaves_the_service_answering(tmp_path: Path, listen) -> None:
    """Catches a service that lets idle sockets take every descriptor. Flooders on two addresses open
    1,500 idle connections each; each address may hold MAX_CONNECTIONS_PER_CLIENT (100) and the
    rest are answered 503 too_many_connections at once. Meanwhile a client on a third address gets
    /health 200 and an upload 202 (completed later: nothing acknowledged is lost), the embedded
    redis-server is neither killed nor restarted, and the held connections are closed after
    HEADER_TIMEOUT_SECONDS."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 20_000)), hard))
    data_dir = tmp_path / "data"
    http = listen()
    port, base = http.port, http.url
    env = service_env(
        data_dir,
        http,
        HEADER_TIMEOUT_SECONDS="20",
        MAX_CONNECTIONS_PER_CLIENT="100",
        ADMIN_TOKEN="flood-admin",
    )
    service = start_service(env, tmp_path / "service.log", preexec_fn=_limit_files)
    flood: list[socket.socket] = []
    try:
        redis_pid = embedded_redis_pid(data_dir)
        assert redis_pid is not None
        flood = _flood(port, "127.0.0.1", 1500) + _flood(port, "127.0.0.3", 1500)
        # The flood is live: the server accepted its backlog and holds 2 x 100 of it.
        wait_sync(lambda: _open_files(service.pid) >= 200, timeout=60, message="the flood accepted")

        bystander = httpx.Client(
            base_url=base, timeout=30, transport=httpx.HTTPTransport(local_address="127.0.0.2")
        )
        with bystander:
            assert bystander.get("/health").status_code == 200
            upload = bystander.post(
                "/insert", files={"file": ("b.txt", story("fens", "Floodproof").encode())}
            )
            assert upload.status_code == 202, upload.text
            details = bystander.get("/health", headers=ADMIN).json()
            assert details["redis"]["ok"] and details["redis"]["embedded"]["restarts"] == 0

            answers = [_answer(sock, timeout=60) for sock in flood]
            refused = [a for a in answers if a.startswith(b"HTTP/1.1 503")]
            assert len(refused) >= 2800, len(refused)  # all but the 2 x 100 held
            assert json.loads(refused[0].partition(b"\r\n\r\n")[2])["code"] == "too_many_connections"
            assert b"open" not in answers  # the held ones were closed after the header timeout

            task = upload.json()["task_id"]
            wait_sync(
                lambda: bystander.get(f"/task/{task}").json()["status"] == "completed",
                timeout=120,
                message="the upload made during the flood completes",
            )
            after = bystander.get("/health", headers=ADMIN).json()
        assert after["redis"]["embedded"]["restarts"] == 0
        assert embedded_redis_pid(data_dir) == redis_pid
        os.kill(redis_pid, 0)  # the same redis-server, alive
    finally:
        for sock in flood:
            sock.close()
        stop_process(service)
        kill_embedded_redis(data_dir)
