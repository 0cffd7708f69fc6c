"""One task-running process per DATA_DIR (src/core/data_dir.py): a second one is refused at
start-up with a message that says why and what to do; api-role processes may share it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from src.core.data_dir import DataDirInUse, DataDirLock
from tests.helpers import make_settings, start_service
from tests.procs import ROOT, service_env

pytestmark = pytest.mark.integration


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    """Catches: two runners on one DATA_DIR both starting (they would overwrite each other's
    embedded knowledge bases and take back each other's leased tasks)."""
    first = DataDirLock(tmp_path, "inst-a")
    first.acquire()
    with pytest.raises(DataDirInUse) as refused:
        DataDirLock(tmp_path, "inst-b").acquire()
    message = str(refused.value)
    assert f"pid {os.getpid()}, instance inst-a" in message
    assert str(tmp_path) in message and "own DATA_DIR" in message
    first.release()
    again = DataDirLock(tmp_path, "inst-b")
    again.acquire()  # released (or its process died): the next one may start
    again.release()


async def test_a_worker_owns_its_data_dir_and_api_processes_may_share_it(
    tmp_path: Path, redis_url: str
) -> None:
    """Catches: the lock taken by an api-role process (api + worker on one DATA_DIR is the documented
    deployment), or not taken by a worker."""
    async with start_service(make_settings(tmp_path, redis_url, role="worker", instance_id="w1")) as worker:
        async with start_service(
            make_settings(tmp_path, redis_url, role="api", instance_id="a1"), worker.prefix
        ):
            pass
        with pytest.raises(DataDirInUse):
            async with start_service(make_settings(tmp_path, redis_url, instance_id="w2")):
                pass
    async with start_service(make_settings(tmp_path, redis_url, instance_id="w2")):
        pass  # stopped cleanly: the lock went with it


def test_the_refusal_reaches_the_operator(tmp_path: Path, redis_url: str) -> None:
    """Catches: a refusal that ends in an unexplained exit (the message must be in the output)."""
    lock = DataDirLock(tmp_path / "data", "inst-a")
    (tmp_path / "data").mkdir()
    lock.acquire()
    try:
        env = service_env(tmp_path / "data", None, REDIS_URL=redis_url, INSTANCE_ID="inst-b")
        result = subprocess.run(
            [sys.executable, "main.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
        )
    finally:
        lock.release()
    assert result.returncode != 0
    assert "is in use by another process that runs tasks" in result.stdout + result.stderr
