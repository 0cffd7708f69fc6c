"""Load-test your own deployment with locust (a bench extra: `pip install -e .[bench]`).

    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000                 # web UI on :8089
    locust -f benchmarks/locustfile.py --host http://127.0.0.1:8000 \\
           --headless -u 50 -r 10 -t 2m --csv results                              # CI-style run

Every user is a client of the 202 pattern paced at ``LOCUST_PACE`` requests per second (default 1;
locust's ``constant_throughput``): each tick sends one request, so ``-u N`` offers about
``N × LOCUST_PACE`` requests per second, whatever the service's latency (as long as a request
takes less than a tick; a slower one delays only its own user). The SSE follower is the
exception: one tick uploads, the next holds a stream open until its task is final. The mix, by
user weight (what the seeds' 202 clients generate: mostly polls):

- `Uploader` (weight 75): uploads a small generated document (`POST /insert`, text or Markdown,
  some with a higher priority), then polls `GET /task/{id}` once a tick until the task is final,
  then uploads the next one.
- `Asker` (weight 8): asks questions, four out of five in the foreground (`POST /query`, modes
  naive/local/hybrid/mix, `only_need_context` half of the time), the fifth in the background
  (`POST /query/async`, then polls that task once a tick until it is final).
- `SseFollower` (weight 10): submits a text (`POST /insert/text`) and follows its task over
  Server-Sent Events (`GET /task/{id}/events`) until the final event, with a bounded read.
- `Watcher` (weight 7): what `ragsvc watch` and the /ui dashboard poll: the recent tasks
  (`GET /tasks?limit=20`, `ragsvc watch`'s page) and the queue stats (`GET /api/queue/stats`, the
  dashboard's refresh), alternately. (The dashboard's task table itself is fed by `GET /events`,
  which this mix leaves out: one stream per open dashboard, not per client.)

The SSE follower reports two things besides its HTTP requests (locust type ``SSE``, not HTTP
requests): ``task event delay`` per event received (now minus the event's ``id``, the task's
``updated_at``: how late a change reaches the client; same clock, as the client and service run on
one machine here) and ``stream to final`` (the stream's whole length, i.e. how long the task took
from the client's point of view). The stream entry itself (``/task/{id}/events``) is timed by locust
to its response headers: the stream is open.

Environment: `RAGSVC_API_KEY` (sent as `X-API-Key`) for deployments with keys,
`LOCUST_DOC_SENTENCES` (default 40) for document size, `LOCUST_PACE` (default 1) requests per
second per user. Every request is bounded by a timeout; a task still not final after
`LOCUST_POLL_SECONDS` (default 300) of polling or streaming shows as a failure.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid

import gevent
from locust import FastHttpUser, constant_throughput, task

API_KEY = os.environ.get("RAGSVC_API_KEY")
DOC_SENTENCES = int(os.environ.get("LOCUST_DOC_SENTENCES", "40"))
POLL_SECONDS = float(os.environ.get("LOCUST_POLL_SECONDS", "300"))
PACE = float(os.environ.get("LOCUST_PACE", "1"))
FINAL = {"completed", "failed", "cancelled"}
#: Locust "request types" of the SSE follower's measurements that are not HTTP requests.
SSE_TYPE = "SSE"

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


def make_text() -> tuple[str, str]:
    """A small unique document: English sentences with named things, some Chinese lines."""
    marker = uuid.uuid4().hex[:8]
    lines = [f"# Report {marker}"]
    for i in range(DOC_SENTENCES):
        if i % 7 == 3:
            lines.append(random.choice(_ZH))
        else:
            subject, name = random.choice(_SUBJECTS), random.choice(_NAMES)
            lines.append(f"The {subject} of {name} recorded event {marker}-{i} during the survey.")
    return marker, "\n".join(lines)


def make_document() -> tuple[str, bytes]:
    marker, text = make_text()
    return f"report-{marker}{random.choice(['.txt', '.md'])}", text.encode()


class _Client(FastHttpUser):
    """A paced client with at most one task of its own in flight, polled once a tick."""

    abstract = True
    wait_time = constant_throughput(PACE)
    network_timeout = 60.0
    connection_timeout = 30.0

    def on_start(self) -> None:
        self.pending: tuple[str, str, float] | None = None  # task id, stats name, poll deadline

    def follow(self, task_id: str, name: str) -> None:
        self.pending = (task_id, name, time.monotonic() + POLL_SECONDS)

    def poll(self) -> None:
        """One poll of the task in flight, as a client of the 202 pattern sends every tick."""
        assert self.pending is not None
        task_id, name, deadline = self.pending
        with self.client.get(
            f"/task/{task_id}", headers=_headers(), name=name, catch_response=True
        ) as response:
            if response.status_code != 200:
                response.failure(f"poll answered {response.status_code}")
                self.pending = None
            elif response.json().get("status") in FINAL:
                self.pending = None
            elif time.monotonic() > deadline:
                response.failure(f"task {task_id} not final after {POLL_SECONDS:g} s")
                self.pending = None

    def accepted(self, response, expected: tuple[int, ...] = (200, 202)) -> str | None:
        """The task id of a 202 (or 200 duplicate) answer, else marks the request failed."""
        if response.status_code not in expected:
            response.failure(f"answered {response.status_code}: {response.text[:200]}")
            return None
        return response.json()["task_id"]


class Uploader(_Client):
    weight = 75

    @task
    def tick(self) -> None:
        if self.pending is not None:
            self.poll()
            return
        filename, body = make_document()
        with self.client.post(
            "/insert",
            params={"priority": random.choice([0, 0, 0, 5, 9])},
            files={"file": (filename, body)},
            headers=_headers(),
            name="/insert",
            catch_response=True,
        ) as response:
            task_id = self.accepted(response)
        if task_id:
            self.follow(task_id, "/task/{id} (upload)")


class Asker(_Client):
    weight = 8

    @task
    def tick(self) -> None:
        if self.pending is not None:
            self.poll()
            return
        if random.random() < 0.8:
            body = {
                "query": random.choice(_QUESTIONS),
                "mode": random.choice(["naive", "local", "hybrid", "mix"]),
                "only_need_context": random.random() < 0.5,
            }
            self.client.post("/query", json=body, headers=_headers(), name="/query")
            return
        body = {"query": random.choice(_QUESTIONS), "mode": "hybrid"}
        with self.client.post(
            "/query/async", json=body, headers=_headers(), name="/query/async", catch_response=True
        ) as response:
            task_id = self.accepted(response, (202,))
        if task_id:
            self.follow(task_id, "/task/{id} (query)")


class SseFollower(_Client):
    weight = 10

    @task
    def tick(self) -> None:
        if self.pending is None:
            marker, text = make_text()
            with self.client.post(
                "/insert/text",
                json={"text": text, "doc_id": f"sse-{marker}"},
                headers=_headers(),
                name="/insert/text",
                catch_response=True,
            ) as response:
                task_id = self.accepted(response)
            if task_id:
                self.follow(task_id, "/task/{id}/events")
            return
        task_id, name, deadline = self.pending
        self.pending = None
        self.stream(task_id, name, deadline)

    def stream(self, task_id: str, name: str, deadline: float) -> None:
        """Follow the task's events until the final one (the server then ends the stream), for at
        most until ``deadline``: a bounded read, whatever the server does. Locust times the
        request itself to its headers (the stream is open); the events are timed here."""
        fire = self.environment.events.request.fire
        start = time.perf_counter()
        status, received, error = None, 0, None
        response = self.client.get(
            f"/task/{task_id}/events", headers={**_headers(), "Accept": "text/event-stream"},
            name=name, stream=True,
        )  # fmt: skip
        raw = getattr(response, "_response", None)
        if response.status_code != 200 or raw is None:
            return  # reported by locust as a failed request
        try:
            with gevent.Timeout(max(0.0, deadline - time.monotonic()), TimeoutError):
                event_id = None
                while line := raw.readline(b"\n"):  # b"" once the server ended the stream
                    received += len(line)
                    line = line.rstrip(b"\r\n")
                    if line.startswith(b"id:"):
                        event_id = float(line[3:])
                    elif line.startswith(b"data:") and event_id is not None:
                        fire(
                            request_type=SSE_TYPE, name="task event delay",
                            response_time=max(0.0, time.time() - event_id) * 1000,
                            response_length=len(line), exception=None, context={},
                        )  # fmt: skip
                        status = json.loads(line[5:]).get("status")
                        event_id = None
            if status not in FINAL:
                error = RuntimeError(f"stream ended with the task {status or 'never shown'}")
        except TimeoutError:
            error = TimeoutError(f"task {task_id} not final after {POLL_SECONDS:g} s")
        except Exception as exc:  # noqa: BLE001 - a broken stream is a failed stream, not a crash
            error = exc
        finally:
            raw.release()
        fire(
            request_type=SSE_TYPE, name="stream to final", response_time=(time.perf_counter() - start) * 1000,
            response_length=received, exception=error, context={},
        )  # fmt: skip


class Watcher(_Client):
    weight = 7

    def on_start(self) -> None:
        super().on_start()
        self.ticks = 0

    @task
    def tick(self) -> None:
        self.ticks += 1
        if self.ticks % 2:
            self.client.get("/tasks", params={"limit": 20}, headers=_headers(), name="/tasks")
        else:
            self.client.get("/api/queue/stats", headers=_headers(), name="/api/queue/stats")
