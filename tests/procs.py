"""Real processes for the process layer: the service (`python main.py`) and the mock LLM, port-safe.

No port race: a test never picks a "free" port, closes it and lets a child bind it later (anything,
often an outgoing connection's ephemeral port, can take it in between: `[Errno 98] address already in
use`). Instead:

* :class:`Listener`: this (test) process binds 127.0.0.1:0 and listens; the child serves on the
  inherited socket (``LISTEN_FD``, passed with ``pass_fds``; main.py's `listening_socket`). The port is
  known before the child starts and stays this test's while the listener is open, so a restarted
  service comes back on the same address. Use the ``listen`` fixture (tests/conftest.py), which closes
  its listeners at teardown::

      def test_x(tmp_path, listen):
          http = listen()
          env = service_env(tmp_path / "data", http, mock)   # LISTEN_FD + PORT of ``http``
          proc = start_service(env, tmp_path / "service.log")  # waits for http.url + "/health"
          httpx.get(f"{http.url}/tasks")

* :func:`start_mock_llm` returns a :class:`MockProcess` (a ``Popen``) serving on a listener of its
  own (``--fd``); ``mock.base_url`` goes to the service (``service_env(..., llm=mock)``). Hold its
  answers with ``hold_llm``/``release_llm``/``wait_held_sync`` (tests/helpers.py) instead of giving
  it a latency to wait out.
* Redis (``redis_url``, ``start_redis_server`` in tests/conftest.py) and PostgreSQL (tests/pg.py)
  listen on UNIX sockets only; the service's embedded Redis does too.
* :func:`refused_url`: an address where nothing answers (bound, not listening: connections are
  refused at once) for tests of an unreachable service.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx

from tests.helpers import embedding_provider_for_tests, scrubbed_env, wait_http, wait_sync

__all__ = [
    "LAUNCHERS",
    "ROOT",
    "Listener",
    "MockProcess",
    "embedded_redis_pid",
    "kill_embedded_redis",
    "logged_url",
    "refused_url",
    "service_env",
    "start_mock_llm",
    "start_service",
    "statuses",
    "stop_process",
    "terminate_and_wait",
    "wait_http",
]

ROOT = Path(__file__).resolve().parent.parent

#: Every child this module started, with the data dir of the services among them: what a failed test
#: left running is stopped at the end of the session (tests/conftest.py), never left on the machine.
_spawned: list[tuple[subprocess.Popen, Path | None]] = []


def stop_leftovers() -> int:
    """Stop every child of this module still running (and a service's embedded Redis); how many."""
    stopped = 0
    for proc, data_dir in _spawned:
        if proc.poll() is None:
            stop_process(proc, timeout=10)
            stopped += 1
        if data_dir is not None:
            kill_embedded_redis(data_dir)
    _spawned.clear()
    return stopped


class Listener:
    """A listening TCP socket on 127.0.0.1 bound to a kernel-chosen port, for a child to serve on."""

    def __init__(self) -> None:
        self.sock = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port: int = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"

    @property
    def fd(self) -> int:
        return self.sock.fileno()

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Listener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def refused_url() -> Iterator[str]:
    """``http://127.0.0.1:<port>`` where nothing listens: the port is bound (so no other process can
    start listening there) but not listening, so a connection is refused at once."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"


class MockProcess(subprocess.Popen):
    """`python -m benchmarks.mock_llm` as a child process, serving on its own listener."""

    port: int
    root_url: str
    base_url: str


def start_mock_llm(latency: float = 0.0, *args: str) -> MockProcess:
    """The mock LLM in a child process (``args``: more of its command-line options); it answers
    ``/_mock/health`` before this returns. It outlives the services a test kills and restarts."""
    with Listener() as listener:  # the child holds its own copy; ours is closed once it started
        proc = MockProcess(
            [sys.executable, "-m", "benchmarks.mock_llm", "--fd", str(listener.fd), "--latency", str(latency),
             *args],
            cwd=ROOT,
            pass_fds=(listener.fd,),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        proc.port, proc.root_url, proc.base_url = listener.port, listener.url, f"{listener.url}/v1"
    _spawned.append((proc, None))
    try:
        wait_http(f"{proc.root_url}/_mock/health", proc=proc)
    except AssertionError:
        stop_process(proc)
        raise
    return proc


def service_env(data_dir: Path, listener: Listener | None, llm: Any = None, **extra: str) -> dict[str, str]:
    """A scrubbed environment for `python main.py`: own data dir, serving on ``listener``
    (LISTEN_FD; PORT names its port for the reader; None: PORT=0, any free port, named in the log:
    ``logged_url(log, "listening on ")``), the mock LLM ``llm`` (anything with a ``base_url``:
    MockProcess, MockServer) else the offline LLM, the tests' embeddings (tests.helpers.make_settings);
    ``extra`` overrides anything."""
    env = scrubbed_env(
        DATA_DIR=str(data_dir),
        HOST="127.0.0.1",
        PORT=str(listener.port) if listener else "0",
        **({"LISTEN_FD": str(listener.fd)} if listener else {}),
        WORKSPACE="restart",
        EMBEDDING_PROVIDER=embedding_provider_for_tests(),
        MAX_CONCURRENT_TASKS="2",
        LEASE_SECONDS="30",
        LOG_LEVEL="INFO",
    )
    if llm is None:
        env["LLM_PROVIDER"] = "offline"
    else:
        env.update(LLM_BASE_URL=llm.base_url, LLM_API_KEY="test-key", LLM_MODEL="mock-model")
    env.update(extra)
    return env


#: The ways the service is started in the wild; the HTTP bounds must hold under each of them.
LAUNCHERS = ("python main.py", "uvicorn main:app", "gunicorn main:app")


def launch_command(launcher: str, env: dict[str, str]) -> tuple[str, ...]:
    """The command line of ``launcher`` serving on env's LISTEN_FD (inherited listening socket)."""
    fd = env["LISTEN_FD"]
    if launcher == "python main.py":
        return (sys.executable, "main.py")
    if launcher == "uvicorn main:app":
        return (sys.executable, "-m", "uvicorn", "main:app", "--fd", fd)
    if launcher == "gunicorn main:app":
        return (sys.executable, "-m", "gunicorn", "-k", "uvicorn.workers.UvicornWorker", "-w", "1",
                "-b", f"fd://{fd}", "--graceful-timeout", "20", "main:app")  # fmt: skip
    raise ValueError(launcher)


def spawn_service(
    env: dict[str, str],
    log_path: Path,
    *command: str,
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """Start the service (default `python main.py`) with ``env``, passing its LISTEN_FD; its stdout
    and stderr are appended to ``log_path``; ``preexec_fn`` runs in the child (e.g. a resource
    limit). Returns at once (see :func:`start_service`)."""
    fds = (int(env["LISTEN_FD"]),) if "LISTEN_FD" in env else ()
    with open(log_path, "ab") as log:  # the child holds its own descriptor
        proc = subprocess.Popen(
            list(command or (sys.executable, "main.py")),
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=log,
            pass_fds=fds,
            preexec_fn=preexec_fn,
        )
    _spawned.append((proc, Path(env["DATA_DIR"]) if "DATA_DIR" in env else None))
    return proc


def start_service(
    env: dict[str, str],
    log_path: Path,
    timeout: float = 120,
    *,
    launcher: str = "python main.py",
    preexec_fn: Callable[[], None] | None = None,
) -> subprocess.Popen:
    """:func:`spawn_service` with ``launcher`` (one of LAUNCHERS; it needs a LISTEN_FD unless it is
    the default), then wait until its /health answers (the service log's tail if not)."""
    command = launch_command(launcher, env) if launcher != "python main.py" else ()
    proc = spawn_service(env, log_path, *command, preexec_fn=preexec_fn)
    try:
        if env.get("PORT") == "0":

            def bound() -> str | None:
                assert proc.poll() is None, f"the service exited with {proc.returncode} before listening"
                return _maybe_logged_url(log_path, "listening on ")

            url = wait_sync(bound, timeout=timeout, message="the service's 'listening on' line")
        else:
            url = f"http://127.0.0.1:{env['PORT']}"
        wait_http(f"{url}/health", timeout=timeout, proc=proc)
    except AssertionError as exc:
        stop_process(proc)
        tail = log_path.read_text(errors="replace").splitlines()[-40:]
        raise AssertionError("\n".join([str(exc), "the service log ends with:", *tail])) from None
    return proc


def _maybe_logged_url(log_path: Path, prefix: str) -> str | None:
    try:
        return logged_url(log_path, prefix)
    except AssertionError:
        return None


def logged_url(log_path: Path, prefix: str) -> str:
    """The URL a service logged after ``prefix`` (e.g. "listening on ", "metrics listening on "):
    how a test learns a port the service chose itself (PORT=0, METRICS_PORT=0)."""
    import json

    for line in log_path.read_text(errors="replace").splitlines():
        try:
            message = json.loads(line).get("msg", "")
        except (ValueError, AttributeError):
            message = line
        if message.startswith(prefix):
            return message[len(prefix) :].split()[0]
    raise AssertionError(f"no {prefix!r} line in {log_path}")


def stop_process(proc: subprocess.Popen | None, timeout: float = 30) -> None:
    """SIGTERM, then SIGKILL after ``timeout`` seconds; a stopped (SIGSTOP) process is resumed first."""
    if proc is None or proc.poll() is not None:
        return
    try:
        os.kill(proc.pid, signal.SIGCONT)
    except ProcessLookupError:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def terminate_and_wait(proc: subprocess.Popen, log_path: Path, timeout: float = 60) -> int:
    """SIGTERM and the exit status; a stop that outlasts ``timeout`` fails with the service log's tail
    (where the service's shutdown watch reports what it is waiting for)."""
    proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        tail = log_path.read_text(errors="replace").splitlines()[-120:]
        message = f"the service did not stop within {timeout:.0f} s of SIGTERM; its log ends with:"
        raise AssertionError("\n".join([message, *tail])) from None


def statuses(base: str, task_ids: list[str]) -> list[str]:
    return [httpx.get(f"{base}/task/{t}", timeout=10).json()["status"] for t in task_ids]


def embedded_redis_pid(data_dir: Path) -> int | None:
    try:
        return int((data_dir / "redis" / "redis.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def kill_embedded_redis(data_dir: Path) -> None:
    """Kill the embedded redis-server a service left running (it outlives the service by design)."""
    pid = embedded_redis_pid(data_dir)
    if pid is not None:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
