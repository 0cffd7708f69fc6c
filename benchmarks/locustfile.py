"""Load-test your own deployment with locust (a bench extra: `pip install -e .[bench]`).

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000                 # web UI on :8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \\
           --headless -u 50 -r 10 -t 2m --csv results                              # CI-style run

Three kinds of users, weighted like the seeds' systems see them:

- `Uploader` (weight 2): uploads a small generated document (text or Markdown, some with a higher
  priority), then polls `GET /task/{id}` until it is final, like a client of the 202 pattern does.
- `Asker` (weight 3): asks questions (`/query`, modes naive/local/hybrid, `only_need_context`
  half of the time so the offline default stays cheap), and now and then a background query
  (`POST /query/async`, then polls it) when the server offers it.
- `DashboardWatcher` (weight 1): what the /ui dashboard does: lists tasks and queue stats every
  few seconds.

Environment: `RAGSVC_API_KEY` (sent as `X-API-Key`) for deployments with keys,
`LOCUST_DOC_SENTENCES` (default 40) for document size. Every request is bounded by a timeout;
polls give up after `LOCUST_POLL_SECONDS` (default 300) so a stuck task shows as a failure.
"""

from __future__ import annotations

import os
import random
import time
import uuid

from locust import HttpUser, between, task

API_KEY = os.environ.get("RAGSVC_API_KEY")
DOC_SENTENCES = int(os.environ.get("LOCUST_DOC_SENTENCES", "40"))
POLL_SECONDS = float(os.environ.get("LOCUST_POLL_SECONDS", "300"))
FINAL = {"completed", "failed", "cancelled"}

_SUBJECTS = ["reservoir", "pipeline", "district", "warehouse", "library", "observatory", "harbour"]
_NAMES = ["Aldermoor", "Brightwater", "Coldharbour", "Dunmore", "Eastfield", "Fairhaven", "Glenrock"]
_ZH = ["青龙水库的蓄水量在雨季增加。", "西湖街道办事处负责社区服务。", "系统通过异步任务处理上传的文档。"]
_QUESTIONS = [
    "Which district manages the reservoir?",
    "What does the observatory in Glenrock study?",
    "青龙水库的蓄水量什么时候增加？",
    "How are uploaded documents processed?",
]


def _headers() -> dict[str, str]:
    return {"X-API-Key": API_KEY} if API_KEY else {}


def make_document() -> tuple[str, bytes]:
    """A small unique document: English sentences with named things, some Chinese lines."""
    marker = uuid.uuid4().hex[:8]
    lines = [f"# Report {marker}"]
    for i in range(DOC_SENTENCES):
        if i % 7 == 3:
            lines.append(random.choice(_ZH))
        else:
            subject, name = random.choice(_SUBJECTS), random.choice(_NAMES)
            lines.append(f"The {subject} of {name} recorded event {marker}-{i} during the survey.")
    suffix = random.choice([".txt", ".md"])
    return f"report-{marker}{suffix}", "\n".join(lines).encode()


class _Client(HttpUser):
    abstract = True

    def wait_final(self, task_id: str, name: str) -> None:
        """Poll like a client: GET /task/{id} with a growing interval, bounded in time."""
        deadline = time.monotonic() + POLL_SECONDS
        delay = 0.2
        while time.monotonic() < deadline:
            with self.client.get(
                f"/task/{task_id}", headers=_headers(), name=name, timeout=30, catch_response=True
            ) as response:
                if response.status_code != 200:
                    response.failure(f"poll answered {response.status_code}")
                    return
                if response.json().get("status") in FINAL:
                    response.success()
                    return
            time.sleep(delay)
            delay = min(2.0, delay * 1.5)
        self.environment.events.request.fire(
            request_type="POLL", name=name, response_time=POLL_SECONDS * 1000, response_length=0,
            exception=TimeoutError(f"task {task_id} not final after {POLL_SECONDS:g} s"), context={},
        )  # fmt: skip


class Uploader(_Client):
    weight = 2
    wait_time = between(1, 5)

    @task
    def upload_and_wait(self) -> None:
        filename, body = make_document()
        priority = random.choice([0, 0, 0, 5, 9])
        with self.client.post(
            "/insert",
            params={"priority": priority},
            files={"file": (filename, body)},
            headers=_headers(),
            name="/insert",
            timeout=60,
            catch_response=True,
        ) as response:
            if response.status_code not in (200, 202):
                response.failure(f"upload answered {response.status_code}: {response.text[:200]}")
                return
            task_id = response.json()["task_id"]
        self.wait_final(task_id, "/task/{id} (upload)")


class Asker(_Client):
    weight = 3
    wait_time = between(1, 3)

    @task(5)
    def query(self) -> None:
        body = {
            "query": random.choice(_QUESTIONS),
            "mode": random.choice(["naive", "local", "hybrid"]),
            "only_need_context": random.random() < 0.5,
        }
        self.client.post("/query", json=body, headers=_headers(), name="/query", timeout=120)

    @task(1)
    def background_query(self) -> None:
        body = {"query": random.choice(_QUESTIONS), "mode": "hybrid"}
        with self.client.post(
            "/query/async", json=body, headers=_headers(), name="/query/async", timeout=30,
            catch_response=True,
        ) as response:  # fmt: skip
            if response.status_code == 404:
                response.success()  # an older server without background queries
                return
            if response.status_code != 202:
                response.failure(f"answered {response.status_code}")
                return
            task_id = response.json()["task_id"]
        self.wait_final(task_id, "/task/{id} (query)")


class DashboardWatcher(_Client):
    weight = 1
    wait_time = between(2, 4)

    @task
    def refresh(self) -> None:
        self.client.get("/tasks", params={"limit": 50}, headers=_headers(), name="/tasks", timeout=30)
        self.client.get("/api/queue/stats", headers=_headers(), name="/api/queue/stats", timeout=30)
