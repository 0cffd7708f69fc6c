"""The GET /task hot path stays on the event loop, still answers as before; and the benchmark helpers that
turn raw measurements (mock call records, Prometheus histograms, py-spy stacks) into the reported figures
compute what they claim. No timing assertions: the benchmarks measure, these tests check behaviour."""

from __future__ import annotations

import inspect

import pytest

from api.routes import health, tasks
from api.schemas import TaskView
from benchmarks.hotpath import summarize_profile
from benchmarks.ingest_scenarios import ideal_seconds, llm_usage
from benchmarks.metrics_scrape import histogram_quantile
from tests.conftest import make_settings, start_service, wait_for_task

pytestmark = pytest.mark.integration


def _sync_dependencies(dependant) -> list[str]:
    found = []
    for sub in dependant.dependencies:
        if not inspect.iscoroutinefunction(sub.call):
            found.append(getattr(sub.call, "__name__", repr(sub.call)))
        found += _sync_dependencies(sub)
    return found


@pytest.mark.parametrize(
    ("router", "path", "method"),
    [
        (tasks.router, "/task/{task_id}", "GET"),
        (tasks.router, "/tasks", "GET"),
        (health.router, "/api/queue/stats", "GET"),
    ],  # fmt: skip
)
def test_polled_routes_have_no_thread_pool_dependencies(router, path, method) -> None:
    """Catches a plain ``def`` dependency on a polled route: FastAPI runs those in its thread pool, one
    thread hop (and a GIL hand-off) per request — ``get_ingestion`` was one, on every GET /task/{id}."""
    route = next(r for r in router.routes if r.path == path and method in r.methods)
    assert _sync_dependencies(route.dependant) == []


async def test_get_task_still_answers_owner_and_404(tmp_path, redis_url) -> None:
    """Catches a regression of the hot path itself: the task is found and complete, an unknown or
    over-long id is the same JSON 404 (never a 500)."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_service(settings) as svc:
        r = await svc.client.post("/insert/text", json={"text": "Maria Costa works in Lisbon."})
        assert r.status_code == 202, r.text
        task_id = r.json()["task_id"]
        body = await wait_for_task(svc.client, task_id)
        assert body["task_id"] == task_id
        assert body["status"] == "completed"
        polled = await svc.client.get(f"/task/{task_id}")
        assert polled.headers["content-type"].startswith("application/json")
        # the body is still exactly the documented TaskView (every field, ISO timestamps)
        assert TaskView.model_validate(polled.json()).model_dump() == polled.json()
        assert polled.json()["created_at"].endswith("Z")
        schema = (await svc.client.get("/openapi.json")).json()
        ok = schema["paths"]["/task/{task_id}"]["get"]["responses"]["200"]["content"]["application/json"]
        assert ok["schema"]["$ref"].endswith("/TaskView")
        for bad in ("no-such-task", "x" * 100):
            missing = await svc.client.get(f"/task/{bad}")
            assert missing.status_code == 404
            assert missing.headers["content-type"].startswith("application/json")


def test_llm_idle_time_from_call_records() -> None:
    """Catches wrong idle accounting: overlapping calls count once, gaps and the tail count as idle."""
    records = [
        {"endpoint": "chat", "status": 200, "at": 1.5, "latency_s": 0.5},  # 1.0 .. 1.5
        {"endpoint": "chat", "status": 200, "at": 1.8, "latency_s": 0.5},  # 1.3 .. 1.8 (overlaps)
        {"endpoint": "embeddings", "status": 200, "at": 2.5, "latency_s": 0.5},  # not an LLM call
        {"endpoint": "chat", "status": 200, "at": 3.0, "latency_s": 0.5},  # 2.5 .. 3.0
    ]
    u = llm_usage({"calls_detail": records}, wall=4.0, allowed=2)
    assert u["idle_s"] == pytest.approx(4.0 - 0.8 - 0.5)
    assert u["before_first_call_s"] == pytest.approx(1.0)
    assert u["mean_in_flight"] == pytest.approx(1.5 / 4.0)


def test_ideal_is_never_below_one_documents_chain() -> None:
    """Catches an ideal that ignores the per-document chain (extract then glean are sequential)."""
    stats = {"calls": {"chat": 4}, "kinds": {"extract": 2, "glean": 2}}
    assert ideal_seconds(stats, docs=2, latency=0.5, allowed=16) == pytest.approx(1.0)
    assert ideal_seconds(stats, docs=2, latency=0.5, allowed=1) == pytest.approx(2.0)


def test_histogram_p99_from_bucket_deltas() -> None:
    """Catches a quantile read from the cumulative totals instead of the window's deltas."""
    name = "ragsvc_event_loop_lag_seconds_bucket"

    def buckets(a: float, b: float, inf: float) -> dict:
        return {(name, (("le", "0.01"),)): a, (name, (("le", "0.1"),)): b, (name, (("le", "+Inf"),)): inf}

    before, after = buckets(100, 100, 100), buckets(150, 200, 200)
    p99, n = histogram_quantile(before, after, "ragsvc_event_loop_lag_seconds", 0.99)
    assert n == 100
    assert 0.01 < p99 <= 0.1  # half of the window's samples are in (0.01, 0.1]


def test_profile_summary_self_and_inclusive() -> None:
    """Catches self time counted for every frame, or a function counted twice when it recurses."""
    raw = "main (a.py:1);f (b.py:2);f (b.py:3);g (c.py:4) 3\nmain (a.py:1);h (d.py:5) 1\n"
    s = summarize_profile(raw)
    assert s["samples"] == 4
    assert dict(s["self"]) == {"g (c.py)": 75.0, "h (d.py)": 25.0}
    assert dict(s["inclusive"])["f (b.py)"] == 75.0


async def test_long_lived_objects_are_frozen_while_the_service_runs(tmp_path, redis_url) -> None:
    """Catches the start-up heap going back under the collector's full passes (100-150 ms pauses
    on the loop: the p99 of GET /task at 50 connections), and a stopped app leaving its objects
    frozen for good (an app started and stopped many times in one process would leak)."""
    import gc
    import weakref

    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_service(settings) as svc:
        assert (await svc.client.get("/health")).status_code == 200
        assert gc.get_freeze_count() > 10_000  # the imported libraries and the service's objects

        class Node:
            pass

        cycle = Node()
        cycle.me = cycle  # type: ignore[attr-defined]
        gone = weakref.ref(cycle)
        del cycle
        gc.collect()
        assert gone() is None  # garbage made after start-up is still collected
    assert gc.get_freeze_count() == 0
