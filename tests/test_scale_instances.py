"""Several service processes on one Redis and one PostgreSQL (LightRAG's PG storages + our
PGPlainGraphStorage): one ingestion owner per workspace, takeover after kill -9, tenant isolation.

Everything real: uvicorn processes (tests/procs.py), the mock LLM (which counts extraction calls),
a private PostgreSQL 18 + pgvector (tests/pg.py), the tests' Redis. Each test gets a fresh
database, so the start-up of every instance also exercises concurrent schema creation.
"""

from __future__ import annotations

import asyncio
import itertools
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.docs_factory import story
from tests.helpers import hold_llm, release_llm, wait_held_sync, wait_sync
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.procs import Listener, MockProcess, service_env, start_mock_llm, start_service

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(900)]

ADMIN = {"Authorization": "Bearer scale-admin"}
FINAL = ("completed", "failed", "cancelled")
PG_STORAGES = {
    "LIGHTRAG_KV_STORAGE": "PGKVStorage",
    "LIGHTRAG_VECTOR_STORAGE": "PGVectorStorage",
    "LIGHTRAG_GRAPH_STORAGE": "PGPlainGraphStorage",
    "LIGHTRAG_DOC_STATUS_STORAGE": "PGDocStatusStorage",
}


def fresh_database(pg: dict[str, str]) -> dict[str, str]:
    """A new, empty database on the shared test server (every instance starts on a fresh schema)."""
    import asyncpg

    name = f"scale_{uuid.uuid4().hex[:10]}"

    async def create() -> None:
        conn = await asyncpg.connect(
            host=pg["POSTGRES_HOST"], port=int(pg["POSTGRES_PORT"]), user=pg["POSTGRES_USER"],
            password=pg["POSTGRES_PASSWORD"], database=pg["POSTGRES_DATABASE"],
        )  # fmt: skip
        try:
            await conn.execute(f"CREATE DATABASE {name}")
        finally:
            await conn.close()

    asyncio.run(create())
    return {**pg, "POSTGRES_DATABASE": name}


def pg_fetch(pg: dict[str, str], sql: str, *args: object) -> list[dict]:
    import asyncpg

    async def run() -> list[dict]:
        conn = await asyncpg.connect(
            host=pg["POSTGRES_HOST"], port=int(pg["POSTGRES_PORT"]), user=pg["POSTGRES_USER"],
            password=pg["POSTGRES_PASSWORD"], database=pg["POSTGRES_DATABASE"],
        )  # fmt: skip
        try:
            return [dict(r) for r in await conn.fetch(sql, *args)]
        finally:
            await conn.close()

    return asyncio.run(run())


def owners(pg: dict[str, str]) -> list[str]:
    """Instance ids holding at least one workspace lock (from the lock connections' names; the graph
    locks of src/ingestion/graph_locks.py, two-key locks, `objsubid = 2`, do not count)."""
    rows = pg_fetch(
        pg,
        "SELECT DISTINCT a.application_name AS name FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid "
        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
        "AND a.application_name LIKE 'ragsvc-owner:%'",
    )
    return sorted(r["name"].split(":", 1)[1] for r in rows)


class Fleet:
    """N service processes sharing Redis (one prefix), PostgreSQL (one database) and the upload dir."""

    def __init__(self, tmp: Path, redis_url: str, pg: dict[str, str], llm: MockProcess, **extra: str) -> None:
        self.tmp = tmp
        self.pg = pg
        self.prefix = f"scale:{uuid.uuid4().hex[:8]}:"
        self.common = dict(
            REDIS_URL=redis_url,
            REDIS_PREFIX=self.prefix,
            UPLOAD_DIR=str(tmp / "uploads"),
            WORKSPACE="scale",
            EMBEDDING_PROVIDER="hash",
            ADMIN_TOKEN="scale-admin",
            LEASE_SECONDS="6",
            HEARTBEAT_SECONDS="1",
            SWEEP_SECONDS="1",
            OWNER_LOCK_TIMEOUT_SECONDS="3",
            OWNER_PING_SECONDS="0.5",
            OWNER_IDLE_RELEASE_SECONDS="5",
            MAX_CONCURRENT_TASKS="2",
            ENTITY_EXTRACT_MAX_GLEANING="0",
            POSTGRES_MAX_CONNECTIONS="8",
            **PG_STORAGES,
            **pg,
        )
        self.common.update(extra)  # a test's (or benchmark's) settings override the defaults above
        self.llm = llm
        self.listeners: list[Listener] = []
        self.procs: dict[str, subprocess.Popen] = {}
        self.bases: dict[str, str] = {}
        self.envs: dict[str, dict[str, str]] = {}

    def start(self, count: int) -> None:
        """Start ``count`` instances at once (they race on the fresh schema)."""
        import threading

        names = [f"inst-{len(self.procs) + i}" for i in range(count)]
        errors: list[BaseException] = []

        def one(name: str) -> None:
            try:
                self.start_one(name)
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(n,)) for n in names]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]

    def start_one(self, name: str) -> None:
        http = Listener()
        self.listeners.append(http)
        env = service_env(self.tmp / name, http, self.llm, INSTANCE_ID=name, **self.common)
        self.envs[name] = env
        self.bases[name] = http.url
        self.procs[name] = start_service(env, self.tmp / f"{name}.log")

    def kill(self, name: str) -> None:
        proc = self.procs.pop(name)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        self.bases.pop(name)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)
        for listener in self.listeners:
            listener.close()

    def logs(self) -> str:
        return "".join(p.read_text(errors="replace") for p in self.tmp.glob("inst-*.log"))

    def any_base(self) -> str:
        return next(iter(self.bases.values()))


def make_tenant(base: str, name: str) -> dict[str, str]:
    created = httpx.post(f"{base}/admin/tenants", json={"name": name}, headers=ADMIN, timeout=30)
    assert created.status_code == 201, created.text
    key = httpx.post(f"{base}/admin/tenants/{name}/keys", json={}, headers=ADMIN, timeout=30)
    assert key.status_code == 201, key.text
    return {"Authorization": f"Bearer {key.json()['api_key']}"}


def upload(base: str, headers: dict[str, str], name: str, text: str) -> dict:
    files = {"file": (name, text.encode())}
    response = httpx.post(f"{base}/insert", files=files, headers=headers, timeout=60)
    assert response.status_code == 202, response.text
    return response.json()


def wait_final(fleet: Fleet, tasks: list[tuple[dict[str, str], str]], timeout: float) -> dict[str, dict]:
    """Poll every task (each through a different instance) until all are final."""
    deadline = time.monotonic() + timeout
    views: dict[str, dict] = {}
    while time.monotonic() < deadline:
        bases = itertools.cycle(list(fleet.bases.values()))
        for headers, task_id in tasks:
            if views.get(task_id, {}).get("status") in FINAL:
                continue
            views[task_id] = httpx.get(f"{next(bases)}/task/{task_id}", headers=headers, timeout=30).json()
        if all(v.get("status") in FINAL for v in views.values()) and len(views) == len(tasks):
            return views
        time.sleep(0.5)
    pending = {t: v.get("status") for t, v in views.items() if v.get("status") not in FINAL}
    raise AssertionError(f"tasks not final after {timeout}s: {pending}\n{fleet.logs()[-6000:]}")


def check_each_entity_merged_once(pg: dict[str, str], workspace: str) -> None:
    """Every (entity, document) contribution is in the graph exactly once: an entity's chunk list
    equals the chunks of the documents that name it. A lost update of two concurrent merges drops
    chunks; a document merged twice would list its chunks twice."""
    import json
    from collections import Counter

    chunks_of: dict[str, list[str]] = {}

    def rows(columns: str, table: str) -> list[dict]:
        return pg_fetch(pg, f"SELECT {columns} FROM {table} WHERE workspace = $1", workspace)

    for row in rows("id, full_doc_id", "lightrag_doc_chunks"):
        chunks_of.setdefault(row["full_doc_id"], []).append(row["id"])
    expected: dict[str, Counter] = {}
    recorded = rows("id, entity_names", "lightrag_full_entities")
    assert recorded, f"no entities recorded in {workspace}"
    for row in recorded:
        for name in json.loads(row["entity_names"]):
            expected.setdefault(name, Counter()).update(chunks_of[row["id"]])
    actual = {
        row["id"]: Counter(json.loads(row["chunk_ids"]))
        for row in rows("id, chunk_ids", "lightrag_entity_chunks")
    }
    assert actual == expected
    for node in rows("id, properties->>'source_id' AS src", "lightrag_plain_graph_nodes"):
        ids = node["src"].split("<SEP>")
        assert len(ids) == len(set(ids)), f"entity {node['id']} lists a chunk twice"
        assert Counter(ids) == expected[node["id"]], node["id"]


def mock_kinds(mock: MockProcess) -> dict[str, int]:
    return httpx.get(f"{mock.root_url}/_mock/stats", timeout=10).json()["kinds"]


def context_for(base: str, headers: dict[str, str], query: str) -> str:
    body = {"query": query, "mode": "naive", "only_need_context": True, "chunk_top_k": 5}
    response = httpx.post(f"{base}/query", json=body, headers=headers, timeout=120)
    assert response.status_code == 200, response.text
    return response.json()["response"]


@pytest.fixture
def mock_llm() -> Iterator[MockProcess]:
    proc = start_mock_llm(latency=0.3)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


@pytest.fixture
def fleet_factory(
    tmp_path: Path,
    redis_url: str,
    pg_env: dict[str, str],  # noqa: F811
    mock_llm: MockProcess,
) -> Iterator:
    fleets: list[Fleet] = []

    def make(**extra: str) -> Fleet:
        fleet = Fleet(tmp_path, redis_url, fresh_database(pg_env), mock_llm, **extra)
        fleets.append(fleet)
        return fleet

    yield make
    for fleet in fleets:
        fleet.stop()


def run_documents(fleet: Fleet, llm: MockProcess, tenants: dict[str, dict[str, str]], count: int) -> None:
    """Upload ``count`` documents round-robin over instances and tenants, then check the invariants."""
    bases = list(fleet.bases.values())
    names = list(tenants)
    docs: list[tuple[str, str, str, str]] = []  # tenant, marker, task id, doc id
    for i in range(count):
        tenant = names[i % len(names)]
        marker = f"Scalemark{i}q{uuid.uuid4().hex[:4]}"
        sent = upload(bases[i % len(bases)], tenants[tenant], f"{marker}.txt", story(f"topic {i}", marker, 8))
        docs.append((tenant, marker, sent["task_id"], sent["doc_id"]))
    views = wait_final(fleet, [(tenants[t], task) for t, _, task, _ in docs], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * count, views

    # Exactly once: one extraction call per chunk (each document is one chunk), no duplicate.
    chunks = 0
    for tenant, _marker, _task, doc_id in docs:
        for base in bases:  # every instance reads the same shared knowledge base
            doc = httpx.get(f"{base}/documents/{doc_id}", headers=tenants[tenant], timeout=30)
            assert doc.status_code == 200, doc.text
            assert doc.json()["status"] == "processed"
        chunks += int(doc.json()["chunks_count"])
    assert chunks == count
    assert mock_kinds(llm)["extract"] == chunks, "a document was extracted more than once"
    for tenant in tenants:
        check_each_entity_merged_once(fleet.pg, f"scale--{tenant}")

    # A query on each instance finds every document, and only for its own tenant: another tenant's
    # answers, task and document ids reach nothing of it through any instance.
    for tenant, marker, task_id, doc_id in docs:
        stranger = tenants[next(t for t in names if t != tenant)]
        for base in bases:
            assert marker in context_for(base, tenants[tenant], f"What did the {marker} project study?")
            assert marker not in context_for(base, stranger, f"What did the {marker} project study?")
            assert httpx.get(f"{base}/task/{task_id}", headers=stranger, timeout=30).status_code == 404
            assert httpx.get(f"{base}/documents/{doc_id}", headers=stranger, timeout=30).status_code == 404


@pytest.mark.parametrize("instances", [2, 3])
def test_instances_share_one_knowledge_base_and_extract_each_document_once(
    fleet_factory, mock_llm: MockProcess, instances: int
) -> None:
    """Catches: two instances running LightRAG's pipeline on one workspace (double extraction, double
    merge), a non-owner resuming the owner's documents, a query instance not seeing shared data,
    and a schema-creation race when N instances start on a fresh database."""
    fleet = fleet_factory()
    fleet.start(instances)
    base = fleet.any_base()
    tenants = {name: make_tenant(base, name) for name in ("acme", "globex", "initech")[:instances]}
    run_documents(fleet, mock_llm, tenants, 12 if instances == 2 else 9)
    # Ownership spread: with work in several workspaces, more than one instance owned one.
    owned = owned_tenants(fleet)
    assert len({inst for inst, tenants_ in owned.items() if tenants_ & set(tenants)}) >= 2, owned


def owned_tenants(fleet: Fleet) -> dict[str, set[str]]:
    """Tenants each instance took ownership of at some point (from its log)."""
    marker = "now owns the workspace of tenant "
    out: dict[str, set[str]] = {}
    for path in fleet.tmp.glob("inst-*.log"):
        for part in path.read_text(errors="replace").split(marker)[1:]:
            out.setdefault(path.stem, set()).add(part.split('"')[0].split()[0].strip())
    return out


def test_kill_9_of_the_owner_moves_ownership_and_no_document_runs_twice(
    fleet_factory, mock_llm: MockProcess
) -> None:
    """Catches: a dead owner's workspace staying locked (no takeover), tasks of the dead owner never
    resumed, and a taken-over document being extracted again after it was processed."""
    fleet = fleet_factory()
    fleet.start(2)
    base = fleet.any_base()
    headers = make_tenant(base, "acme")
    hold_llm(mock_llm, "extract")  # the owner is caught mid-extraction
    bases = list(fleet.bases.values())
    tasks = [
        upload(bases[i % 2], headers, f"Killmark{i}.txt", story(f"topic {i}", f"Killmark{i}z", 8))
        for i in range(5)
    ]
    wait_held_sync(mock_llm, 2, timeout=120)  # both of the owner's slots are extracting
    owner = owners(fleet.pg)
    assert len(owner) == 1, owner
    fleet.kill(owner[0])
    release_llm(mock_llm)
    views = wait_final(fleet, [(headers, t["task_id"]) for t in tasks], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(tasks)
    survivors = [name for name in fleet.procs if "acme" in owned_tenants(fleet).get(name, set())]
    assert survivors, "no surviving instance took the workspace over"
    survivor = fleet.any_base()
    chunks = 0
    for t in tasks:
        doc = httpx.get(f"{survivor}/documents/{t['doc_id']}", headers=headers, timeout=30).json()
        assert doc["status"] == "processed"
        chunks += int(doc["chunks_count"])
    # A document the dead owner was extracting is extracted again by the new owner (its LLM results
    # died with it), but no document is extracted more than that, and no processed one is redone.
    extracted = mock_kinds(mock_llm)["extract"]
    assert chunks <= extracted <= chunks + 2, (chunks, extracted)
    check_each_entity_merged_once(fleet.pg, "scale--acme")


def test_a_stalled_owner_is_replaced_and_stops_when_it_resumes(fleet_factory, mock_llm: MockProcess) -> None:
    """Catches: a SIGSTOPped owner keeping its workspace (nobody ingests until it resumes), and a
    resumed stale owner going on with its documents beside the new owner (double extraction, merge
    races: the entity check below fails)."""
    fleet = fleet_factory()
    fleet.start(2)
    base = fleet.any_base()
    headers = make_tenant(base, "acme")
    hold_llm(mock_llm, "extract")  # the owner is caught mid-extraction
    bases = list(fleet.bases.values())
    tasks = [
        upload(bases[i % 2], headers, f"Stallmark{i}.txt", story(f"topic {i}", f"Stallmark{i}z", 8))
        for i in range(5)
    ]
    wait_held_sync(mock_llm, 2, timeout=120)  # both of the owner's slots are extracting
    stalled = owners(fleet.pg)
    assert len(stalled) == 1, stalled
    proc = fleet.procs[stalled[0]]
    other = next(name for name in fleet.procs if name != stalled[0])
    proc.send_signal(signal.SIGSTOP)
    try:
        wait_sync(lambda: owners(fleet.pg) == [other], timeout=120, message="the stalled owner's lock freed")
        # The new owner works while the old one is frozen: its own extraction call reaches the mock.
        wait_held_sync(mock_llm, 3, timeout=120)
    finally:
        proc.send_signal(signal.SIGCONT)
    release_llm(mock_llm)
    survivor = fleet.bases[other]
    views = wait_final(fleet, [(headers, t["task_id"]) for t in tasks], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(tasks)
    log = (fleet.tmp / f"{stalled[0]}.log").read_text(errors="replace")
    assert "no longer owner" in log, "the resumed owner did not notice that it lost the workspace"
    chunks = sum(
        int(
            httpx.get(f"{survivor}/documents/{t['doc_id']}", headers=headers, timeout=30).json()[
                "chunks_count"
            ]
        )
        for t in tasks
    )
    assert chunks <= mock_kinds(mock_llm)["extract"] <= chunks + 2
    check_each_entity_merged_once(fleet.pg, "scale--acme")


def test_shared_storages_without_postgres_credentials_refuse_to_start(tmp_path: Path, redis_url: str) -> None:
    """Catches: an instance on shared storages starting without an ownership backend (it would run
    LightRAG's pipeline beside other instances on the same workspace)."""
    env = service_env(
        tmp_path / "d", None, REDIS_URL=redis_url, EMBEDDING_PROVIDER="hash", OWNERSHIP="postgres"
    )
    for name in ("POSTGRES_USER", "POSTGRES_PASSWORD", "POSTGRES_DATABASE"):
        env.pop(name, None)
    result = subprocess.run(
        [sys.executable, "main.py"], cwd=Path(__file__).resolve().parent.parent, env=env,
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode != 0
    assert "POSTGRES_USER" in result.stderr + result.stdout


def test_a_second_instance_extracts_documents_of_a_workspace_it_does_not_own(
    fleet_factory, mock_llm: MockProcess
) -> None:
    """Catches: a non-owner adding no ingestion capacity to one workspace (every extraction on the
    owner), a document extracted twice (once ahead, once by the owner), and a merge that differs
    from one instance's (documents sharing entities, all merged by the owner)."""
    fleet = fleet_factory(LLM_MAX_ASYNC="2", INDEX_ANYWHERE="false")  # extraction ahead, not guests
    fleet.start(2)
    base = fleet.any_base()
    headers = make_tenant(base, "acme")
    tasks = [
        upload(base, headers, f"Aheadmark{i}.txt", story(f"topic {i}", f"Aheadmark{i}z", 8))
        for i in range(16)
    ]
    views = wait_final(fleet, [(headers, t["task_id"]) for t in tasks], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(tasks)
    owner = next(name for name, owned in owned_tenants(fleet).items() if "acme" in owned)
    helper = next(name for name in fleet.procs if name != owner)
    helped = (fleet.tmp / f"{helper}.log").read_text(errors="replace").count("ahead of its owner")
    assert helped >= 2, f"the non-owner extracted {helped} document(s)"
    assert "ahead of its owner" not in (fleet.tmp / f"{owner}.log").read_text(errors="replace")
    chunks = sum(
        int(httpx.get(f"{base}/documents/{t['doc_id']}", headers=headers, timeout=30).json()["chunks_count"])
        for t in tasks
    )
    assert mock_kinds(mock_llm)["extract"] == chunks, "a chunk was extracted twice"
    check_each_entity_merged_once(fleet.pg, "scale--acme")
    for i in (0, 7, 15):
        assert f"Aheadmark{i}z" in context_for(base, headers, f"What did the Aheadmark{i}z project study?")
