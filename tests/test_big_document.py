"""A big text file beside small ones (issue 25 item 8), on the real service process.

A 99 MB text file is ~25,000 chunks: its chunk embeddings used to queue ahead of every other
document of the tenant (one-line documents uploaded beside it waited minutes), its tokenization
held the service's GIL, and it was held in the service's memory several times over. Here a ~12 MB
file (same mechanics, a fraction of the time) is uploaded with the mock embedding endpoint answering
each call after 0.5 s, so its ~85 chunk batches take over 20 s. One-line documents uploaded once its
embeddings have started must all complete while it is still embedding its chunks (stage
``chunking``): they take turns with it call by call instead of waiting behind it. No timing is
asserted: the order of events, counts, and the service's memory against a bound relative to the
file's size.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import psutil
import pytest

from benchmarks.common import RssSampler
from tests.helpers import mock_stats, wait_sync
from tests.procs import service_env, start_mock_llm, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(180)]

SMALL = 6
#: Service memory growth allowed while the big file is indexed, in multiples of its size: measured
#: 6.6x (the text held once, its chunks, their records and vectors, the flush's encoding of them),
#: 13x when the service tokenized it itself (~36 bytes per token as Python ints) and held it twice.
RSS_GROWTH_FACTOR = 10


def big_text(path: Path, megabytes: float) -> int:
    """Numbered lines of varied words (no two chunks alike), about ``megabytes`` MB."""
    words = "ferry harbour island timetable inspector Wang Fang checked pier lights at dawn".split()
    with path.open("w", encoding="utf-8") as out:
        written, n = 0, 0
        while written < megabytes * 1_000_000:
            lines = []
            for _ in range(1000):
                n += 1
                phrase = " ".join(words[(n + 3 * j) % len(words)] for j in range(10))
                lines.append(f"Record {n}: {phrase}.\n")
            block = "".join(lines)
            out.write(block)
            written += len(block)
    return path.stat().st_size


def test_big_text_file_beside_small_ones(tmp_path: Path, listen) -> None:
    mock = start_mock_llm(0.0, "--embedding-latency", "0.5")
    http = listen()
    env = service_env(
        tmp_path / "data",
        http,
        mock,
        EMBEDDING_PROVIDER="openai",
        EMBEDDING_BASE_URL=mock.base_url,
        EMBEDDING_API_KEY="test-key",
        EMBEDDING_MODEL="mock-embedding",
        EMBEDDING_DIM="384",
        EMBEDDING_MAX_ASYNC="2",
        MAX_CONCURRENT_TASKS="4",
        MAX_UPLOAD_BYTES=str(16 * 1024 * 1024),
    )
    proc = start_service(env, tmp_path / "service.log")
    path = tmp_path / "big.txt"
    size = big_text(path, 12)
    try:
        with httpx.Client(base_url=http.url, timeout=60) as client:
            idle = psutil.Process(proc.pid).memory_info().rss
            rss = RssSampler(proc.pid).start()
            with path.open("rb") as fh:
                r = client.post("/insert", files={"file": ("big.txt", fh, "text/plain")})
            assert r.status_code == 202, r.text
            big = r.json()

            def embedding_calls() -> int:
                return int(mock_stats(mock)["calls"].get("embeddings", 0))

            # Its chunk embeddings have begun (nothing else is being indexed yet).
            wait_sync(lambda: embedding_calls() >= 2, timeout=60, message="the big file's embeddings")

            small = []
            for i in range(SMALL):
                note = f"Note {i}: Harbour Island pier {i} lamp fixed.\n"
                r = client.post("/insert", files={"file": (f"note-{i}.txt", note)})
                assert r.status_code == 202, r.text
                small.append(r.json())

            def small_done() -> bool:
                return all(client.get(f"/task/{t['task_id']}").json()["status"] == "completed" for t in small)

            wait_sync(small_done, timeout=90, interval=0.2, message="the one-line documents completed")
            view = client.get(f"/task/{big['task_id']}").json()
            assert (view["status"], view["stage"]) == ("processing", "chunking"), (
                "the one-line documents waited for the big file's chunk embeddings",
                view,
            )
            peak = rss.stop()
            assert peak - idle < RSS_GROWTH_FACTOR * size, (
                f"the service grew by {(peak - idle) / 2**20:.0f} MiB for a {size / 2**20:.0f} MiB text"
            )

            r = client.delete(f"/task/{big['task_id']}")
            assert r.status_code == 202, r.text
            wait_sync(
                lambda: client.get(f"/task/{big['task_id']}").json()["status"] == "cancelled",
                timeout=60,
                message="the big file cancelled",
            )
            # Nothing acknowledged was lost; the cancelled file left nothing behind.
            for t in small:
                doc = client.get(f"/documents/{t['doc_id']}")
                assert doc.status_code == 200 and doc.json()["status"] == "processed", doc.text
            assert client.get(f"/documents/{big['doc_id']}").status_code == 404
    finally:
        stop_process(proc)
        stop_process(mock)
