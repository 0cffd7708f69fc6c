"""Mixed traffic at a constant rate (issue 25 item 12): ``python -m benchmarks.mixed_load``.

Starts the service as it is deployed (``python main.py`` processes on an external ``redis-server``),
pointed at the OpenAI-compatible mock LLM and embedding server (benchmarks/mock_llm) through the
documented ``LLM_*`` / ``EMBEDDING_*`` variables, exactly as a user with a real provider configures
it: the models' cost is the provider's, off the service, which is what a throughput test of the
service should measure (the mock answers after ``--llm-latency`` / ``--embedding-latency``). Then
runs locust headless (benchmarks/locustfile.py: every user paced at ``--pace`` requests per second
with ``constant_throughput``) at ``--rate`` requests per second for ``--seconds`` seconds, in its
own processes (``--processes`` workers, never on the service's event loop), and writes its own
block of docs/benchmarks.md: achieved rate, failures, p50/p95/p99 per route from locust's CSV, the
rate and the poll's p99 over time, the service's RSS and CPU, the machine's load average.

Deployment (``--api-processes``, README "Roles: api and worker processes"): by default one
``ROLE=worker`` process (the tasks of both lanes: ingestion and queries) and 2 ``ROLE=api``
processes, each with its own ``INSTANCE_ID``, serving one listening socket handed to them as
``LISTEN_FD`` (as a supervisor or gunicorn does); one process's event loop does not serve 1,000
requests/s of this mix (about 700-900 on this machine, measured). ``--api-processes 0`` runs a
single ``ROLE=all`` process. Settings that differ from the defaults, as a deployment expecting this
traffic sets them: ``MAX_CONNECTIONS_PER_CLIENT=0`` (every simulated client comes from 127.0.0.1,
as behind a proxy), ``SSE_MAX_STREAMS_PER_TENANT=1000`` (one tenant holds every follower's
stream), ``LLM_MAX_ASYNC`` and ``MAX_CONCURRENT_QUERIES`` ``--llm-max-async`` (64: a provider that
takes that many concurrent calls; at the default 8 and 4 the foreground queries queue behind each
other for the LLM). Everything shares the machine's cores.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import math
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from benchmarks.common import (
    PY,
    ROOT,
    Mock,
    RedisServer,
    Service,
    machine_info,
    stop_process,
    wait_http,
)
from benchmarks.doc_blocks import splice_block

BEGIN, END = "<!-- mixed-load:begin -->", "<!-- mixed-load:end -->"
LOCUSTFILE = ROOT / "benchmarks" / "locustfile.py"
#: Locust row types that are the SSE follower's measurements, not HTTP requests.
NOT_HTTP = {"SSE"}
#: The share of locust users that are SSE followers (SseFollower.weight out of the weights' sum in
#: benchmarks/locustfile.py): they hold streams instead of sending a request a tick, so the other
#: users alone are counted to offer the target rate.
SSE_SHARE = 10 / 100
#: The hot path: an uploader's poll of its task.
POLL_ROUTE = "/task/{id} (upload)"
#: Seconds from locust's start until its statistics are reset (every user spawned within 10 s).
RAMP = 12


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


@dataclass
class Deployment:
    """The service's processes on one listening socket, started and stopped by pid."""

    workdir: Path
    redis_url: str
    mock: Mock
    api_processes: int
    env_extra: dict[str, str]
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    sock: socket.socket | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _env(self, **changes: str) -> dict[str, str]:
        env = Service(self.workdir, self.redis_url, self.mock, env_extra=self.env_extra).env()
        env.pop("PORT", None)
        env.update(changes)
        return env

    def _spawn(self, name: str, env: dict[str, str], fds: tuple[int, ...] = ()) -> None:
        out = open(self.workdir / f"{name}.log", "ab")  # noqa: SIM115 - lives with the process
        self.procs[name] = subprocess.Popen(
            [PY, "main.py"], cwd=ROOT, env=env, stdout=out, stderr=out, pass_fds=fds
        )

    def start(self) -> Deployment:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(2048)
        self.port = self.sock.getsockname()[1]
        fd = self.sock.fileno()
        os.set_inheritable(fd, True)
        if self.api_processes == 0:
            self._spawn("service", self._env(ROLE="all", LISTEN_FD=str(fd), INSTANCE_ID="mixed-all"), (fd,))
        else:
            # The worker serves /health and /metrics on a port of its own; the api processes share
            # the socket clients connect to (the kernel hands each connection to one of them).
            self._spawn("worker", self._env(ROLE="worker", PORT="0", INSTANCE_ID="mixed-worker"))
            for i in range(self.api_processes):
                env = self._env(ROLE="api", LISTEN_FD=str(fd), INSTANCE_ID=f"mixed-api-{i + 1}")
                self._spawn(f"api-{i + 1}", env, (fd,))
        for name, proc in self.procs.items():
            if name != "worker":
                wait_http(f"{self.base}/health", timeout=180, proc=proc)
        self._wait_worker()
        return self

    def _wait_worker(self, timeout: float = 180.0) -> None:
        """Every process is up once /health says ok (an api instance is degraded until it sees a
        worker)."""
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for proc in self.procs.values():
                if proc.poll() is not None:
                    raise RuntimeError(f"a service process exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base}/health", timeout=5).json().get("status") == "ok":
                    return
            time.sleep(0.2)
        raise RuntimeError("the service did not report ok")

    def pids(self) -> dict[str, int]:
        return {name: p.pid for name, p in self.procs.items()}

    def stop(self) -> None:
        for proc in self.procs.values():
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
        for proc in self.procs.values():
            stop_process(proc, timeout=30)
        if self.sock is not None:
            self.sock.close()


class Sampler:
    """RSS and CPU time of named processes and their children, every ``interval`` seconds. CPU time
    is kept per pid as last seen, so children that exit before the end (locust's workers) count."""

    def __init__(self, pids: dict[str, int], interval: float = 1.0):
        self.roots = {name: psutil.Process(pid) for name, pid in pids.items()}
        self.interval = interval
        self.rss: dict[str, list[int]] = {name: [] for name in pids}
        self.first: dict[int, float] = {}
        self.last: dict[int, tuple[str, float]] = {}
        self.load: list[tuple[float, float, float]] = []
        #: Main thread (the event loop) of each named process: (on a CPU, waiting for one) in ns.
        self.sched: dict[str, list[tuple[int, int]]] = {name: [] for name in pids}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> None:
        for name, root in self.roots.items():
            rss = 0
            with contextlib.suppress(psutil.Error):
                for p in [root, *root.children(recursive=True)]:
                    with contextlib.suppress(psutil.Error):
                        t = p.cpu_times()
                        used = t.user + t.system
                        self.first.setdefault(p.pid, used)
                        self.last[p.pid] = (name, used)
                        rss += p.memory_info().rss if p is root or name == "locust" else 0
            if rss:
                self.rss[name].append(rss)
            with contextlib.suppress(OSError, ValueError):
                ran, waited = Path(f"/proc/{root.pid}/schedstat").read_text().split()[:2]
                self.sched[name].append((int(ran), int(waited)))
        self.load.append(os.getloadavg())

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def __enter__(self) -> Sampler:
        self.t0 = time.monotonic()
        self._sample()
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()
        self.elapsed = time.monotonic() - self.t0

    def main_thread(self) -> dict[str, tuple[float, float]]:
        """Share of the span each process's main thread (its event loop) ran on a CPU, and waited
        for one while runnable (/proc/PID/schedstat): ran + waited near 1 is a saturated loop; the
        waiting part is time the scheduler gave to other processes."""
        out = {}
        for name, samples in self.sched.items():
            if len(samples) >= 2:
                (r0, w0), (r1, w1) = samples[0], samples[-1]
                out[name] = ((r1 - r0) / 1e9 / self.elapsed, (w1 - w0) / 1e9 / self.elapsed)
        return out

    def cores(self) -> dict[str, float]:
        """Average cores used by each named process (with its children) over the sampled span."""
        out = dict.fromkeys(self.roots, 0.0)
        for pid, (name, used) in self.last.items():
            out[name] += (used - self.first[pid]) / self.elapsed
        return out


def read_stats(prefix: Path) -> list[dict]:
    with open(f"{prefix}_stats.csv") as handle:
        return list(csv.DictReader(handle))


def _reset_at(rows: list[dict]) -> int:
    """When locust reset its statistics (``--reset-stats``: once every user runs): the running
    total drops there."""
    previous = 0
    for row in rows:
        if row["Name"] == "Aggregated":
            total = int(row["Total Request Count"])
            if total < previous:
                return int(row["Timestamp"])
            previous = total
    return int(rows[0]["Timestamp"]) + 10


def timeline(prefix: Path, seconds: int, windows: int = 5) -> list[dict]:
    """Per window of the measured span: HTTP requests per second (from locust's running totals) and
    the poll's rolling p50/p99 (the highest value locust showed in the window): is it flat?"""
    with open(f"{prefix}_stats_history.csv") as handle:
        rows = list(csv.DictReader(handle))
    if not rows:
        return []
    start = _reset_at(rows)
    width = max(10, seconds // windows)
    totals: dict[int, int] = {}
    polls: dict[int, list[tuple[float, float]]] = {}
    for row in rows:
        t = int(row["Timestamp"]) - start
        if t < 0 or t > seconds or not row["Name"] or row["Name"] == "Aggregated":
            continue
        if row["Type"] not in NOT_HTTP:
            totals[t] = totals.get(t, 0) + int(row["Total Request Count"])
        if row["Name"] == POLL_ROUTE and row["99%"] not in ("", "N/A"):
            polls.setdefault(t // width, []).append((float(row["50%"]), float(row["99%"])))
    out = []
    for lo in range(0, seconds, width):
        ts = [t for t in totals if lo <= t <= lo + width]
        if len(ts) < 2:
            continue
        first, last = min(ts), max(ts)
        p = polls.get(lo // width, [])
        out.append(
            {
                "from": lo,
                "to": lo + width,
                "rps": (totals[last] - totals[first]) / (last - first),
                "p50": max((a for a, _ in p), default=float("nan")),
                "p99": max((b for _, b in p), default=float("nan")),
            }
        )
    return out


def run_locust(
    base: str, users: int, seconds: int, processes: int, workdir: Path, env: dict[str, str]
) -> tuple[subprocess.Popen, Path]:
    prefix = workdir / "locust"
    spawn_rate = max(1, math.ceil(users / 10))  # every user within 10 s
    command = [
        PY, "-m", "locust", "-f", str(LOCUSTFILE), "--host", base, "--headless",
        "-u", str(users), "-r", str(spawn_rate), "-t", f"{seconds + RAMP}s", "--reset-stats",
        "--csv", str(prefix), "--csv-full-history", "--only-summary", "--stop-timeout", "5",
        "--processes", str(processes), "--loglevel", "WARNING",
    ]  # fmt: skip
    out = open(workdir / "locust.log", "ab")  # noqa: SIM115 - lives with the process
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out, stderr=out, start_new_session=True)
    return proc, prefix


def stop_locust(proc: subprocess.Popen) -> None:
    """Locust with --processes forks its workers; they are in the session we gave it."""
    stop_process(proc, timeout=60)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, 9)  # leftovers of our own process group only


def measure(args: argparse.Namespace, workdir: Path) -> dict:
    users = round(args.rate / args.pace / (1 - SSE_SHARE))
    load_start = os.getloadavg()  # before any process of ours: the other work on the machine
    redis = RedisServer(workdir / "redis").start()
    mock = Mock(workdir, latency=args.llm_latency).start()
    mock.config(embedding_latency=args.embedding_latency)
    env_extra = {
        "LLM_MAX_ASYNC": str(args.llm_max_async),
        "MAX_CONCURRENT_QUERIES": str(args.llm_max_async),
        "LOG_LEVEL": "WARNING",
        # Every simulated client connects from 127.0.0.1, as behind a proxy: README says 0 there.
        "MAX_CONNECTIONS_PER_CLIENT": "0",
        # One tenant holds every SSE follower's stream here (default 100 per tenant and process).
        "SSE_MAX_STREAMS_PER_TENANT": "1000",
    }
    deployment = Deployment(workdir / "service", redis.url, mock, args.api_processes, env_extra)
    locust = None
    try:
        deployment.start()
        log(f"service up on {deployment.base}: {deployment.pids()}")
        locust_env = {
            **os.environ,
            "LOCUST_PACE": str(args.pace),
            "LOCUST_POLL_SECONDS": str(args.poll_seconds),
        }
        locust, prefix = run_locust(deployment.base, users, args.seconds, args.processes, workdir, locust_env)
        time.sleep(RAMP)  # ramp-up: locust resets its statistics once every user runs
        log(f"locust: {users} users at {args.pace:g} req/s each, {args.seconds} s measured")
        sampler = Sampler(
            {**deployment.pids(), "redis": redis.proc.pid, "mock": mock.proc.pid, "locust": locust.pid}
        )
        with sampler:
            locust.wait(timeout=args.seconds + 120)
        stats = read_stats(prefix)
        history = timeline(prefix, args.seconds)
        queue = _queue_stats(deployment.base)
        mock_stats = mock.stats()
    finally:
        if locust is not None:
            stop_locust(locust)
        deployment.stop()
        mock.stop()
        redis.stop()
    return {
        "users": users,
        "stats": stats,
        "timeline": history,
        "cores": sampler.cores(),
        "loops": sampler.main_thread(),
        "rss": {n: (max(v) if v else 0, v[-1] if v else 0) for n, v in sampler.rss.items()},
        "load_start": load_start,
        "load_end": sampler.load[-1] if sampler.load else os.getloadavg(),
        "load_max1": max((x[0] for x in sampler.load), default=float("nan")),
        "queue": queue,
        "mock": mock_stats,
    }


def _queue_stats(base: str) -> dict:
    import httpx

    with contextlib.suppress(httpx.HTTPError, ValueError):
        return httpx.get(f"{base}/api/queue/stats", timeout=10).json()
    return {}


def _ms(value: str) -> str:
    try:
        return f"{float(value):,.0f}"
    except ValueError:
        return value or "–"


def summarise(res: dict, seconds: int) -> dict:
    rows = [r for r in res["stats"] if r["Name"] != "Aggregated"]
    http = [r for r in rows if r["Type"] not in NOT_HTTP]
    requests = sum(int(r["Request Count"]) for r in http)
    failures = sum(int(r["Failure Count"]) for r in http)
    rps = sum(float(r["Requests/s"]) for r in http)
    return {"http": http, "sse": [r for r in rows if r["Type"] in NOT_HTTP], "requests": requests,
            "failures": failures, "rps": rps}  # fmt: skip


def markdown(res: dict, args: argparse.Namespace, info: dict) -> str:
    s = summarise(res, args.seconds)
    machine = f"{info.get('cpu', '?')}, {info.get('cores', os.cpu_count())} cores"
    load = " / ".join(f"{x:.2f}" for x in res["load_end"])
    before = " / ".join(f"{x:.2f}" for x in res["load_start"])
    if args.api_processes:
        deploy = (
            f"one `ROLE=worker` and {args.api_processes} `ROLE=api` processes (`python main.py` each, "
            "own `INSTANCE_ID`, one listening socket shared through `LISTEN_FD`)"
        )
    else:
        deploy = "one `python main.py` (`ROLE=all`)"
    lines = [
        "## Mixed traffic at a constant rate: locust (issue 25 item 12)",
        "",
        f"`python -m benchmarks.mixed_load` on {machine}, {info.get('date', '')}, commit "
        f"{info.get('commit', '?')}. Load average (1/5/15 min) before the run {before}, at its end "
        f"{load}, highest 1-minute value during it {res['load_max1']:.2f}: the 2 cores are shared with "
        f"other engineers' work. Service: {deploy}, "
        "an external `redis-server`; the models are the mock LLM and embedding server configured "
        f"through `LLM_BASE_URL`/`EMBEDDING_BASE_URL` like a real provider ({args.llm_latency:g} s per "
        f"chat call, {args.embedding_latency:g} s per embedding call; `LLM_MAX_ASYNC` and "
        f"`MAX_CONCURRENT_QUERIES` {args.llm_max_async}), so their cost is off the service. Locust "
        f"(benchmarks/locustfile.py) in {args.processes} worker processes, {res['users']} users each "
        f"paced at {args.pace:g} request/s (`constant_throughput`), target {args.rate:,} req/s, "
        f"{args.seconds} s measured after a 10 s ramp. **Load generator, service, Redis and mock share "
        "the 2 cores.**",
        "",
        f"Achieved: **{s['rps']:,.0f} HTTP req/s** ({s['requests']:,} requests, {s['failures']:,} failed).",
        "",
        "| route | requests | req/s | failures | p50 ms | p95 ms | p99 ms | max ms |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(s["http"], key=lambda r: -int(r["Request Count"])):
        lines.append(
            f"| `{r['Type']} {r['Name']}` | {int(r['Request Count']):,} | {float(r['Requests/s']):,.1f} | "
            f"{int(r['Failure Count']):,} | {_ms(r['50%'])} | {_ms(r['95%'])} | {_ms(r['99%'])} | "
            f"{_ms(r['Max Response Time'])} |"
        )
    if s["sse"]:
        lines += [
            "",
            "SSE follower, besides its requests (not counted above):",
            "",
            "| measurement | count | failures | p50 ms | p95 ms | p99 ms |",
            "|---|---|---|---|---|---|",
        ]
        for r in s["sse"]:
            lines.append(
                f"| {r['Name']} | {int(r['Request Count']):,} | {int(r['Failure Count']):,} | "
                f"{_ms(r['50%'])} | {_ms(r['95%'])} | {_ms(r['99%'])} |"
            )
    if res.get("timeline"):
        lines += [
            "",
            f"Over time (locust's rolling rate; the poll `GET {POLL_ROUTE}`'s rolling p50/p99, the "
            "highest in each window):",
            "",
            "| seconds | HTTP req/s | poll p50 ms | poll p99 ms |",
            "|---|---|---|---|",
        ]
        for w in res["timeline"]:
            lines.append(f"| {w['from']}–{w['to']} | {w['rps']:,.0f} | {w['p50']:,.0f} | {w['p99']:,.0f} |")
    cores = res["cores"]
    rss = res["rss"]
    service = [n for n in cores if n not in ("redis", "mock", "locust")]
    lines += [
        "",
        "CPU (cores used on average over the measured span, children included), the main thread's "
        "share of the span on a CPU and waiting for one while runnable (/proc/PID/schedstat: for the "
        "service, its event loop), RSS (peak / at the end; locust: master and workers):",
        "",
        "| process | cores | main thread on CPU | main thread waiting for a CPU | RSS MiB |",
        "|---|---|---|---|---|",
    ]
    loops = res.get("loops", {})
    for name in [*service, "redis", "mock", "locust"]:
        peak, last = rss.get(name, (0, 0))
        ran, waited = (f"{x:.0%}" for x in loops[name]) if name in loops and name != "locust" else "––"
        lines.append(
            f"| {name} | {cores.get(name, 0):.2f} | {ran} | {waited} | "
            f"{peak / 2**20:,.0f} / {last / 2**20:,.0f} |"
        )
    q = res.get("queue") or {}
    mock_calls = (res.get("mock") or {}).get("calls", {})
    lines += [
        "",
        f"Queue at the end: {q.get('counts', q)}. Mock calls: {mock_calls}.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.mixed_load")
    ap.add_argument("--rate", type=int, default=1000, help="target requests per second")
    ap.add_argument("--seconds", type=int, default=300, help="measured seconds (after a 10 s ramp)")
    ap.add_argument("--quick", action="store_true", help="60 measured seconds")
    ap.add_argument("--pace", type=float, default=1.0, help="requests per second per locust user")
    ap.add_argument("--processes", type=int, default=2, help="locust worker processes")
    ap.add_argument(
        "--api-processes", type=int, default=2, help="ROLE=api processes (+1 worker); 0: ROLE=all"
    )
    ap.add_argument("--llm-latency", type=float, default=1.0, help="mock seconds per chat call")
    ap.add_argument("--embedding-latency", type=float, default=0.05, help="mock seconds per embedding call")
    ap.add_argument("--llm-max-async", type=int, default=64)
    ap.add_argument("--poll-seconds", type=float, default=600.0, help="LOCUST_POLL_SECONDS")
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    ap.add_argument("--keep", action="store_true", help="keep the run directory (logs, CSVs)")
    args = ap.parse_args(argv)
    if args.quick:
        args.seconds = 60
    workdir = Path(tempfile.mkdtemp(prefix="bench-mixed-"))
    try:
        res = measure(args, workdir)
        s = summarise(res, args.seconds)
        log(f"mixed load: {s['rps']:.0f} HTTP req/s, {s['failures']} failures; cores {res['cores']}")
        block = markdown(res, args, machine_info())
        print(block)
        splice_block(Path(args.out), f"{BEGIN}\n{block}\n{END}", BEGIN, END)
    finally:
        if args.keep:
            log(f"run directory kept: {workdir}")
        else:
            import shutil

            shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
