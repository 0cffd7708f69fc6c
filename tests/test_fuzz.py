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

from tests.procs import service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(600)]


@pytest.mark.skipif(
    shutil.which("schemathesis") is None and not (Path(sys.executable).parent / "schemathesis").exists(),
    reason="schemathesis is not installed",
)
def test_openapi_fuzzing_finds_no_server_errors(tmp_path: Path, redis_url: str, listen) -> None:
    http = listen()
    env = service_env(
        tmp_path / "data",
        http,
        REDIS_URL=redis_url,
        REDIS_PREFIX=f"fuzz{uuid.uuid4().hex[:8]}:",
        WORKSPACE="fuzz",
        EMBEDDING_PROVIDER="hash",
        LLM_PROVIDER="offline",
        LOG_LEVEL="WARNING",
        ADMIN_TOKEN="fuzz-admin",
    )
    service = start_service(env, tmp_path / "service.log")
    try:
        binary = shutil.which("schemathesis") or str(Path(sys.executable).parent / "schemathesis")
        base = [
            binary,
            "run",
            f"{http.url}/openapi.json",
            "--checks",
            "not_a_server_error",
            "--max-examples",
            # Per operation; every operation is fuzzed. A deeper run: FUZZ_MAX_EXAMPLES=200.
            os.environ.get("FUZZ_MAX_EXAMPLES", "15"),
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
        stop_process(service)
