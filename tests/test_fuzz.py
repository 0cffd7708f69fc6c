"""Fuzz the whole HTTP API from its OpenAPI spec (schemathesis): no input may cause a server error."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from tests.conftest import free_port
from tests.procs import ROOT, wait_http

pytestmark = pytest.mark.timeout(600)


@pytest.mark.skipif(
    shutil.which("schemathesis") is None and not (Path(sys.executable).parent / "schemathesis").exists(),
    reason="schemathesis is not installed",
)
def test_openapi_fuzzing_finds_no_server_errors(tmp_path: Path, redis_url: str) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("REDIS_", "LLM_", "EMBEDDING_"))}
    env.update(
        DATA_DIR=str(tmp_path / "data"),
        PORT=str(port),
        REDIS_URL=redis_url,
        REDIS_PREFIX=f"fuzz{uuid.uuid4().hex[:8]}:",
        WORKSPACE="fuzz",
        EMBEDDING_PROVIDER="hash",
        LLM_PROVIDER="offline",
        LOG_LEVEL="WARNING",
        ADMIN_TOKEN="fuzz-admin",
    )
    log = open(tmp_path / "service.log", "wb")  # noqa: SIM115 - closed below
    service = subprocess.Popen([sys.executable, "main.py"], cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        wait_http(f"http://127.0.0.1:{port}/health", timeout=120)
        binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
        base = [
            binary,
            "run",
            f"http://127.0.0.1:{port}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            "25",
            "--seed",
            "20261123",
            "--request-timeout",
            "60",
        ]
        runs = {
            # The public API in open mode (no keys exist); /events is an endless stream by design.
            "public": [*base, "--exclude-path", "/events", "--exclude-path-regex", "^/admin"],
            # The admin API with its token.
            "admin": [*base, "--include-path-regex", "^/admin", "-H", "Authorization: Bearer fuzz-admin"],
        }
        for name, command in runs.items():
            result = subprocess.run(command, capture_output=True, text=True, timeout=270)
            summary = result.stdout.split("SUMMARY")[-1]
            passed = re.search(r"(\d+) passed", summary)
            failed = re.search(r"(\d+) failed", summary)
            assert result.returncode == 0 and passed and int(passed.group(1)) > 50 and not failed, (
                name,
                result.stdout[-4000:] + result.stderr[-2000:],
            )
    finally:
        service.terminate()
        service.wait(timeout=30)
        log.close()
