"""Hot path (issue 12): GET /task/{id} under wrk at 10 and 50 connections, ingestion idle and while
20 documents ingest; the same for LightRAG Server's status endpoint; one py-spy profile of ours.

wrk (Debian package ``wrk``) is an outside binary: if it is missing the scenario is skipped with a note.
It runs with 2 threads on the same 2 cores as the server (as every load generator here does).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx

from benchmarks.common import stop_process
from benchmarks.ingest_scenarios import _ours, upload
from benchmarks.loadgen import doc_text
from benchmarks.scenarios import upload_series, wait_ours_done

_LUA = r"""
local paths = {}
for line in io.lines(os.getenv("WRK_PATHS")) do
  if #line > 0 then paths[#paths + 1] = line end
end
local i = math.random(#paths)
request = function()
  i = i % #paths + 1
  return wrk.format("GET", paths[i])
end
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRKJSON {"requests":%d,"duration_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d,' ..
    '"socket_errors":%d,"non2xx":%d}\n',
    summary.requests, summary.duration, latency:percentile(50), latency:percentile(90),
    latency:percentile(99), latency.max, e.connect + e.read + e.write + e.timeout, e.status))
end
"""


def run_wrk(
    base: str, paths: list[str], connections: int, duration: float, workdir: Path, headers: dict | None = None
) -> dict:
    """One wrk run over ``paths`` (round-robin from a random start per thread), sending ``headers``
    with each request; req/s and percentiles."""
    script = workdir / "wrk-paths.lua"
    script.write_text(_LUA)
    paths_file = workdir / f"wrk-paths-{time.monotonic_ns()}.txt"
    paths_file.write_text("\n".join(paths) + "\n")
    cmd = ["wrk", "-t2", f"-c{connections}", f"-d{max(1, round(duration))}s", "--timeout", "10s",
           "-s", str(script), base]  # fmt: skip
    for name, value in (headers or {}).items():
        cmd[1:1] = ["-H", f"{name}: {value}"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         env={"WRK_PATHS": str(paths_file), "PATH": "/usr/bin:/bin"})  # fmt: skip
    line = next((ln for ln in out.stdout.splitlines() if ln.startswith("WRKJSON ")), None)
    if line is None:
        raise RuntimeError(f"wrk gave no result: {out.stdout[-800:]} {out.stderr[-800:]}")
    r = json.loads(line[len("WRKJSON ") :])
    secs = r["duration_us"] / 1e6
    return {
        "connections": connections,
        "rps": r["requests"] / secs,
        "requests": r["requests"],
        "p50_ms": r["p50_us"] / 1000,
        "p90_ms": r["p90_us"] / 1000,
        "p99_ms": r["p99_us"] / 1000,
        "max_ms": r["max_us"] / 1000,
        "socket_errors": r["socket_errors"],
        "non2xx": r["non2xx"],
    }


def py_spy() -> str | None:
    exe = Path(sys.executable).parent / "py-spy"
    return str(exe) if exe.exists() else shutil.which("py-spy")


def profile(pid: int, base: str, paths: list[str], duration: float, workdir: Path) -> dict:
    """py-spy (raw/collapsed stacks, 200 Hz, non-blocking) while wrk runs at 50 connections."""
    exe = py_spy()
    if exe is None:
        return {"skipped": "py-spy not installed"}
    raw = workdir / "profile.raw.txt"
    spy = subprocess.Popen([exe, "record", "-p", str(pid), "-d", str(round(duration) + 1), "-r", "200",
                            "-f", "raw", "--nonblocking", "-o", str(raw)],
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)  # fmt: skip
    time.sleep(0.5)
    try:
        run_wrk(base, paths, 50, duration, workdir)
    finally:
        try:
            _, err = spy.communicate(timeout=duration + 60)
        except subprocess.TimeoutExpired:
            stop_process(spy)
            err = b""
    if not raw.exists():
        return {"skipped": f"py-spy wrote nothing: {err.decode(errors='replace')[-400:]}"}
    return summarize_profile(raw.read_text())


def _func(frame: str) -> str:
    """'handle (uvicorn/protocols/http/h11_impl.py:404)' -> 'handle (uvicorn/protocols/http/h11_impl.py)'."""
    name, _, loc = frame.partition(" (")
    path = loc.rstrip(")").rsplit(":", 1)[0]
    for marker in ("site-packages/", "lib/python3"):
        if marker in path:
            path = path.split(marker, 1)[1]
    return f"{name} ({path})" if path else name


def summarize_profile(text: str, top: int = 20) -> dict:
    """Self (leaf) and inclusive sample shares per function from py-spy's collapsed stacks."""
    self_c: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    idle = 0
    for line in text.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        n = int(count)
        frames = [_func(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        leaf = frames[-1]
        if leaf.startswith(("select (", "poll (", "epoll", "_run_once (")) and "selectors" in leaf:
            idle += n
        self_c[leaf] += n
        for fr in set(frames):
            incl[fr] += n

    def share(c: Counter) -> list[tuple[str, float]]:
        return [(k, round(100 * v / total, 1)) for k, v in c.most_common(top)] if total else []

    return {"samples": total, "idle_pct": round(100 * idle / total, 1) if total else None,
            "self": share(self_c), "inclusive": share(incl)}  # fmt: skip


def _busy(ctx, srv_base: str, upload_fn, prefix: str, n: int, check_done) -> threading.Thread:
    def go() -> None:
        for i in range(n):
            upload_fn(srv_base, f"{prefix}{i}.txt", doc_text(f"{prefix}{i}", 5000))

    t = threading.Thread(target=go)
    t.start()
    return t


def scenario_hotpath(ctx) -> dict:
    if shutil.which("wrk") is None:
        return {"skipped": "wrk not installed (Debian package `wrk`)"}
    quick = ctx.p.quick
    duration = 5.0 if quick else 15.0
    out: dict = {"duration_s": duration, "ours": {}, "lrs": {}}
    # ingestion latency chosen so that 20 documents (8 task slots, LLM_MAX_ASYNC 8, ~2 calls each)
    # keep ingesting for longer than one wrk run
    busy_latency = max(0.5, duration / 3)

    # ---------------------------------------------------------------- ours
    mock = ctx.mock(latency=0.0)
    try:
        srv = _ours(ctx, mock, "hotpath", 8, 8)
        try:
            res = upload_series(f"{srv.base}/insert", 50, 4, 3000, "hp-seed", keep_bodies=True)
            ids = [b["task_id"] for b in res["bodies"]]
            wait_ours_done(srv.base, len(ids), timeout=300)
            paths = [f"/task/{t}" for t in ids]
            run_wrk(srv.base, paths, 10, 1, srv.workdir)  # warm-up, not counted
            for c in (10, 50):
                ctx.log(f"  [hotpath] ours idle, {c} connections, {duration:.0f} s")
                out["ours"][f"idle_{c}"] = run_wrk(srv.base, paths, c, duration, srv.workdir)
            ctx.log("  [hotpath] py-spy profile of ours at 50 connections (idle)")
            out["profile"] = profile(srv.proc.pid, srv.base, paths, duration, srv.workdir)
            mock.config(latency=busy_latency, embedding_latency=0.0)
            done = len(ids)
            for c in (10, 50):
                ctx.log(f"  [hotpath] ours busy (20 documents ingesting, L={busy_latency:.1f}s), {c} conn")
                t = _busy(ctx, srv.base, upload, f"hp-busy{c}-", 20, None)
                time.sleep(0.5)
                r = run_wrk(srv.base, paths, c, duration, srv.workdir)
                t.join()
                counts = httpx.get(f"{srv.base}/api/queue/stats", timeout=30).json()["counts"]
                r["completed_during"] = counts.get("completed", 0) - done
                r["still_running_after"] = len(ids) + 20 * (1 if c == 10 else 2) - counts.get("completed", 0)
                out["ours"][f"busy_{c}"] = r
                wait_ours_done(srv.base, len(ids) + 20 * (1 if c == 10 else 2), timeout=300)
                done = len(ids) + 20 * (1 if c == 10 else 2)
        finally:
            srv.stop()
    finally:
        mock.stop()

    # ---------------------------------------------------------------- LightRAG Server
    if ctx.lrs_exe is None:
        out["lrs"] = {"skipped": "LightRAG Server not available"}
        return out
    mock = ctx.mock(latency=0.0)
    try:
        srv = ctx.lrs(mock, "hotpath-lrs", 8, 4)
        try:
            url = f"{srv.base}/documents/upload"
            res = upload_series(url, 50, 4, 3000, "hp-lrs-seed", keep_bodies=True)
            tracks = [b["track_id"] for b in res["bodies"] if b.get("track_id")]
            srv.wait_processed(len(tracks), timeout=300)
            paths = [f"/documents/track_status/{t}" for t in tracks]
            run_wrk(srv.base, paths, 10, 1, srv.workdir)
            for c in (10, 50):
                ctx.log(f"  [hotpath] LightRAG Server idle, {c} connections")
                out["lrs"][f"idle_{c}"] = run_wrk(srv.base, paths, c, duration, srv.workdir)
            mock.config(latency=busy_latency, embedding_latency=0.0)

            def lrs_upload(base: str, name: str, data: bytes) -> None:
                httpx.post(f"{base}/documents/upload", files={"file": (name, data, "text/plain")},
                           timeout=120).raise_for_status()  # fmt: skip

            for c in (10, 50):
                ctx.log(f"  [hotpath] LightRAG Server busy, {c} connections")
                t = _busy(ctx, srv.base, lrs_upload, f"hp-lrs-busy{c}-", 20, None)
                time.sleep(0.5)
                r = run_wrk(srv.base, paths, c, duration, srv.workdir)
                t.join()
                r["busy_after"] = srv.busy()
                out["lrs"][f"busy_{c}"] = r
                srv.wait_processed(len(tracks) + 20 * (1 if c == 10 else 2), timeout=300)
        finally:
            stop_process(srv.proc, timeout=5)
    finally:
        mock.stop()
    return out


SCENARIOS = {"hotpath": scenario_hotpath}
