"""One SQLite database per LightRAG workspace, written by a group-commit flusher.

Why: LightRAG's file storages rewrite whole JSON/GraphML files on the event loop after every
pass, so the cost of each pass grows with the knowledge base. Here every storage of a workspace
keeps LightRAG's in-memory view and only records which keys changed. The flusher runs a group
commit, with two clocks:

* background changes nobody waits for (``mark_dirty``, ``request_flush``: e.g. extraction-cache
  writes) are coalesced and flushed at most once every ``flush_interval`` seconds — this bounds
  the write amplification;
* once a ``commit()`` waits (a finished document before its task is reported completed), a flush
  starts at most ``commit_delay`` seconds after that commit arrived (never later than the interval
  would have flushed anyway), so the commits arriving within that short window share one
  transaction. Commits arriving while a flush runs are grouped into the next one (the flush lock
  serialises flushes) with a delay counted from their own arrival, not a whole interval.

Each flush (also ``flush_now()`` at drop / shutdown):

1. on the loop, without awaiting, snapshots the dirty records of every storage (doc status last),
   serialising only those records — an atomic cut of the in-memory state;
2. in its own worker thread writes that cut in ONE SQLite transaction (doc-status rows last)
   and commits it (WAL, synchronous=FULL).

Because the cut is atomic and the transaction is atomic, a PROCESSED doc status can never reach
disk before the chunks, vectors and graph rows written before it: after kill -9 a document is
either fully on disk or re-processed from its doc-status record.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

logger = logging.getLogger(__name__)

#: Default time between two background flushes; overridable with ``configure(flush_interval=...)``.
FLUSH_INTERVAL_SECONDS = 1.0
#: Default longest wait of a pending ``commit()`` before its flush starts (``configure(commit_delay=...)``).
COMMIT_DELAY_SECONDS = 0.02
DB_FILE_NAME = "lightrag_store.sqlite3"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS kv (ns TEXT NOT NULL, id TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS vectors (
    ns TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, vec BLOB NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS graph_nodes (
    ns TEXT NOT NULL, id TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (ns, id));
CREATE TABLE IF NOT EXISTS graph_edges (
    ns TEXT NOT NULL, src TEXT NOT NULL, tgt TEXT NOT NULL, data TEXT NOT NULL, PRIMARY KEY (ns, src, tgt));
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

#: table -> (key columns, value columns)
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "kv": (("id",), ("value",)),
    "vectors": (("id",), ("data", "vec")),
    "graph_nodes": (("id",), ("data",)),
    "graph_edges": (("src", "tgt"), ("data",)),
}

_config = {"flush_interval": FLUSH_INTERVAL_SECONDS, "commit_delay": COMMIT_DELAY_SECONDS}


def configure(flush_interval: float | None = None, commit_delay: float | None = None) -> None:
    """Set process-wide defaults for stores opened after this call."""
    for key, value in (("flush_interval", flush_interval), ("commit_delay", commit_delay)):
        if value is not None:
            _config[key] = max(0.0, float(value))


@dataclass
class WriteSet:
    """The dirty records of one storage namespace as of the snapshot (records copied on the loop,
    encoded in the flush thread: embedded.py's `_JsonAtWrite`)."""

    table: str
    ns: str
    upserts: list[tuple[Any, ...]] = field(default_factory=list)  # (key..., value...)
    deletes: list[tuple[Any, ...]] = field(default_factory=list)  # (key...)
    drop: bool = False  # delete every row of the namespace before applying the rest
    restore: Callable[[], None] | None = None  # puts the keys back as dirty if the write fails
    written: Callable[[], None] | None = None  # called on the loop once the write is durable

    @property
    def empty(self) -> bool:
        return not (self.upserts or self.deletes or self.drop)


class Participant(Protocol):
    """A storage that hands its dirty records to the flusher."""

    namespace: str
    is_doc_status: bool

    def collect_dirty(self) -> list[WriteSet]: ...


def db_path_for(global_config: dict[str, Any], workspace: str) -> Path:
    """Where a workspace's database lives: next to LightRAG's own files for that workspace."""
    base = Path(global_config["working_dir"])
    return (base / workspace if workspace else base) / DB_FILE_NAME


class WorkspaceStore:
    """The database of one workspace plus its flusher (one worker thread owns the connection)."""

    def __init__(self, path: Path, flush_interval: float, commit_delay: float = COMMIT_DELAY_SECONDS) -> None:
        self.path = path
        self.flush_interval = flush_interval
        self.commit_delay = commit_delay
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-flush")
        self._con: sqlite3.Connection | None = None
        self._participants: list[Participant] = []
        self._refs = 0
        self._change_seq = 0
        self._durable_seq = 0
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None  # something changed or waits: the flusher has work
        self._commit_kick: asyncio.Event | None = None  # a commit arrived: re-check the flush deadline
        self._commit_due: float | None = None  # monotonic time by which pending commits' flush starts
        self._flush_lock: asyncio.Lock | None = None
        self._task: asyncio.Task[None] | None = None
        self._last_flush = 0.0
        # Observability (and what the tests count).
        self.flush_count = 0
        self.rows_written = 0
        self.last_flush_order: list[str] = []
        self.write_threads: set[str] = set()

    # --- worker thread side ---------------------------------------------------------
    def _connection(self) -> sqlite3.Connection:
        if self._con is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            con = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("PRAGMA synchronous=FULL")
            con.executescript(_SCHEMA)
            self._con = con
        return self._con

    def _write(self, sets: list[WriteSet]) -> int:
        con = self._connection()
        rows = 0
        con.execute("BEGIN IMMEDIATE")
        try:
            for ws in sets:
                keys, values = TABLES[ws.table]
                if ws.drop:
                    con.execute(f"DELETE FROM {ws.table} WHERE ns = ?", (ws.ns,))
                if ws.deletes:
                    where = " AND ".join(f"{k} = ?" for k in keys)
                    con.executemany(
                        f"DELETE FROM {ws.table} WHERE ns = ? AND {where}", [(ws.ns, *d) for d in ws.deletes]
                    )
                if ws.upserts:
                    cols = ("ns", *keys, *values)
                    marks = ", ".join("?" for _ in cols)
                    updates = ", ".join(f"{v} = excluded.{v}" for v in values)
                    con.executemany(
                        f"INSERT INTO {ws.table} ({', '.join(cols)}) VALUES ({marks}) "
                        f"ON CONFLICT (ns, {', '.join(keys)}) DO UPDATE SET {updates}",
                        [(ws.ns, *u) for u in ws.upserts],
                    )
                rows += len(ws.upserts) + len(ws.deletes)
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        self.write_threads.add(threading.current_thread().name)
        return rows

    def _select(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        return self._connection().execute(sql, args).fetchall()

    def _count(self, table: str, ns: str) -> int:
        return self._connection().execute(f"SELECT COUNT(*) FROM {table} WHERE ns = ?", (ns,)).fetchone()[0]

    def _import(self, marker: str, sets: list[WriteSet]) -> int:
        """Write an imported legacy namespace and its marker in one transaction (thread side)."""
        rows = self._write(sets)
        con = self._connection()
        con.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (marker, str(int(time.time()))))
        return rows

    def _read_kv(self, ns: str, ids: list[str]) -> dict[str, Any]:
        """Rows of ``ids`` in namespace ``ns``, decoded (thread side; 500 ids per statement)."""
        import json

        out: dict[str, Any] = {}
        con = self._connection()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" for _ in part)
            sql = f"SELECT id, value FROM kv WHERE ns = ? AND id IN ({marks})"
            out.update((k, json.loads(v)) for k, v in con.execute(sql, (ns, *part)))
        return out

    def _kv_ids(self, ns: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` have a row in namespace ``ns`` (thread side)."""
        found: set[str] = set()
        con = self._connection()
        for i in range(0, len(ids), 500):
            part = ids[i : i + 500]
            marks = ", ".join("?" for _ in part)
            sql = f"SELECT id FROM kv WHERE ns = ? AND id IN ({marks})"
            found.update(k for (k,) in con.execute(sql, (ns, *part)))
        return found

    def _meta_get(self, key: str) -> str | None:
        row = self._connection().execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def _close_connection(self) -> None:
        if self._con is not None:
            self._con.close()
            self._con = None

    # --- loop side --------------------------------------------------------------------
    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn`` in the store's worker thread (the only thread that touches the connection)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def select(self, sql: str, *args: Any) -> list[tuple[Any, ...]]:
        return await self.run(self._select, sql, args)

    async def read_kv(self, ns: str, ids: list[str]) -> dict[str, Any]:
        """The stored (flushed) records of ``ids``; absent ids are left out."""
        return await self.run(self._read_kv, ns, ids) if ids else {}

    async def kv_ids(self, ns: str, ids: list[str]) -> set[str]:
        """Which of ``ids`` are stored (flushed) in namespace ``ns``."""
        return await self.run(self._kv_ids, ns, ids) if ids else set()

    async def count(self, table: str, ns: str) -> int:
        return await self.run(self._count, table, ns)

    async def import_legacy(
        self, table: str, ns: str, load: Callable[[], list[WriteSet] | None], source: str
    ) -> int:
        """Import a legacy file once: only when the namespace has no rows and was never imported."""
        marker = f"imported:{table}:{ns}"

        def work() -> int:
            if self._meta_get(marker) is not None or self._count(table, ns) > 0:
                return -1
            sets = load()
            if sets is None:
                return -1
            return self._import(marker, sets)

        rows = await self.run(work)
        if rows >= 0:
            logger.info(
                "Imported %d %s records of %s from legacy file %s into %s", rows, table, ns, source, self.path
            )
        return rows

    def register(self, participant: Participant) -> None:
        if participant not in self._participants:
            self._participants.append(participant)
        self._refs += 1

    def mark_dirty(self) -> None:
        """Record that something changed; a background flush follows within ``flush_interval``."""
        self._change_seq += 1
        self._kick()

    def request_flush(self) -> None:
        """LightRAG's index_done_callback: persist at the next background flush, do not wait."""
        if self._change_seq > self._durable_seq:
            self._kick()

    async def commit(self) -> None:
        """Return once every change made before this call is durable on disk (group commit).

        The flush starts within ``commit_delay`` of the first commit still waiting (or earlier, at
        the background interval), so the commits of that window share one transaction.
        """
        target = self._change_seq
        if self._durable_seq >= target:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((target, fut))
        if self._commit_due is None:
            self._commit_due = time.monotonic() + self.commit_delay
        self._kick(commit=True)
        await fut

    async def flush_now(self) -> None:
        """Flush at once, ignoring the interval (shutdown, drop)."""
        self._bind_loop()
        await self._flush()

    def _bind_loop(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests): rebuild loop objects
            self._loop = loop
            self._wake = asyncio.Event()
            self._commit_kick = asyncio.Event()
            self._flush_lock = asyncio.Lock()
            self._task = None

    def _kick(self, commit: bool = False) -> None:
        try:
            self._bind_loop()
        except RuntimeError:  # no running loop: the next commit/flush picks the change up
            return
        assert self._wake is not None and self._commit_kick is not None
        self._wake.set()
        if commit:
            self._commit_kick.set()
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name=f"sqlite-flusher:{self.path}"
            )

    def _flush_due(self) -> float:
        """When the next flush starts: the background interval, or earlier for a waiting commit."""
        due = self._last_flush + self.flush_interval
        return due if self._commit_due is None else min(due, self._commit_due)

    async def _run(self) -> None:
        assert self._wake is not None and self._commit_kick is not None
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Coalesce everything that arrives meanwhile; a commit arriving during the wait moves
            # the deadline closer, so the wait is on its kick (with a timeout), not a plain sleep.
            while (delay := self._flush_due() - time.monotonic()) > 0:
                self._commit_kick.clear()
                try:
                    async with asyncio.timeout(delay):
                        await self._commit_kick.wait()
                except TimeoutError:
                    break
            try:
                await self._flush()
            except Exception:  # already logged; retried at the next interval
                self._wake.set()

    async def _flush(self) -> None:
        assert self._flush_lock is not None
        async with self._flush_lock:
            seq = self._change_seq
            self._commit_due = None  # every commit waiting now is settled by this flush
            # Atomic cut: no await between the first and the last collect. Doc status last.
            ordered = sorted(self._participants, key=lambda p: bool(getattr(p, "is_doc_status", False)))
            sets: list[WriteSet] = []
            for p in ordered:
                sets.extend(ws for ws in p.collect_dirty() if not ws.empty)
            try:
                if sets:
                    rows = await self.run(self._write, sets)
                    self.rows_written += rows
                    self.flush_count += 1
                    self.last_flush_order = [ws.ns for ws in sets]
            except BaseException as exc:
                for ws in sets:
                    if ws.restore is not None:
                        ws.restore()
                logger.exception("Flush of %s failed; keeping %d record sets dirty", self.path, len(sets))
                self._settle(seq, exc)
                raise
            finally:
                self._last_flush = time.monotonic()
            for ws in sets:
                if ws.written is not None:
                    ws.written()
            self._durable_seq = max(self._durable_seq, seq)
            self._settle(seq, None)

    def _settle(self, seq: int, exc: BaseException | None) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, fut in self._waiters:
            if target <= seq and not fut.done():
                if exc is None:
                    fut.set_result(None)
                else:
                    fut.set_exception(RuntimeError(f"storage flush failed: {exc}"))
            elif not fut.done():
                keep.append((target, fut))
        self._waiters = keep
        if not keep:
            self._commit_due = None

    async def release(self, participant: Participant) -> None:
        """A storage is finalised: flush everything; the last one closes the database."""
        try:
            await self.flush_now()
        finally:
            self._refs -= 1
            if participant in self._participants:
                self._participants.remove(participant)
            if self._refs <= 0:
                _STORES.pop(self.path, None)
                if self._task is not None and not self._task.done():
                    self._task.cancel()
                await self.run(self._close_connection)
                self._executor.shutdown(wait=False)


_STORES: dict[Path, WorkspaceStore] = {}


def acquire_store(global_config: dict[str, Any], workspace: str) -> WorkspaceStore:
    """The process-wide store of a workspace (shared by all of its storages)."""
    path = db_path_for(global_config, workspace).resolve()
    store = _STORES.get(path)
    if store is None:
        store = WorkspaceStore(path, _config["flush_interval"], _config["commit_delay"])
        _STORES[path] = store
    return store


def store_for(working_dir: str | Path, workspace: str) -> WorkspaceStore | None:
    """The open store of a workspace, if its storages are the embedded SQLite ones."""
    return _STORES.get(db_path_for({"working_dir": str(working_dir)}, workspace).resolve())


def read_kv_namespace(workspace_dir: str | Path, namespace: str) -> dict[str, Any]:
    """Everything on disk for one KV/doc-status namespace (offline inspection, tests, tools)."""
    import json

    con = sqlite3.connect(f"file:{Path(workspace_dir) / DB_FILE_NAME}?mode=ro", uri=True)
    try:
        rows = con.execute("SELECT id, value FROM kv WHERE ns = ? ORDER BY rowid", (namespace,)).fetchall()
    finally:
        con.close()
    return {k: json.loads(v) for k, v in rows}
