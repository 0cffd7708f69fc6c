"""The seven benchmark scenarios. Each returns a plain dict that ``report.py`` turns into text and plots.

Every scenario starts its own processes (service / LightRAG Server / mock LLM) on loopback and
stops them by pid at the end; Redis is one private redis-server for the whole run, flushed
between scenarios.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import httpx
import psutil

from benchmarks.common import (
    PY,
    ROOT,
    Mock,
    RedisServer,
    RssSampler,
    Service,
    chat_calls,
    loadgen_background,
    median,
    run_loadgen,
    summary_ms,
)
from benchmarks.loadgen import doc_text
from benchmarks.lrs import LightRAGServer


@dataclass
class Params:
    quick: bool
    ack_n: int  # uploads per ack-latency series
    big_n: int  # 1 MB uploads (50 concurrent clients)
    preload: int  # docs queued before the "under load" ack series
    poll_levels: tuple[int, ...]
    poll_seconds: float
    docs: int  # scenario 3 documents
    repeats: int  # scenario 3 / 7 repeats
    throughput_configs: tuple[tuple[str, int, int], ...]  # (system, max_async, parallel_insert)
    engine_n: int
    pdf_pages: int
    stream_bytes: int
    many_tasks: int
    restart_tasks: int = 100

    @classmethod
    def make(cls, quick: bool) -> Params:
        if quick:
            return cls(
                quick=True, ack_n=30, big_n=30, preload=12, poll_levels=(10, 100, 200), poll_seconds=1.0,
                docs=8, repeats=1,
                throughput_configs=(("ours", 4, 4), ("lrs", 4, 2), ("sync", 4, 4)),
                engine_n=2000, pdf_pages=50, stream_bytes=100 * 2**20, many_tasks=500,
            )  # fmt: skip
        return cls(
            quick=False, ack_n=100, big_n=100, preload=80, poll_levels=(10, 50, 100, 200), poll_seconds=6.0,
            docs=20, repeats=3,
            throughput_configs=(
                ("ours", 4, 4), ("ours", 16, 16), ("ours", 4, 2), ("lrs", 4, 2), ("lrs", 16, 8),
                ("lrs", 4, 4), ("sync", 4, 4),
            ),
            engine_n=10000, pdf_pages=50, stream_bytes=2**30, many_tasks=10000,
        )  # fmt: skip


class Ctx:
    def __init__(self, params: Params, workdir: Path, redis: RedisServer, lrs_exe: Path | None, log):
        self.p = params
        self.workdir = workdir
        self.redis = redis
        self.lrs_exe = lrs_exe
        self.log = log
        self._n = 0

    def dir(self, name: str) -> Path:
        self._n += 1
        d = self.workdir / f"{self._n:02d}-{name}"
        d.mkdir(parents=True, exist_ok=True)
        return d

    def mock(self, latency: float = 0.0) -> Mock:
        m = Mock(self.workdir, latency=latency).start()
        m.config(embedding_latency=0.0)
        return m

    def service(self, mock: Mock, name: str, **env: object) -> Service:
        self.redis.flush()
        return Service(
            self.dir(name), self.redis.url, mock, {k.upper(): str(v) for k, v in env.items()}
        ).start()

    def lrs(self, mock: Mock, name: str, max_async: int = 4, parallel: int = 2) -> LightRAGServer:
        assert self.lrs_exe is not None
        return LightRAGServer(self.lrs_exe, self.dir(name), mock, max_async, parallel).start()


# ------------------------------------------------------------------------------ helpers
def queue_counts(base: str, client: httpx.Client | None = None) -> dict[str, int]:
    get = client.get if client is not None else httpx.get
    return get(f"{base}/api/queue/stats", timeout=30).json()["counts"]


def wait_ours_done(base: str, n: int, timeout: float) -> float:
    t0 = time.monotonic()
    with httpx.Client() as client:  # one client for every poll: a new one costs ~16 ms of CPU
        while time.monotonic() - t0 < timeout:
            c = queue_counts(base, client)
            if c.get("completed", 0) + c.get("failed", 0) >= n:
                return time.monotonic() - t0
            time.sleep(0.05)
        raise TimeoutError(f"service did not finish {n} tasks in {timeout}s: {queue_counts(base, client)}")


def upload_series(url: str, n: int, concurrency: int, size: int, prefix: str, **kw) -> dict:
    args = ["upload", "--url", url, "--n", str(n), "--concurrency", str(concurrency), "--size", str(size),
            "--prefix", prefix]  # fmt: skip
    if kw.get("barrier"):
        args += ["--barrier", "--warm-url", kw["warm_url"]]
    if kw.get("keep_bodies"):
        args += ["--keep-bodies"]
    return run_loadgen(args, timeout=600)


def _series(res: dict) -> dict:
    out = summary_ms(res["latencies"])
    out["statuses"] = res["statuses"]
    return out


# ------------------------------------------------------------------------------ 1 + 2
def scenario_ack_and_poll(ctx: Ctx) -> dict:
    """Upload -> ack latency (idle, under ingestion load, 1 MB x 50 clients) and status polling."""
    p = ctx.p
    out: dict = {"ours": {}, "lrs": {}, "poll": {}, "poll_lrs": {}}
    for system in ("ours", "lrs"):
        if system == "lrs" and ctx.lrs_exe is None:
            continue
        ctx.log(f"  [1] {system}: idle and 1 MB x 50 clients (ingestion parked)")
        mock = ctx.mock()
        mock.park()
        try:
            if system == "ours":
                srv = ctx.service(mock, "ack-idle", max_concurrent_tasks=8, llm_max_async=16)
                url = f"{srv.base}/insert"
            else:
                srv = ctx.lrs(mock, "lrs-ack-idle", 16, 8)
                url = f"{srv.base}/documents/upload"
            try:
                upload_series(url, 3, 1, 5000, f"{system}-warm")  # first requests import lazily: not counted
                res = upload_series(url, p.ack_n, 1, 5000, f"{system}-idle", keep_bodies=True)
                out[system]["idle"] = _series(res)
                ids = [b.get("task_id") or b.get("track_id") for b in res["bodies"]]
                res = upload_series(url, p.big_n, 50, 2**20, f"{system}-big", barrier=True,
                                    warm_url=f"{srv.base}/health")  # fmt: skip
                out[system]["big_1mb_50c"] = _series(res)
                out[system]["big_1mb_50c"]["wall_s"] = res["wall"]
                # 2. status polling on the same instance (records exist, ingestion parked)
                urls_file = srv.workdir / "poll-urls.txt"
                if system == "ours":
                    urls_file.write_text("\n".join(f"{srv.base}/task/{t}" for t in ids))
                else:
                    urls_file.write_text("\n".join(f"{srv.base}/documents/track_status/{t}" for t in ids))
                levels = p.poll_levels if system == "ours" else p.poll_levels[: 1 if p.quick else 2]
                for c in levels:
                    ctx.log(f"  [2] {system}: polling at concurrency {c}")
                    server_proc = psutil.Process(srv.proc.pid)
                    server_cpu0 = sum(server_proc.cpu_times()[:2])
                    started = time.monotonic()
                    r = run_loadgen(["poll", "--urls-file", str(urls_file), "--concurrency", str(c),
                                     "--duration", str(p.poll_seconds)], timeout=120)  # fmt: skip
                    key = "poll" if system == "ours" else "poll_lrs"
                    server_cpu = sum(server_proc.cpu_times()[:2]) - server_cpu0
                    elapsed = time.monotonic() - started
                    out[key][c] = {
                        "rps": r["rps"],
                        "errors": r["errors"],
                        "server_cpu_s": server_cpu,
                        "client_cpu_s": r["client_cpu_s"],
                        "wall_s": r["wall"],
                        "elapsed_s": elapsed,
                        **summary_ms(r["latencies"]),
                    }
            finally:
                srv.stop(hard=True) if system == "ours" else _stop_quick(srv)
        finally:
            mock.stop()

        ctx.log(f"  [1] {system}: uploads while ingestion runs at full concurrency")
        mock = ctx.mock(latency=0.05)
        try:
            if system == "ours":
                srv = ctx.service(mock, "ack-load", max_concurrent_tasks=8, llm_max_async=16)
                url = f"{srv.base}/insert"
            else:
                srv = ctx.lrs(mock, "lrs-ack-load", 16, 8)
                url = f"{srv.base}/documents/upload"
            try:
                upload_series(url, 3, 1, 5000, f"{system}-warm2")
                upload_series(url, p.preload, 8, 5000, f"{system}-pre")
                before = mock.stats()
                res = upload_series(url, p.ack_n, 1, 5000, f"{system}-load")
                after = mock.stats()
                out[system]["loaded"] = _series(res)
                out[system]["loaded"]["llm_calls_during"] = chat_calls(after) - chat_calls(before)
                out[system]["loaded"]["max_in_flight"] = after.get("max_in_flight")
            finally:
                srv.stop() if system == "ours" else _stop_quick(srv)
        finally:
            mock.stop()
    return out


def _stop_quick(srv) -> None:
    from benchmarks.common import stop_process

    stop_process(srv.proc, timeout=5)


# ------------------------------------------------------------------------------ 3
def scenario_throughput(ctx: Ctx) -> dict:
    p = ctx.p
    latency = 0.5
    docs = [doc_text(f"tp{i}", 5000) for i in range(p.docs)]
    runs: list[dict] = []
    for rep in range(p.repeats):
        for system, max_async, parallel in p.throughput_configs:
            if system == "lrs" and ctx.lrs_exe is None:
                continue
            label = f"{system} {max_async}:{parallel}"
            ctx.log(f"  [3] repeat {rep + 1}/{p.repeats}: {label}, {p.docs} docs, L={latency}s")
            mock = ctx.mock(latency=latency)
            try:
                if system == "lrs":
                    srv = ctx.lrs(mock, f"tp-lrs-{max_async}-{parallel}", max_async, parallel)
                    url = f"{srv.base}/documents/upload"
                else:
                    srv = ctx.service(
                        mock,
                        f"tp-{system}-{max_async}",
                        llm_max_async=max_async,
                        # P documents indexed in parallel as on LightRAG Server (MAX_PARALLEL_INSERT):
                        # each task indexes its own document.
                        max_concurrent_tasks=parallel,
                    )
                    url = f"{srv.base}/insert"
                try:
                    mock.reset()
                    mock.config(latency=latency, embedding_latency=0.0)
                    wall = _ingest(system, srv, url, docs)
                    stats = mock.stats()
                finally:
                    srv.stop() if system != "lrs" else _stop_quick(srv)
            finally:
                mock.stop()
            calls = chat_calls(stats)
            kinds = stats.get("kinds", {})
            per_doc_chain = (kinds.get("extract", 0) + kinds.get("glean", 0)) / max(1, p.docs)
            eff = 1 if system == "sync" else max_async
            ideal = max(calls * latency / eff, per_doc_chain * latency)
            runs.append({
                "system": system, "label": label, "max_async": max_async, "parallel": parallel,
                "wall_s": wall, "calls": calls, "kinds": kinds, "ideal_s": ideal,
                "ratio": ideal / wall, "docs_per_min": p.docs / wall * 60,
                "max_in_flight": stats.get("max_in_flight"),
            })  # fmt: skip
    # medians per config
    table = []
    for label in dict.fromkeys(r["label"] for r in runs):
        rs = [r for r in runs if r["label"] == label]
        table.append({
            "label": label, "system": rs[0]["system"], "max_async": rs[0]["max_async"],
            "parallel": rs[0]["parallel"], "repeats": len(rs),
            "wall_s": median([r["wall_s"] for r in rs]), "calls": median([r["calls"] for r in rs]),
            "ideal_s": median([r["ideal_s"] for r in rs]), "ratio": median([r["ratio"] for r in rs]),
            "docs_per_min": median([r["docs_per_min"] for r in rs]),
            "max_in_flight": max(r["max_in_flight"] or 0 for r in rs),
            "walls": [round(r["wall_s"], 2) for r in rs],
        })  # fmt: skip
    return {"latency": latency, "docs": p.docs, "runs": runs, "table": table}


def _ingest(system: str, srv, url: str, docs: list[bytes]) -> float:
    """Seconds from the first upload until every document is indexed."""
    n = len(docs)
    # One client for every upload thread, made before the clock starts: a new httpx.Client costs
    # ~16 ms of CPU (its SSL context), and 40 of them compete with the server for the same 2 cores.
    limits = httpx.Limits(max_connections=max(n, 10), max_keepalive_connections=max(n, 10))
    with httpx.Client(timeout=120, limits=limits) as client:
        t0 = time.monotonic()
        if system == "sync":  # the seed's "sync mode": one document at a time, wait for each
            for i, data in enumerate(docs):
                r = client.post(url, files={"file": (f"tp{i}.txt", data, "text/plain")})
                r.raise_for_status()
                tid = r.json()["task_id"]
                while client.get(f"{srv.base}/task/{tid}").json()["status"] not in ("completed", "failed"):
                    time.sleep(0.02)
            return time.monotonic() - t0

        errors: list[BaseException] = []

        def send(i: int) -> None:
            try:
                client.post(url, files={"file": (f"tp{i}.txt", docs[i], "text/plain")}).raise_for_status()
            except BaseException as exc:  # reported below
                errors.append(exc)

        threads = [threading.Thread(target=send, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        if system == "lrs":
            srv.wait_processed(n, timeout=600)
        else:
            wait_ours_done(srv.base, n, timeout=600)
        return time.monotonic() - t0


# ------------------------------------------------------------------------------ 4
def scenario_engine(ctx: Ctx) -> dict:
    p = ctx.p
    results: dict[str, list[dict]] = {"ours": [], "saq": []}
    for rep in range(max(1, ctx.p.repeats)):
        for engine in ("ours", "saq"):
            ctx.log(f"  [4] repeat {rep + 1}: {engine}, {p.engine_n} no-op tasks, concurrency 32")
            ctx.redis.flush()
            out = subprocess.run(
                [PY, "-m", "benchmarks.engine", engine, "--url", ctx.redis.url, "--n", str(p.engine_n),
                 "--concurrency", "32"],
                cwd=ROOT, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            if out.returncode != 0:
                raise RuntimeError(out.stderr[-2000:])
            results[engine].append(json.loads(out.stdout.strip().splitlines()[-1]))
    summary = {
        e: {
            "enqueue_per_s": median([r["enqueue_per_s"] for r in rs]),
            "processed_per_s": median([r["processed_per_s"] for r in rs]),
            "repeats": len(rs),
        }
        for e, rs in results.items()
    }
    return {"n": p.engine_n, "concurrency": 32, "summary": summary, "runs": results}


# ------------------------------------------------------------------------------ 5
def make_pdf(pages: int, salt: int = 0) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=10)
    for page in range(pages):
        pdf.add_page()
        text = doc_text(f"pdf{salt}-{page}", 2600).decode()
        pdf.multi_cell(0, 5, text)
    return bytes(pdf.output())


def _lag_phase(srv: Service, pdf: bytes, with_uploads: bool, probe: list[str]) -> dict:
    out: dict = {}
    with loadgen_background([*probe, "--duration", "300"], srv.workdir) as bg:
        time.sleep(0.5)
        t0 = time.monotonic()
        with httpx.Client(timeout=300) as c:
            r = c.post(f"{srv.base}/insert", files={"file": ("big.pdf", pdf, "application/pdf")})
            r.raise_for_status()
            pdf_task = r.json()["task_id"]
        small = threading.Thread(
            target=upload_series, args=(f"{srv.base}/insert", 20, 20, 5000, f"lag-{time.monotonic_ns()}")
        )
        if with_uploads:
            small.start()
        status = {}
        with httpx.Client(timeout=60) as c:
            while time.monotonic() - t0 < 240:
                status = c.get(f"{srv.base}/task/{pdf_task}").json()
                if status["status"] in ("completed", "failed"):
                    break
                time.sleep(0.2)
        if with_uploads:
            small.join()
        out["pdf_task_s"] = time.monotonic() - t0
        out["pdf_status"] = status.get("status")
        out["pdf_chunks"] = (status.get("result") or {}).get("chunks_count")
        out["pdf_error"] = status.get("error")
        time.sleep(0.3)
    res = bg.result  # type: ignore[attr-defined]
    out["lag"] = summary_ms(res.get("latencies", []))
    out["series"] = list(zip(res.get("times", []), res.get("latencies", []), strict=False))
    out["probe_errors"] = res.get("errors")
    return out


def scenario_lag(ctx: Ctx) -> dict:
    p = ctx.p
    pdf = make_pdf(p.pdf_pages)
    import io

    from pypdf import PdfReader

    n_pages = len(PdfReader(io.BytesIO(pdf)).pages)
    mock = ctx.mock(latency=0.05)
    out: dict = {"pages": n_pages, "pdf_bytes": len(pdf)}
    try:
        srv = ctx.service(mock, "lag", max_concurrent_tasks=4, llm_max_async=8)
        try:
            probe = ["probe", "--url", f"{srv.base}/health", "--interval", "0.01"]
            ctx.log("  [5] idle baseline probe")
            r = run_loadgen([*probe, "--duration", "4"], timeout=60)
            out["idle"] = summary_ms(r["latencies"])
            out["phases"] = {}
            phases = (
                ("first PDF + 20 uploads", 0, True),
                ("second PDF + 20 uploads", 1, True),
                ("third PDF alone", 2, False),
            )
            for name, k, with_uploads in phases[::2] if p.quick else phases:
                ctx.log(f"  [5] {name} ({n_pages} pages), probing /health every 10 ms")
                out["phases"][name] = _lag_phase(srv, make_pdf(p.pdf_pages, salt=k), with_uploads, probe)
        finally:
            srv.stop()
    finally:
        mock.stop()
    return out


# ------------------------------------------------------------------------------ 6
def _stream_upload(url: str, total: int, chunk: int = 2**20) -> tuple[int, float, str]:
    boundary = "benchboundary7d1f"
    head = (f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="huge.txt"\r\n'
            "Content-Type: text/plain\r\n\r\n").encode()  # fmt: skip
    tail = f"\r\n--{boundary}--\r\n".encode()
    block = (b"Lisbon storage grid report by Maria Costa. " * (chunk // 43 + 1))[:chunk]

    def gen():
        yield head
        sent = 0
        while sent < total:
            piece = block[: min(chunk, total - sent)]
            sent += len(piece)
            yield piece
        yield tail

    t0 = time.monotonic()
    with httpx.Client(timeout=600) as c:
        r = c.post(url, content=gen(), headers={"content-type": f"multipart/form-data; boundary={boundary}"})
    return r.status_code, time.monotonic() - t0, r.text[:300]


def scenario_memory(ctx: Ctx) -> dict:
    p = ctx.p
    out: dict = {"stream_bytes": p.stream_bytes, "many_tasks": p.many_tasks}
    mock = ctx.mock()
    mock.park()
    try:
        # One task slot, occupied by a parked task: everything else stays pending (the runner is idle).
        srv = ctx.service(mock, "memory", max_concurrent_tasks=1, max_upload_bytes=p.stream_bytes + 2**20)
        try:
            r = httpx.post(f"{srv.base}/insert", files={"file": ("slot.txt", doc_text("slot", 3000))})
            r.raise_for_status()
            time.sleep(1.0)
            out["rss_start"] = srv.rss()
            ctx.log(f"  [6] streaming a {p.stream_bytes / 2**20:.0f} MiB upload")
            with RssSampler(srv.proc.pid, 0.05) as sampler:
                status, secs, text = _stream_upload(f"{srv.base}/insert", p.stream_bytes)
            out["stream_status"] = status
            out["stream_s"] = secs
            out["stream_mb_s"] = p.stream_bytes / 2**20 / secs
            out["stream_rss_peak"] = sampler.peak
            out["stream_rss_series"] = sampler.samples
            if status == 202:
                tid = json.loads(text)["task_id"] if text.startswith("{") else None
                if tid:
                    httpx.delete(f"{srv.base}/task/{tid}", timeout=30)
            else:
                out["stream_error"] = text
            time.sleep(0.5)
            out["rss_before_tasks"] = srv.rss()
            out["redis_before"] = ctx.redis.used_memory()
            ctx.log(f"  [6] creating {p.many_tasks} tasks via /insert/text (runner slot busy)")
            with RssSampler(srv.proc.pid, 0.2) as sampler:
                res = run_loadgen(["text", "--url", f"{srv.base}/insert/text", "--n", str(p.many_tasks),
                                   "--concurrency", "16", "--prefix", "many"], timeout=900)  # fmt: skip
            out["tasks_statuses"] = res["statuses"]
            out["tasks_per_s"] = p.many_tasks / res["wall"]
            out["tasks_ack"] = summary_ms(res["latencies"])
            time.sleep(0.5)
            out["rss_after_tasks"] = srv.rss()
            out["rss_peak_tasks"] = sampler.peak
            out["redis_after"] = ctx.redis.used_memory()
            out["queue_counts"] = queue_counts(srv.base)
            t0 = time.perf_counter()
            httpx.get(f"{srv.base}/tasks?status=pending&limit=100", timeout=30).raise_for_status()
            out["list_100_ms"] = (time.perf_counter() - t0) * 1000
        finally:
            srv.stop(hard=True)  # parked: a graceful stop would wait on the hour-long mock call
    finally:
        mock.stop()
    return out


# ------------------------------------------------------------------------------ 7
def scenario_restart(ctx: Ctx) -> dict:
    p = ctx.p
    runs = []
    for rep in range(p.repeats):
        mock = ctx.mock()
        mock.park()
        n = p.restart_tasks
        try:
            srv = ctx.service(mock, "restart", max_concurrent_tasks=n + 28, llm_max_async=n + 28)
            ctx.log(f"  [7] repeat {rep + 1}: {n} tasks running (parked), kill -9, restart")
            upload_series(f"{srv.base}/insert", n, 10, 2000, f"rs{rep}-")
            deadline = time.monotonic() + 60
            while queue_counts(srv.base).get("processing", 0) < n and time.monotonic() < deadline:
                time.sleep(0.1)
            before = queue_counts(srv.base)
            srv.stop(hard=True)
            t0 = time.monotonic()
            srv.start(port=srv.port)
            t_health = time.monotonic() - t0
            reclaimed = 0
            with httpx.Client(timeout=30) as c:
                while time.monotonic() - t0 < 120:
                    rows = c.get(f"{srv.base}/tasks", params={"limit": 500}).json()
                    items = rows.get("items") or rows.get("tasks") or []
                    reclaimed = sum(
                        1 for t in items if t["attempt"] >= 2 and t["status"] in ("processing", "completed")
                    )
                    if reclaimed >= n:
                        break
                    time.sleep(0.02)
            t_all = time.monotonic() - t0
            runs.append({"before": before, "health_s": t_health, "all_reclaimed_s": t_all,
                         "reclaimed": reclaimed})  # fmt: skip
            srv.stop(hard=True)
        finally:
            mock.stop()
    return {
        "n": p.restart_tasks,
        "runs": runs,
        "health_s": median([r["health_s"] for r in runs]),
        "all_reclaimed_s": median([r["all_reclaimed_s"] for r in runs]),
    }


SCENARIOS = {
    "ack": scenario_ack_and_poll,
    "throughput": scenario_throughput,
    "engine": scenario_engine,
    "lag": scenario_lag,
    "memory": scenario_memory,
    "restart": scenario_restart,
}

from benchmarks.scale import scenario_scale  # noqa: E402  (imports Ctx from here only for typing)

SCENARIOS["scale"] = scenario_scale
