"""The locustfile users run against their deployment works against a real server (short headless run)."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest

from tests.procs import ROOT, kill_embedded_redis, service_env, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]


def test_locustfile_runs_headless_without_failures(tmp_path: Path, listen) -> None:
    """Catches a locustfile that no longer matches the API (wrong paths or bodies show up as
    failures), that never reaches the endpoints it claims to exercise, or whose SSE follower no
    longer reads a task's events to the final one."""
    http = listen()
    env = service_env(tmp_path / "data", http)
    service = start_service(env, tmp_path / "service.log")
    try:
        result = subprocess.run(
            [
                sys.executable, "-m", "locust", "-f", str(ROOT / "benchmarks" / "locustfile.py"),
                "--host", http.url, "--headless", "-u", "8", "-r", "8", "-t", "10s",
                "--csv", str(tmp_path / "run"), "--only-summary", "--stop-timeout", "20",
            ],
            cwd=ROOT, capture_output=True, text=True, timeout=180,
            env={**env, "LOCUST_DOC_SENTENCES": "10", "LOCUST_POLL_SECONDS": "60", "LOCUST_PACE": "2"},
        )  # fmt: skip
    finally:
        stop_process(service)
        kill_embedded_redis(tmp_path / "data")
    with open(tmp_path / "run_stats.csv") as handle:
        rows = {row["Name"]: row for row in csv.DictReader(handle)}
    assert int(rows["Aggregated"]["Failure Count"]) == 0, result.stderr[-3000:]
    for name in (
        "/insert", "/task/{id} (upload)", "/query", "/tasks", "/api/queue/stats", "/insert/text",
        "/task/{id}/events", "task event delay", "stream to final",
    ):  # fmt: skip
        assert int(rows[name]["Request Count"]) > 0, f"{name} never requested: {sorted(rows)}"
    # The SSE follower saw its task's events, the last one final (else "stream to final" fails).
    assert int(rows["task event delay"]["Request Count"]) >= int(rows["stream to final"]["Request Count"])
