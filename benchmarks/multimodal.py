"""Multimodal benchmark (issue 24): ``python -m benchmarks.multimodal [--quick]``.

1. Offline OCR speed: a scanned (image-only) PDF of dense Chinese/English pages parsed by the
   bounded parse child, pages per second and the child's peak RSS.
2. End to end, offline defaults (e5 embeddings, the extractive LLM stand-in, OCR): a 30-page scanned
   PDF uploaded to the service while 20 other uploads and their polls arrive; time to completed,
   the service's own event-loop lag p99 (``ragsvc_event_loop_lag_seconds``) and RSS meanwhile.

Writes its own marked block of docs/benchmarks.md (benchmarks/doc_blocks.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import httpx
import psutil

from benchmarks.common import ROOT, Mock, RedisServer, RssSampler, Service, machine_info
from benchmarks.doc_blocks import splice_block
from benchmarks.metrics_scrape import loop_lag_p99_ms, scrape

BEGIN, END = "<!-- multimodal:begin -->", "<!-- multimodal:end -->"
FONT = "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc"
LINES = [
    "东湖街道城市体检报告：排水管网老化，雨季低洼路段积水。",
    "The drainage network of Donghu Street is aging; low roads flood in the rainy season.",
    "幸福小区消防通道被违规占用，物业公司已被责令限期整改。",
    "Fire lanes in Xingfu residential area are blocked by parked cars.",
]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def scanned_pdf(pages: int, lines_per_page: int = 24) -> bytes:
    """An image-only A4 PDF at 150 dpi: ``lines_per_page`` lines of rendered text per page."""
    import io

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 26)
    images = []
    for page in range(pages):
        image = Image.new("L", (1240, 1754), 255)
        draw = ImageDraw.Draw(image)
        for n in range(lines_per_page):
            draw.text(
                (70, 80 + n * 64), f"{page + 1}.{n + 1} {LINES[(page + n) % len(LINES)]}", fill=0, font=font
            )
        images.append(image)
    buffer = io.BytesIO()
    images[0].save(buffer, format="PDF", save_all=True, append_images=images[1:], resolution=150.0)
    return buffer.getvalue()


def ocr_speed(workdir: Path, pages: int) -> dict:
    from src.rag.parsing.isolated import run_isolated
    from src.rag.parsing.limits import ParseLimits

    path = workdir / "speed.pdf"
    path.write_bytes(scanned_pdf(pages))
    started = time.perf_counter()
    items = run_isolated("pdf", path, workdir / "speed-out", ParseLimits())
    elapsed = time.perf_counter() - started
    chars = sum(len(i.get("text", "")) for i in items)
    return {
        "pages": pages,
        "seconds": round(elapsed, 1),
        "pages_per_second": round(pages / elapsed, 3),
        "characters": chars,
        "child_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024),
    }


class ChildrenRss(RssSampler):
    """Peak of the summed RSS of a process's children (the parse child)."""

    def _run(self) -> None:
        parent = psutil.Process(self.pid)
        t0 = time.monotonic()
        while not self._stop.is_set():
            total = 0
            for child in parent.children(recursive=True):
                try:
                    if "redis" not in child.name():
                        total += child.memory_info().rss
                except psutil.Error:
                    continue
            self.samples.append((time.monotonic() - t0, total))
            self._stop.wait(self.interval)


async def _end_to_end(base: str, pdf: bytes, others: int) -> dict:
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        before = scrape(base)
        started = time.perf_counter()
        response = await client.post("/insert", files={"file": ("scan-30.pdf", pdf)})
        response.raise_for_status()
        scan_id = response.json()["task_id"]
        acks: list[float] = []
        polls: list[float] = []

        async def other(n: int) -> str:
            t = time.perf_counter()
            text = f"Inspection note {n}: hydrant {n} at Donghu Street was checked and works. " * 20
            r = await client.post("/insert", files={"file": (f"note-{n}.txt", text.encode())})
            acks.append(time.perf_counter() - t)
            r.raise_for_status()
            return r.json()["task_id"]

        ids = await asyncio.gather(*(other(n) for n in range(others)))
        final: dict = {}
        parsed_at: dict | None = None
        parse_seconds = 0.0
        while True:
            for task_id in [scan_id, *ids]:
                t = time.perf_counter()
                final = (await client.get(f"/task/{task_id}")).json()
                polls.append(time.perf_counter() - t)
                if task_id != scan_id:
                    continue
                if parsed_at is None and final.get("stage") not in ("saved", "parsing", None):
                    parsed_at = scrape(base)  # OCR is over: the rest is indexing
                    parse_seconds = time.perf_counter() - started
                if final["status"] in ("completed", "failed"):
                    break
            else:
                await asyncio.sleep(0.5)
                continue
            break
        elapsed = time.perf_counter() - started
        after = scrape(base)
        lag, samples = loop_lag_p99_ms(before, after)
        ocr_lag, ocr_samples = loop_lag_p99_ms(before, parsed_at or after)
        polls.sort()
        acks.sort()
        return {
            "status": final["status"],
            "error": final.get("error"),
            "seconds": round(elapsed, 1),
            "chunks": (final.get("result") or {}).get("chunks_count"),
            "loop_lag_p99_ms": round(lag, 1),
            "parse_seconds": round(parse_seconds, 1),
            "ocr_loop_lag_p99_ms": round(ocr_lag, 1),
            "ocr_loop_lag_samples": ocr_samples,
            "loop_lag_samples": samples,
            "ack_p99_ms": round(acks[int(0.99 * (len(acks) - 1))] * 1000, 1),
            "poll_p99_ms": round(polls[int(0.99 * (len(polls) - 1))] * 1000, 1),
            "polls": len(polls),
        }


async def _baseline(base: str, others: int) -> dict:
    """The same 20 uploads and their polls, without a scan: the loop lag this machine gives anyway."""
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        before = scrape(base)
        ids = []
        for n in range(others):
            text = f"Baseline note {n}: hydrant {n} at Xihu Street was checked and works. " * 20
            r = await client.post("/insert", files={"file": (f"base-{n}.txt", text.encode())})
            r.raise_for_status()
            ids.append(r.json()["task_id"])
        pending = set(ids)
        while pending:
            for task_id in list(pending):
                if (await client.get(f"/task/{task_id}")).json()["status"] in ("completed", "failed"):
                    pending.discard(task_id)
            await asyncio.sleep(0.05)
        lag, samples = loop_lag_p99_ms(before, scrape(base))
        return {"baseline_loop_lag_p99_ms": round(lag, 1), "baseline_loop_lag_samples": samples}


def end_to_end(workdir: Path, pages: int, others: int) -> dict:
    redis = RedisServer(workdir / "redis").start()
    mock = Mock(workdir)  # not started: the service runs on its offline defaults
    offline = {"LLM_BASE_URL": "", "LLM_API_KEY": "", "EMBEDDING_BASE_URL": "", "EMBEDDING_API_KEY": ""}
    service = Service(workdir / "svc", redis.url, mock, env_extra=offline)
    try:
        service.start()
        pdf = scanned_pdf(pages)
        quiet = asyncio.run(_baseline(service.base, others))
        with RssSampler(service.proc.pid) as rss, ChildrenRss(service.proc.pid, interval=0.2) as children:
            baseline = service.rss()
            result = asyncio.run(_end_to_end(service.base, pdf, others))
        result.update(quiet)
        result.update(
            pages=pages,
            other_uploads=others,
            service_rss_mib_start=round(baseline / 2**20),
            service_rss_mib_peak=round(rss.peak / 2**20),
            parse_child_rss_mib_peak=round(children.peak / 2**20),
        )
        return result
    finally:
        service.stop()
        redis.stop()


def picture_bundle(pictures: int) -> bytes:
    """A content-list .zip (as parsed elsewhere): a paragraph and ``pictures`` pictures of text."""
    import io
    import json
    import zipfile

    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.truetype(FONT, 28)
    items: list[dict] = [{"type": "text", "text": "Donghu Street inspection photos.", "page_idx": 0}]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as bundle:
        for n in range(pictures):
            image = Image.new("RGB", (640, 360), "white")
            ImageDraw.Draw(image).text(
                (30, 150), f"{n + 1}: {LINES[n % len(LINES)][:20]}", fill="black", font=font
            )
            buffer = io.BytesIO()
            image.save(buffer, format="PNG")
            bundle.writestr(f"out/images/{n}.png", buffer.getvalue())
            items.append(
                {"type": "image", "img_path": f"images/{n}.png", "image_caption": [f"photo {n + 1}"]}
            )
        bundle.writestr("out/photos_content_list.json", json.dumps(items, ensure_ascii=False))
    return out.getvalue()


def vision_document(workdir: Path, pictures: int, latency: float, slots: int) -> dict:
    """A document of ``pictures`` pictures with a mock vision model at ``latency`` s per call."""
    redis = RedisServer(workdir / "redis-vlm").start()
    mock = Mock(workdir).start()
    mock.config(vision_latency=latency)
    env = {
        "VLM_BASE_URL": mock.v1,
        "VLM_API_KEY": "bench-key",
        "VLM_MODEL": "mock-vl",
        "VLM_MAX_ASYNC": str(slots),
    }
    service = Service(workdir / "svc-vlm", redis.url, mock, env_extra=env)
    try:
        service.start()
        started = time.perf_counter()
        with httpx.Client(base_url=service.base, timeout=60) as client:
            r = client.post("/insert", files={"file": ("photos.zip", picture_bundle(pictures))})
            r.raise_for_status()
            task_id = r.json()["task_id"]
            while (view := client.get(f"/task/{task_id}").json())["status"] not in ("completed", "failed"):
                time.sleep(0.1)
        elapsed = time.perf_counter() - started
        stats = mock.stats()
        ideal = -(-pictures // slots) * latency
        return {
            "status": view["status"],
            "pictures": pictures,
            "latency": latency,
            "slots": slots,
            "seconds": round(elapsed, 2),
            "vision_calls": stats["kinds"].get("vision", 0),
            "ideal_seconds": ideal,
            "ratio": round(ideal / elapsed, 2),
        }
    finally:
        service.stop()
        mock.stop()
        redis.stop()


def markdown(speed: dict, e2e: dict, info: dict, load: str, vlm: dict | None = None) -> str:
    s, e = speed, e2e
    machine = f"{info.get('cpu', '?')}, {info.get('cores', os.cpu_count())} cores"
    rows = [
        (
            f"OCR speed, {s['pages']} scanned pages in one parse",
            f"{s['pages_per_second']} pages/s ({s['seconds']} s, {s['characters']:,} characters)",
        ),
        ("parse child peak RSS", f"{s['child_peak_rss_mib']} MiB"),
        (
            f"{e['pages']}-page scanned PDF, upload → `{e['status']}` (offline defaults)",
            f"{e['seconds']} s, {e['chunks']} chunks",
        ),
        (
            f"meanwhile: {e['other_uploads']} other uploads, {e['polls']} polls",
            f"ack p99 {e['ack_p99_ms']} ms, poll p99 {e['poll_p99_ms']} ms",
        ),
        (
            "service event-loop lag p99 meanwhile",
            f"{e['loop_lag_p99_ms']} ms ({e['loop_lag_samples']} samples)",
        ),
        (
            "baseline: the same 20 uploads and polls without a scan (machine load)",
            f"{e['baseline_loop_lag_p99_ms']} ms ({e['baseline_loop_lag_samples']} samples)",
        ),
        ("service RSS start → peak", f"{e['service_rss_mib_start']} → {e['service_rss_mib_peak']} MiB"),
        ("parse child RSS peak (service run)", f"{e['parse_child_rss_mib_peak']} MiB"),
    ]
    if vlm:
        rows.append(
            (
                f"{vlm['pictures']}-picture document, mock vision model at {vlm['latency']} s per call, "
                f"VLM_MAX_ASYNC={vlm['slots']}",
                f"{vlm['seconds']} s upload → `{vlm['status']}`, {vlm['vision_calls']} vision calls; "
                f"vision-bound ideal {vlm['ideal_seconds']:g} s (ratio {vlm['ratio']})",
            )
        )
    return "\n".join(
        [
            "## Multimodal documents: offline OCR (issue 24)",
            "",
            f"`python -m benchmarks.multimodal` (also run by `bash scripts/bench.sh`) on {machine}, "
            f"{info.get('date', '')}, commit {info.get('commit', '?')}; load average at the end {load} "
            "(the machine is shared). OCR is RapidOCR's PP-OCRv4 zh+en (rapidocr-onnxruntime, CPU, "
            "2 threads) in the parse child; pages are A4 at 150 dpi with 24 lines of Chinese/English text.",
            "",
            "| measure | value |",
            "|---|---|",
            *(f"| {k} | {v} |" for k, v in rows),
            "",
        ]
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.multimodal")
    ap.add_argument("--quick", action="store_true", help="5 pages for the speed test (the 30-page run stays)")
    ap.add_argument("--pages", type=int, default=30)
    ap.add_argument("--others", type=int, default=20)
    ap.add_argument("--out", default=str(ROOT / "docs" / "benchmarks.md"))
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="bench-mm-") as tmp:
        workdir = Path(tmp)
        log("OCR speed")
        speed = ocr_speed(workdir, 5 if args.quick else 10)
        log(f"OCR speed: {speed}")
        log(f"end to end: {args.pages}-page scan + {args.others} uploads")
        e2e = end_to_end(workdir, args.pages, args.others)
        log(f"end to end: {e2e}")
        log("20-picture document with a mock vision model")
        vlm = vision_document(workdir, 20, 0.5, 4)
        log(f"vision document: {vlm}")
    load = " / ".join(f"{x:.2f}" for x in os.getloadavg())
    section = markdown(speed, e2e, machine_info(), load, vlm)
    splice_block(Path(args.out), f"{BEGIN}\n{section}\n{END}", BEGIN, END)
    return 0 if e2e["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
