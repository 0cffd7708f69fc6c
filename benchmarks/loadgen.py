"""Async httpx load generator, run as its own process (it shares the machine's cores with the server).

Modes (each prints one JSON object on stdout):

* ``upload``  - N multipart uploads with C concurrent clients; per-request latency and statuses.
* ``text``    - N ``POST /insert/text`` requests with C concurrent clients.
* ``poll``    - GET a list of URLs (random order) with C concurrent clients for D seconds.
* ``probe``   - one GET every ``interval`` seconds (a fixed schedule) until SIGINT/SIGTERM or D
                seconds; latency of each (an outside proxy for event-loop lag).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import signal
import sys
import time
from pathlib import Path

import httpx

WORDS = (
    "Lisbon Porto Northwind Institute storage grid battery Maria Costa Daniel Weber report prototype "
    "University Coimbra hydrogen turbine solar wind Atlantic survey Helena Marques Oceanic Lab"
).split()


def doc_text(seed: str, size: int) -> bytes:
    """Deterministic English-like text of ``size`` bytes, unique per ``seed``."""
    rnd = random.Random(seed)
    parts: list[str] = [f"Document {seed}."]
    total = len(parts[0])
    while total < size:
        sentence = " ".join(rnd.choice(WORDS) for _ in range(12)) + f" {seed}-{rnd.randrange(10**6)}. "
        parts.append(sentence)
        total += len(sentence) + 1
    return " ".join(parts).encode()[:size]


def _letters(n: int) -> str:
    """``n`` written in base 26 with the letters a-z (names with digits are not entities to the mock)."""
    out = ""
    while True:
        n, r = divmod(n, 26)
        out = "abcdefghijklmnopqrstuvwxyz"[r] + out
        if n == 0:
            return out


def doc_text_distinct(index: int, size: int) -> bytes:
    """Like :func:`doc_text`, but every capitalised name is the document's own (``Lisbon`` becomes
    ``Lisbonq`` in document 16...): documents share no entity, so their merges never wait for each
    other's keyed locks. For telling the engine's limits apart from the data's."""
    suffix = _letters(index)
    text = doc_text(f"distinct{index}", size).decode()
    for word in WORDS:
        if word[0].isupper():
            text = text.replace(word, word + suffix)
    return text.encode()[:size]


def _limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)


async def _upload(args: argparse.Namespace) -> dict:
    lat: list[float] = []
    statuses: dict[str, int] = {}
    bodies: list[dict] = []
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(args.n):
        queue.put_nowait(i)
    payloads = {i: doc_text(f"{args.prefix}{i}", args.size) for i in range(args.n)}

    async def worker(client: httpx.AsyncClient) -> None:
        while True:
            try:
                i = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            name = f"{args.prefix}{i}.txt"
            t0 = time.perf_counter()
            try:
                r = await client.post(args.url, files={"file": (name, payloads.pop(i), "text/plain")})
                code = str(r.status_code)
                if args.keep_bodies and r.status_code < 300:
                    bodies.append(r.json())
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            lat.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.timeout, limits=_limits(args.concurrency)) as client:
        if args.barrier:  # open every connection first, so all uploads start together
            await asyncio.gather(*(client.get(args.warm_url) for _ in range(args.concurrency)))
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return {"latencies": lat, "statuses": statuses, "wall": time.perf_counter() - t0, "bodies": bodies}


async def _text(args: argparse.Namespace) -> dict:
    lat: list[float] = []
    statuses: dict[str, int] = {}
    counter = iter(range(args.n))

    async def worker(client: httpx.AsyncClient) -> None:
        for i in counter:
            t0 = time.perf_counter()
            try:
                r = await client.post(
                    args.url, json={"text": f"{args.prefix} note {i} about Lisbon storage."}
                )
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            lat.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=args.timeout, limits=_limits(args.concurrency)) as client:
        await asyncio.gather(*(worker(client) for _ in range(args.concurrency)))
    return {"latencies": lat, "statuses": statuses, "wall": time.perf_counter() - t0}


async def _poll(args: argparse.Namespace) -> dict:
    urls = [u for u in Path(args.urls_file).read_text().split() if u]  # noqa: ASYNC240
    lat: list[float] = []
    statuses: dict[str, int] = {}
    deadline = time.perf_counter() + args.duration

    async def worker(client: httpx.AsyncClient, seed: int) -> None:
        rnd = random.Random(seed)
        while time.perf_counter() < deadline:
            t0 = time.perf_counter()
            try:
                r = await client.get(rnd.choice(urls))
                code = str(r.status_code)
            except httpx.HTTPError as exc:
                code = type(exc).__name__
            lat.append(time.perf_counter() - t0)
            statuses[code] = statuses.get(code, 0) + 1

    # One client (one connection) per simulated user: a single httpx pool shared by hundreds of
    # coroutines spends its time in pool bookkeeping and becomes the bottleneck, not the server.
    # verify=False: plain http on loopback; skips loading the CA bundle for every client (~20 ms each).
    clients = [
        httpx.AsyncClient(timeout=args.timeout, limits=_limits(1), verify=False)
        for _ in range(args.concurrency)
    ]
    try:
        await asyncio.gather(*(c.get(urls[0]) for c in clients))  # open every connection first
        t0 = time.perf_counter()
        deadline = t0 + args.duration
        await asyncio.gather(*(worker(c, s) for s, c in enumerate(clients)))
        wall = time.perf_counter() - t0
    finally:
        await asyncio.gather(*(c.aclose() for c in clients))
    ok = sum(v for k, v in statuses.items() if k.startswith("2"))
    return {
        "latencies": lat,
        "statuses": statuses,
        "wall": wall,
        "rps": ok / wall,
        "errors": len(lat) - ok,
        "client_cpu_s": time.process_time(),
    }


async def _probe(args: argparse.Namespace) -> dict:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    lat: list[float] = []
    times: list[float] = []
    errors = 0
    async with httpx.AsyncClient(timeout=args.timeout) as client:
        await client.get(args.url)
        t0 = time.perf_counter()
        k = 0
        while not stop.is_set() and time.perf_counter() - t0 < args.duration:
            start = time.perf_counter()
            try:
                r = await client.get(args.url)
                if r.status_code >= 400:
                    errors += 1
            except httpx.HTTPError:
                errors += 1
            end = time.perf_counter()
            lat.append(end - start)
            times.append(start - t0)
            k += 1
            delay = t0 + k * args.interval - time.perf_counter()
            if delay > 0:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
            else:  # fell behind (a slow answer): re-anchor the schedule, no burst of catch-up probes
                t0 = time.perf_counter() - k * args.interval
    return {"latencies": lat, "times": times, "errors": errors}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.loadgen")
    p.add_argument("mode", choices=["upload", "text", "poll", "probe"])
    p.add_argument("--url", default="")
    p.add_argument("--warm-url", default="")
    p.add_argument("--urls-file", default="")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--concurrency", type=int, default=1)
    p.add_argument("--size", type=int, default=5000)
    p.add_argument("--prefix", default="bench")
    p.add_argument("--duration", type=float, default=5.0)
    p.add_argument("--interval", type=float, default=0.01)
    p.add_argument("--timeout", type=float, default=120.0)
    p.add_argument("--barrier", action="store_true")
    p.add_argument("--keep-bodies", action="store_true")
    args = p.parse_args(argv)
    fn = {"upload": _upload, "text": _text, "poll": _poll, "probe": _probe}[args.mode]
    result = asyncio.run(fn(args))
    json.dump(result, sys.stdout)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
