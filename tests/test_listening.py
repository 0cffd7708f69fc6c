"""How `python main.py` gets its socket: PORT=0 (the kernel picks, the log names it), an inherited
LISTEN_FD (a supervisor or test bound it first), and the clear refusals of a busy port or a
descriptor that is not a listening socket."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.procs import ROOT, logged_url, service_env, spawn_service, start_service, stop_process, wait_http

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]


def test_port_0_binds_a_free_port_and_logs_it(tmp_path: Path, redis_url: str) -> None:
    """Catches: PORT=0 refused by the settings, or served without saying where (nobody could reach it)."""
    log = tmp_path / "service.log"
    env = service_env(tmp_path / "data", None, REDIS_URL=redis_url, EMBEDDING_PROVIDER="hash")
    proc = start_service(env, log)  # finds the port in the log, then waits for /health there
    try:
        url = logged_url(log, "listening on ")
        assert url.startswith("http://127.0.0.1:") and not url.endswith(":0"), url
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    finally:
        stop_process(proc)


def test_an_inherited_socket_is_served_and_a_bad_one_or_a_busy_port_is_refused(
    tmp_path: Path, redis_url: str, listen
) -> None:
    """Catches: LISTEN_FD ignored (the service binding PORT instead: nothing would accept on the
    test's socket), a descriptor that is not listening accepted and then failing obscurely, a busy
    PORT ending in a traceback instead of one line saying which address."""
    http = listen()
    env = service_env(tmp_path / "data", http, REDIS_URL=redis_url, EMBEDDING_PROVIDER="hash")
    env["PORT"] = "1"  # must not be used: the inherited socket wins
    log = tmp_path / "service.log"
    proc = spawn_service(env, log)
    try:
        wait_http(f"{http.url}/health", timeout=120, proc=proc)
        assert logged_url(log, "listening on ") == http.url
        assert httpx.get(f"{http.url}/tasks", timeout=10).status_code == 200
    finally:
        stop_process(proc)

    with socket.socket() as unbound:  # a socket, but not listening
        fd = unbound.fileno()
        bad = {**env, "LISTEN_FD": str(fd)}
        refused = subprocess.run(
            [sys.executable, "main.py"], cwd=ROOT, env=bad, capture_output=True, text=True, timeout=120,
            pass_fds=(fd,),
        )  # fmt: skip
    assert refused.returncode != 0
    assert f"LISTEN_FD={fd} is not a listening stream socket" in refused.stderr, refused.stderr

    busy = {k: v for k, v in env.items() if k != "LISTEN_FD"}
    busy["PORT"] = str(http.port)  # still ours, and listening
    refused = subprocess.run(
        [sys.executable, "main.py"], cwd=ROOT, env=busy, capture_output=True, text=True, timeout=120
    )
    assert refused.returncode != 0
    assert f"cannot listen on 127.0.0.1:{http.port}" in refused.stderr, refused.stderr
    assert "Traceback" not in refused.stderr, refused.stderr
