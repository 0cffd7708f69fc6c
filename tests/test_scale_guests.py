"""Every instance indexes documents of one workspace, merges included (guests: src/tasks/runner.py,
src/ingestion/graph_locks.py): process tests on one Redis and one PostgreSQL.

What they prove: each task completes once, one extraction call per chunk, documents were indexed by
more than one instance, and the knowledge base equals what one instance builds from the same
documents (tests/stored_knowledge.py, read from PostgreSQL); a deletion on the owner beside a
guest's merges loses and resurrects nothing; a guest killed (kill -9) or frozen (SIGSTOP)
mid-merge has its tasks run elsewhere once, without waiting for their lease, and a frozen guest
that resumes after its lock session was ended writes nothing more.
"""

from __future__ import annotations

import json
import re
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis

from tests.docs_factory import story
from tests.helpers import hold_llm, mock_stats, release_llm, wait_sync
from tests.pg import pg_env  # noqa: F401  (session fixture)
from tests.procs import MockProcess, start_mock_llm
from tests.stored_knowledge import Knowledge, assert_forgotten, assert_same_knowledge, pg_knowledge
from tests.test_failover import audited_writes, install_write_audit
from tests.test_scale_instances import (  # noqa: F401  (fixtures)
    Fleet,
    check_each_entity_merged_once,
    fleet_factory,
    fresh_database,
    make_tenant,
    mock_kinds,
    mock_llm,
    owners,
    pg_fetch,
    upload,
    wait_final,
)

pytestmark = [pytest.mark.process, pytest.mark.slow, pytest.mark.timeout(900)]

WORKSPACE = "scale--acme"
#: Summaries on merge after 3 descriptions (LightRAG's minimum): merges of documents that share
#: entities make summary calls, which the mock can hold while the merge holds its locks.
SUMMARIES_SOON = {"FORCE_LLM_SUMMARY_ON_MERGE": "3"}
#: Guest indexing on (off by default).
GUESTS = {"INDEX_ANYWHERE": "true"}
#: Long enough that no test here can pass by a lease running out: a lost guest's tasks must be
#: taken back because its lock session ended.
LONG_LEASE = {"LEASE_SECONDS": "300", "SWEEP_SECONDS": "300"}


def texts(prefix: str, count: int) -> dict[str, str]:
    """``count`` one-chunk documents sharing entities (the same people and places), by file name;
    each names its own marker word (`marker`)."""
    tag = uuid.uuid4().hex[:4]
    return {f"{prefix}{i}.txt": story(f"topic {i}", marker(prefix, i, tag), 8) for i in range(count)}


def marker(prefix: str, i: int, tag: str) -> str:
    return f"{prefix.capitalize()}{i}x{tag}"


def marker_in(text: str, prefix: str) -> str:
    found = re.search(rf"{prefix.capitalize()}\d+x[0-9a-f]{{4}}", text)
    assert found, text[:200]
    return found.group(0)


def completions(fleet: Fleet) -> dict[str, dict[str, int]]:
    """Per instance: documents completed, and of those, as a guest (from its log)."""
    out: dict[str, dict[str, int]] = {}
    for path in fleet.tmp.glob("inst-*.log"):
        lines = [line for line in path.read_text(errors="replace").splitlines() if " completed in " in line]
        out[path.stem] = {"all": len(lines), "guest": sum("as a guest" in line for line in lines)}
    return out


def task_records(fleet: Fleet, redis_url: str, task_ids: list[str]) -> list[dict]:
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        return [client.hgetall(f"{fleet.prefix}task:{t}") for t in task_ids]
    finally:
        client.close()


def completed_once(records: list[dict]) -> None:
    """Each task completed, by exactly one attempt (any earlier attempt ended otherwise)."""
    for record in records:
        assert record["status"] == "completed", record
        history = json.loads(record.get("history") or "[]") or []
        done = [h for h in (history if isinstance(history, list) else []) if h.get("outcome") == "completed"]
        assert len(done) <= 1, history


def reference(
    tmp: Path, redis_url: str, pg: dict[str, str], mock: MockProcess, docs: dict[str, str], **extra: str
) -> Knowledge:
    """What ONE instance builds from ``docs`` (a fresh database; the same mock LLM)."""
    (tmp / "reference").mkdir(exist_ok=True)
    fleet = Fleet(tmp / "reference", redis_url, fresh_database(pg), mock, **extra)
    try:
        fleet.start(1)
        base = fleet.any_base()
        headers = make_tenant(base, "acme")
        sent = [upload(base, headers, name, text) for name, text in docs.items()]
        views = wait_final(fleet, [(headers, t["task_id"]) for t in sent], timeout=600)
        assert [v["status"] for v in views.values()] == ["completed"] * len(sent)
        return pg_knowledge(fleet.pg, WORKSPACE)
    finally:
        fleet.stop()


def chunk_count(base: str, headers: dict[str, str], sent: list[dict]) -> int:
    return sum(
        int(httpx.get(f"{base}/documents/{t['doc_id']}", headers=headers, timeout=30).json()["chunks_count"])
        for t in sent
    )


@pytest.mark.parametrize("instances", [2, 3])
def test_every_instance_indexes_documents_of_one_workspace_and_the_graph_equals_one_instances(
    fleet_factory,  # noqa: F811
    mock_llm: MockProcess,  # noqa: F811
    tmp_path: Path,
    redis_url: str,
    pg_env: dict[str, str],  # noqa: F811
    instances: int,
) -> None:
    """Catches: a non-owner adding no ingestion capacity (every document indexed by the owner), a
    task completed twice or a chunk extracted twice (a guest claim beside the owner's), and a lost
    update of an entity merged by two instances at once (graph, chunk lists, vectors differ from
    one instance's)."""
    fleet = fleet_factory(LLM_MAX_ASYNC="2", **GUESTS, **SUMMARIES_SOON)
    fleet.start(instances)
    base = fleet.bases["inst-0"]
    headers = make_tenant(base, "acme")
    docs = texts("guestdoc", 16)
    # Merges stop at their first summary call (inside their locks, after reading the entity) until
    # documents merge on two instances at once: without the graph locks both would rewrite the
    # shared entities from what they read (lost updates, caught by the comparison below).
    hold_llm(mock_llm, "summary")
    sent = [upload(base, headers, name, text) for name, text in docs.items()]
    ids = [t["task_id"] for t in sent]
    try:
        wait_sync(
            lambda: mock_stats(mock_llm)["held"] >= 1 and len(merging_on(fleet, redis_url, ids)) >= 2,
            timeout=300,
            message="documents merging on two instances while a merge holds a summary call",
        )
    finally:
        release_llm(mock_llm)
    views = wait_final(fleet, [(headers, t["task_id"]) for t in sent], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(sent)
    completed_once(task_records(fleet, redis_url, [t["task_id"] for t in sent]))
    chunks = chunk_count(base, headers, sent)
    assert mock_kinds(mock_llm)["extract"] == chunks, "a chunk was extracted twice"
    done = completions(fleet)
    assert sum(d["all"] for d in done.values()) == len(sent), done
    assert len([name for name, d in done.items() if d["all"] > 0]) >= 2, done
    assert sum(d["guest"] for d in done.values()) >= 2, done
    check_each_entity_merged_once(fleet.pg, WORKSPACE)
    shared = pg_knowledge(fleet.pg, WORKSPACE)
    fleet.stop()
    assert_same_knowledge(shared, reference(tmp_path, redis_url, pg_env, mock_llm, docs, **SUMMARIES_SOON))


def merging_on(fleet: Fleet, redis_url: str, task_ids: list[str]) -> set[str]:
    """The instances with one of these documents at its merge."""
    return {
        r["owner"]
        for r in task_records(fleet, redis_url, task_ids)
        if r.get("stage") == "merging" and r.get("owner")
    }


@pytest.fixture
def guest_llm() -> Iterator[MockProcess]:
    """A mock LLM of the guest's own: holding its summary calls stops the guest's merges only."""
    proc = start_mock_llm(latency=0.3)
    try:
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def owner_then_guest(fleet: Fleet, guest_llm: MockProcess, warm: dict[str, str]) -> tuple[dict, list[dict]]:
    """inst-0 takes the workspace with the ``warm`` documents, then inst-1 starts on ``guest_llm``
    (each names its pooled connections for the write audit). Returns the tenant's headers and the
    warm tasks."""
    fleet.common["POSTGRES_SERVER_SETTINGS"] = "application_name=lr-inst-0"
    fleet.start_one("inst-0")
    base = fleet.bases["inst-0"]
    headers = make_tenant(base, "acme")
    sent = [upload(base, headers, name, text) for name, text in warm.items()]
    views = wait_final(fleet, [(headers, t["task_id"]) for t in sent], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(sent)
    assert owners(fleet.pg) == ["inst-0"]
    fleet.common["POSTGRES_SERVER_SETTINGS"] = "application_name=lr-inst-1"
    fleet.common["LLM_BASE_URL"] = guest_llm.base_url
    fleet.start_one("inst-1")
    return headers, sent


def extractions(*mocks: MockProcess) -> int:
    return sum(int(mock_kinds(m).get("extract", 0)) for m in mocks)


def guest_merging(fleet: Fleet, redis_url: str, task_ids: list[str], guest: str) -> bool:
    return any(
        r.get("owner") == guest and r.get("stage") == "merging"
        for r in task_records(fleet, redis_url, task_ids)
    )


def hold_a_guest_merge(
    fleet: Fleet,
    guest_llm: MockProcess,
    redis_url: str,
    headers: dict[str, str],
    owner: str,
    guest: str,
    prefix: str,
) -> tuple[dict[str, str], list[dict]]:
    """Upload 10 more documents to the owner with the guest's summary calls held, and return once a
    guest merge is stopped inside its locks at a summary: (their texts, their upload answers)."""
    hold_llm(guest_llm, "summary")
    later = texts(prefix, 10)
    more = [upload(fleet.bases[owner], headers, name, text) for name, text in later.items()]
    ids = [t["task_id"] for t in more]
    wait_sync(
        lambda: mock_stats(guest_llm)["held"] >= 1 and guest_merging(fleet, redis_url, ids, guest),
        timeout=300,
        message="a guest's merge holding a summary call",
    )
    return later, more


def test_a_deletion_on_the_owner_beside_a_guests_merges_loses_and_resurrects_nothing(
    fleet_factory,  # noqa: F811
    mock_llm: MockProcess,  # noqa: F811
    guest_llm: MockProcess,
    tmp_path: Path,
    redis_url: str,
    pg_env: dict[str, str],  # noqa: F811
) -> None:
    """Catches: a deletion's rebuild of shared entities running while another instance merges them
    (a merged description or chunk list of the deleted document comes back, or the guest's merge is
    lost): the result must equal one instance that never saw the deleted document."""
    fleet = fleet_factory(LLM_MAX_ASYNC="2", **GUESTS, OWNER_IDLE_RELEASE_SECONDS="300", **SUMMARIES_SOON)
    first = texts("early", 4)
    headers, sent = owner_then_guest(fleet, guest_llm, first)
    owner, guest = ["inst-0"], "inst-1"
    victim = sent[0]

    later, more = hold_a_guest_merge(fleet, guest_llm, redis_url, headers, owner[0], guest, "late")
    ids = [t["task_id"] for t in more]
    answer: dict = {}

    def delete() -> None:
        answer["response"] = httpx.delete(
            f"{fleet.bases[owner[0]]}/documents/{victim['doc_id']}", headers=headers, timeout=600
        )

    deleting = threading.Thread(target=delete)
    deleting.start()
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    try:
        # The deletion has begun on the owner (its mark is set) while the merges are held.
        wait_sync(
            lambda: str(client.get(f"{fleet.prefix}doc:acme:{victim['doc_id']}") or "").startswith("!"),
            timeout=60,
            message="the deletion started",
        )
    finally:
        client.close()
        release_llm(guest_llm)
        deleting.join(timeout=600)
    assert answer["response"].status_code == 200, answer["response"].text
    views = wait_final(fleet, [(headers, t) for t in ids], timeout=600)
    assert [v["status"] for v in views.values()] == ["completed"] * len(ids)
    done = completions(fleet)
    assert done[guest]["guest"] >= 1, done
    check_each_entity_merged_once(fleet.pg, WORKSPACE)
    kept = pg_knowledge(fleet.pg, WORKSPACE)
    fleet.stop()
    assert_forgotten(kept, [marker_in(first["early0.txt"], "early")])
    survivors = {name: text for name, text in {**first, **later}.items() if name != "early0.txt"}
    assert_same_knowledge(kept, reference(tmp_path, redis_url, pg_env, mock_llm, survivors, **SUMMARIES_SOON))


@pytest.mark.parametrize("how", ["kill", "stop"])
def test_a_guest_lost_mid_merge_has_its_tasks_run_elsewhere_once_and_writes_nothing_after(
    fleet_factory,  # noqa: F811
    mock_llm: MockProcess,  # noqa: F811
    guest_llm: MockProcess,
    tmp_path: Path,
    redis_url: str,
    pg_env: dict[str, str],  # noqa: F811
    how: str,
) -> None:
    """Catches: a dead or frozen guest's tasks waiting for their lease (300 s here: the test would
    time out), a task completed twice, a frozen guest that resumes and writes into the workspace
    after its lock session was ended (the answers of its held summary calls are waiting for it),
    and what it merged before being lost staying half-done in the graph."""
    fleet = fleet_factory(
        LLM_MAX_ASYNC="2", **GUESTS, OWNER_IDLE_RELEASE_SECONDS="300", **SUMMARIES_SOON, **LONG_LEASE
    )
    first = texts("warm", 3)
    headers, sent = owner_then_guest(fleet, guest_llm, first)
    install_write_audit(fleet.pg)
    owner, guest = ["inst-0"], "inst-1"

    later, more = hold_a_guest_merge(fleet, guest_llm, redis_url, headers, owner[0], guest, "lost")
    ids = [t["task_id"] for t in more]
    held_by_guest = [r["task_id"] for r in task_records(fleet, redis_url, ids) if r.get("owner") == guest]
    proc = fleet.procs[guest]
    if how == "kill":
        fleet.kill(guest)
    else:
        proc.send_signal(signal.SIGSTOP)
        frozen_base = fleet.bases.pop(guest)  # polls go to the live instance meanwhile
    try:
        wait_sync(
            lambda: (
                not pg_fetch(
                    fleet.pg,
                    "SELECT 1 FROM pg_stat_activity WHERE application_name = $1",
                    f"ragsvc-owner:{guest}",
                )
            ),
            timeout=120,
            message="the lost guest's lock session ended",
        )
        wait_sync(
            lambda: all(
                r.get("owner") != guest or r.get("status") != "processing"
                for r in task_records(fleet, redis_url, held_by_guest)
            ),
            timeout=120,
            message="the lost guest's tasks taken back (not by their 300 s lease)",
        )
        views = wait_final(fleet, [(headers, t) for t in ids], timeout=600)
    finally:
        if how == "stop":
            # The answers of its held summary calls reach it while it is frozen: on resuming it has
            # merges to write before it can notice anything (all of which must be refused).
            release_llm(guest_llm)
            wait_sync(lambda: mock_stats(guest_llm)["held"] == 0, message="held calls answered")
            resumed_at = time.time()
            proc.send_signal(signal.SIGCONT)
            fleet.bases[guest] = frozen_base
    assert [v["status"] for v in views.values()] == ["completed"] * len(ids)
    records = task_records(fleet, redis_url, ids)
    completed_once(records)
    for record in records:
        if record["task_id"] in held_by_guest:
            assert "lock session" in (record.get("history") or ""), record.get("history")
    survivor = fleet.bases[owner[0]]
    chunks = chunk_count(survivor, headers, sent + more)
    assert chunks <= extractions(mock_llm, guest_llm) <= chunks + 2
    if how == "stop":
        log = fleet.tmp / f"{guest}.log"
        wait_sync(
            lambda: "guest work on" in log.read_text(errors="replace"),
            timeout=120,
            message="the resumed guest noticing that its lock session ended",
        )
        late = audited_writes(fleet.pg, f"lr-{guest}", after=resumed_at)
        assert late == [], f"the resumed guest wrote after losing its session: {json.dumps(late)[:2000]}"
    check_each_entity_merged_once(fleet.pg, WORKSPACE)
    kept = pg_knowledge(fleet.pg, WORKSPACE)
    fleet.stop()
    assert_same_knowledge(
        kept, reference(tmp_path, redis_url, pg_env, mock_llm, {**first, **later}, **SUMMARIES_SOON)
    )
