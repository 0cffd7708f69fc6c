"""Soak benchmark (issue 16): steady mixed load for N minutes, sampled every 30 s.

Load (one asyncio process, beside the server on the same cores): 2 uploaders each sending one 5 KB
document per second, 5 pollers each polling a recent task 10 times per second, one context-only
query per second. Every sample window records upload-ack p50/p99, status-poll p99, query p50, the
service's own event-loop lag p99 (from /metrics), RSS, backlog and documents in the knowledge base,
so the curves can be drawn against the size of the knowledge base.

``python -m benchmarks --only soak [--quick]`` runs it on this service and on LightRAG Server's
default (file) storages; ``python -m benchmarks.soak --url ...`` drives an already running server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import sys
import time

import httpx
import psutil

from benchmarks.common import pct
from benchmarks.loadgen import doc_text
from benchmarks.metrics_scrape import ADMIN_TOKEN

QUERIES = (
    "What does the Northwind Institute report say about the storage grid?",
    "Who is Maria Costa and what prototype did she build?",
    "Which surveys cover the Atlantic hydrogen turbine?",
    "What links Lisbon and Porto in these reports?",
    "What did Daniel Weber find about solar and wind?",
)


class Soak:
    def __init__(self, args: argparse.Namespace):
        self.a = args
        self.ours = args.system == "ours"
        self.ids: list[str] = []
        self.win: dict[str, list[float]] = {"ack": [], "poll": [], "query": []}
        self.errors: dict[str, int] = {}
        self.totals = {"uploads": 0, "polls": 0, "queries": 0}
        self.samples: list[dict] = []
        self.proc = psutil.Process(args.pid) if args.pid else None
        self.lag_prev: dict | None = None
        self.stop = asyncio.Event()

    def _err(self, what: str) -> None:
        self.errors[what] = self.errors.get(what, 0) + 1

    async def _paced(self, rate: float, fn) -> None:
        """Call ``fn`` ``rate`` times per second on a fixed schedule (no catch-up bursts)."""
        interval = 1.0 / rate
        t0 = time.perf_counter() + random.random() * interval
        k = 0
        while not self.stop.is_set():
            delay = t0 + k * interval - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.stop.wait(), delay)
                if self.stop.is_set():
                    return
            elif delay < -interval:  # fell behind: re-anchor, as a real client would just go on
                t0 = time.perf_counter() - k * interval
            k += 1
            await fn()

    async def uploader(self, client: httpx.AsyncClient, n: int) -> None:
        seq = iter(range(10**9))
        url = f"{self.a.url}/insert" if self.ours else f"{self.a.url}/documents/upload"

        async def one() -> None:
            i = next(seq)
            data = doc_text(f"soak{n}-{i}", self.a.size)
            t = time.perf_counter()
            try:
                r = await client.post(url, files={"file": (f"soak{n}-{i}.txt", data, "text/plain")})
                if r.status_code >= 300:
                    self._err(f"upload {r.status_code}")
                    return
                body = r.json()
                tid = body.get("task_id") or body.get("track_id")
                if tid:
                    self.ids.append(tid)
            except httpx.HTTPError as exc:
                self._err(f"upload {type(exc).__name__}")
                return
            self.win["ack"].append(time.perf_counter() - t)
            self.totals["uploads"] += 1

        await self._paced(self.a.upload_rate, one)

    async def poller(self, client: httpx.AsyncClient) -> None:
        async def one() -> None:
            if not self.ids:
                return
            tid = random.choice(self.ids[-200:])
            url = f"{self.a.url}/task/{tid}" if self.ours else f"{self.a.url}/documents/track_status/{tid}"
            t = time.perf_counter()
            try:
                r = await client.get(url)
                if r.status_code >= 300:
                    self._err(f"poll {r.status_code}")
                    return
            except httpx.HTTPError as exc:
                self._err(f"poll {type(exc).__name__}")
                return
            self.win["poll"].append(time.perf_counter() - t)
            self.totals["polls"] += 1

        await self._paced(self.a.poll_rate, one)

    async def querier(self, client: httpx.AsyncClient) -> None:
        n = iter(range(10**9))

        async def one() -> None:
            body = {"query": QUERIES[next(n) % len(QUERIES)], "mode": "hybrid", "only_need_context": True}
            t = time.perf_counter()
            try:
                r = await client.post(f"{self.a.url}/query", json=body)
                if r.status_code >= 300:
                    self._err(f"query {r.status_code}")
                    return
            except httpx.HTTPError as exc:
                self._err(f"query {type(exc).__name__}")
                return
            self.win["query"].append(time.perf_counter() - t)
            self.totals["queries"] += 1

        await self._paced(self.a.query_rate, one)

    async def _state(self, client: httpx.AsyncClient) -> dict:
        """Documents in the knowledge base, backlog, loop lag (ours: from its own histogram)."""
        out: dict = {}
        try:
            if self.ours:
                c = (await client.get(f"{self.a.url}/api/queue/stats")).json()
                out["docs"] = c["counts"].get("completed", 0)
                out["backlog"] = c["pending"] + c["running"]
                out["failed"] = c["counts"].get("failed", 0)
                out["lag_p99_ms"] = await self._lag(client)
            else:
                r = await client.get(f"{self.a.url}/documents/status_counts")
                sc = r.json().get("status_counts", {})
                out["docs"] = int(sc.get("processed", 0))
                out["backlog"] = int(sc.get("pending", 0)) + int(sc.get("processing", 0))
                out["failed"] = int(sc.get("failed", 0))
                out["lag_p99_ms"] = None
        except (httpx.HTTPError, KeyError, ValueError) as exc:
            self._err(f"state {type(exc).__name__}")
        return out

    async def _lag(self, client: httpx.AsyncClient) -> float | None:
        from prometheus_client.parser import text_string_to_metric_families

        from benchmarks.metrics_scrape import loop_lag_p99_ms

        r = await client.get(f"{self.a.url}/metrics", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"})
        snap: dict = {}
        for fam in text_string_to_metric_families(r.text):
            for s in fam.samples:
                if s.name.startswith("ragsvc_event_loop_lag_seconds"):
                    snap[(s.name, tuple(sorted(s.labels.items())))] = s.value
        prev, self.lag_prev = self.lag_prev, snap
        if prev is None:
            return None
        p99, n = loop_lag_p99_ms(prev, snap)
        return p99 if n else None

    async def sampler(self, client: httpx.AsyncClient, t0: float) -> None:
        await self._state(client)  # primes the loop-lag baseline
        while not self.stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.stop.wait(), self.a.sample)
            win, self.win = self.win, {"ack": [], "poll": [], "query": []}
            ms = {k: [x * 1000 for x in v] for k, v in win.items()}
            row = {
                "t_s": round(time.perf_counter() - t0, 1),
                "ack_p50_ms": pct(ms["ack"], 50), "ack_p99_ms": pct(ms["ack"], 99),
                "poll_p99_ms": pct(ms["poll"], 99), "query_p50_ms": pct(ms["query"], 50),
                "uploads": len(ms["ack"]), "polls": len(ms["poll"]), "queries": len(ms["query"]),
                "rss_mb": (self.proc.memory_info().rss / 2**20) if self.proc else None,
                **(await self._state(client)),
                "errors": dict(self.errors),
            }  # fmt: skip
            self.samples.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    async def run(self) -> dict:
        limits = httpx.Limits(max_connections=20, max_keepalive_connections=20)
        async with httpx.AsyncClient(timeout=60, limits=limits) as client:
            t0 = time.perf_counter()
            tasks = [asyncio.create_task(self.uploader(client, n)) for n in range(self.a.uploaders)]
            tasks += [asyncio.create_task(self.poller(client)) for _ in range(self.a.pollers)]
            tasks.append(asyncio.create_task(self.querier(client)))
            sampler = asyncio.create_task(self.sampler(client, t0))
            await asyncio.sleep(self.a.minutes * 60)
            self.stop.set()
            await asyncio.gather(*tasks, sampler, return_exceptions=True)
        return {"system": self.a.system, "minutes": self.a.minutes, "samples": self.samples,
                "totals": self.totals, "errors": self.errors}  # fmt: skip


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.soak")
    p.add_argument("--url", required=True, help="base URL of the server under test")
    p.add_argument("--system", choices=["ours", "lrs"], default="ours")
    p.add_argument("--pid", type=int, default=0, help="server pid, for RSS")
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--sample", type=float, default=30.0, help="seconds per sample window")
    p.add_argument("--uploaders", type=int, default=2)
    p.add_argument("--upload-rate", type=float, default=1.0, help="uploads per second per uploader")
    p.add_argument("--size", type=int, default=5000)
    p.add_argument("--pollers", type=int, default=5)
    p.add_argument("--poll-rate", type=float, default=10.0)
    p.add_argument("--query-rate", type=float, default=1.0)
    return p


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    json.dump(asyncio.run(Soak(args).run()), sys.stdout)
    sys.stdout.flush()


# ------------------------------------------------------------------------------ harness scenario
def scenario_soak(ctx) -> dict:
    """Soak on this service's embedded defaults and on LightRAG Server's file storages (mock 0.05 s)."""
    import subprocess

    from benchmarks.common import PY, ROOT, stop_process
    from benchmarks.ingest_scenarios import _ours

    minutes = 3.0 if ctx.p.quick else 30.0
    sample = 30.0
    out: dict = {"minutes": minutes, "sample_s": sample, "runs": {}}
    for system in ("ours", "lrs"):
        if system == "lrs" and ctx.lrs_exe is None:
            continue
        ctx.log(f"  [soak] {system}: {minutes:.0f} min of mixed load")
        mock = ctx.mock(latency=0.05)
        try:
            srv = _ours(ctx, mock, "soak", 8, 8) if system == "ours" else ctx.lrs(mock, "soak-lrs", 8, 4)
            try:
                cmd = [PY, "-m", "benchmarks.soak", "--url", srv.base, "--system", system, "--pid",
                       str(srv.proc.pid), "--minutes", str(minutes), "--sample", str(sample)]  # fmt: skip
                with open(srv.workdir / "soak-samples.log", "w") as err:
                    res = subprocess.run(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=err, text=True,
                                         timeout=minutes * 60 + 300)  # fmt: skip
                if res.returncode != 0:
                    tail = (srv.workdir / "soak-samples.log").read_text()[-1500:]
                    raise RuntimeError(f"soak driver failed: {tail}")
                run = json.loads(res.stdout)
                run["data_dir_mb"] = _du_mb(srv.workdir)
                out["runs"][system] = run
            finally:
                if system == "ours":
                    srv.stop()
                else:
                    stop_process(srv.proc, timeout=10)
        finally:
            mock.stop()
    return out


def _du_mb(path) -> float:
    total = 0
    for p in path.rglob("*"):
        with contextlib.suppress(OSError):
            if p.is_file():
                total += p.stat().st_size
    return total / 2**20


SCENARIOS = {"soak": scenario_soak}


if __name__ == "__main__":
    main()
