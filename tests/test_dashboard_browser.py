"""The browser dashboard driven by headless Chromium through Playwright, against the real service
(uvicorn subprocess, mock LLM with 1 s latency, one task at a time): upload, live progress to
completed, cancel a pending task, query with "context only", batches (several files as one POST
/batch with per-file lines and overall progress to done, a refused batch, a 413 too_many_files split
into smaller groups, cancel batch), the documents tab (a hostile file name shown as text, range,
status filter, delete refused while indexing, delete), the task kind tag, screenshot.
Set UPDATE_SCREENSHOTS=1 to refresh docs/img/dashboard.png. Browsers are never downloaded: Chromium
is found the way .ci/run finds it (`command -v chromium`, else chromium-browser or google-chrome);
CI installs Debian's.
"""

from __future__ import annotations

import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
import redis

from src.tasks.keys import Keys
from tests.helpers import story, wait_sync
from tests.procs import ROOT, service_env, start_mock_llm, start_service, stop_process

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = ROOT / "docs" / "img" / "dashboard.png"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def find_chromium() -> str | None:
    """The first Chromium on PATH, like .ci/run's `command -v chromium` (plus the other usual names)."""
    for name in CHROMIUM_NAMES:
        if path := shutil.which(name):
            return path
    return None


def test_dashboard_in_headless_chromium(tmp_path: Path, redis_url: str, listen) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip(
            "no chromium, chromium-browser or google-chrome on PATH "
            "(apt-get install -y chromium; .ci/run does this in CI); browsers are never downloaded"
        )
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

    http = listen()
    base = http.url
    data_dir = tmp_path / "data"
    prefix = f"ui{uuid.uuid4().hex[:8]}:"
    mock = start_mock_llm()
    env = service_env(
        data_dir,
        http,
        mock,
        REDIS_URL=redis_url,
        REDIS_PREFIX=prefix,
        WORKSPACE=f"ui{uuid.uuid4().hex[:8]}",
        EMBEDDING_PROVIDER="hash",
        # The mock LLM's extraction calls are held while a document must stay "processing"; with one
        # task at a time, the next upload stays "pending" until it is cancelled.
        MAX_CONCURRENT_TASKS="1",
        # Small enough that the dashboard's groups of 100 get a 413 too_many_files for 4 files.
        MAX_BATCH_FILES="3",
        # The last step holds the mock LLM's answers: stopping must not wait for those calls.
        SHUTDOWN_GRACE_SECONDS="1",
        LOG_LEVEL="INFO",
    )
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    first = uploads / "harbour-notes.txt"
    first.write_text(story("tidal harbours", "Quillfeather", 10))
    slow = uploads / "long-report.md"
    slow.write_text("# Long report\n\n" + story("river deltas", "Marrowgate", 20))
    waiting = uploads / "waiting.txt"
    waiting.write_text(story("alpine railways", "Vantablue", 10))

    service = None
    try:
        service = start_service(env, tmp_path / "service.log")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1360, "height": 1000})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                # (the browser logs each non-2xx fetch as "Failed to load resource"; those are expected)
                page.on(
                    "console",
                    lambda msg: (
                        errors.append(msg.text)
                        if msg.type == "error" and not msg.text.startswith("Failed to load resource")
                        else None
                    ),
                )
                external: list[str] = []
                page.on(
                    "request",
                    lambda req: None if req.url.startswith(base) else external.append(req.url),
                )
                redis_client = redis.Redis.from_url(redis_url)

                def forget(batch_id: str) -> object:
                    return redis_client.delete(Keys(prefix).batch(batch_id))

                def hold_llm() -> object:
                    return httpx.post(f"{mock.root_url}/_mock/hold", json={"kinds": ["extract"]})

                def release_llm() -> object:
                    return httpx.post(f"{mock.root_url}/_mock/release")

                try:
                    _scenario(
                        sync_api, page, base, (first, slow, waiting), tmp_path, forget, hold_llm, release_llm
                    )
                finally:
                    redis_client.close()
                assert errors == [], errors
                assert external == [], external
            finally:
                browser.close()
    except BaseException:
        log = tmp_path / "service.log"
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_process(service)
        stop_process(mock)


def _row(page, filename: str):
    return page.locator("#tasks-body tr", has=page.locator(".filename", has_text=filename))


def _scenario(
    sync_api,
    page,
    base: str,
    files: tuple[Path, Path, Path],
    tmp_path: Path,
    forget: Callable[[str], object],
    hold_llm: Callable[[], object],
    release_llm: Callable[[], object],
) -> None:
    expect = sync_api.expect
    first, slow, waiting = files
    page.goto(f"{base}/ui")
    expect(page).to_have_title("RAG ingestion dashboard")
    expect(page.locator("#connection")).to_have_attribute("data-state", "live", timeout=15_000)
    expect(page.locator("#stats-meta")).to_contain_text("Instance", timeout=10_000)

    # 1. One upload through the file picker reaches "completed" at 100 %, fed by the event stream.
    page.set_input_files("#file-input", str(first))
    expect(page.locator("#upload-log")).to_contain_text("queued as task", timeout=15_000)
    row = _row(page, first.name)
    expect(row).to_have_count(1, timeout=10_000)
    expect(row.locator(".badge")).to_have_text("completed", timeout=120_000)
    expect(row.locator("[role=progressbar]")).to_have_attribute("aria-valuenow", "100")
    expect(row.locator(".percent")).to_have_text("100 %")
    expect(row.locator(".attempts")).to_have_text("1")
    expect(row.locator(".cancel")).to_be_hidden()
    expect(page.locator("#stat-completed")).to_have_text("1", timeout=10_000)
    # The tokens the mock LLM reported for it are shown (GET /usage; no budget: just the count).
    expect(page.locator("#stat-tokens-day")).to_have_text(re.compile(r"^[1-9][0-9]*$"), timeout=15_000)
    expect(page.locator("#stat-tokens-month")).to_have_text(re.compile(r"^[1-9][0-9]*$"))

    # 2. Two more at once: the first runs (its extraction held), the second waits; cancel the waiting one.
    hold_llm()
    page.set_input_files("#file-input", [str(slow), str(waiting)])
    slow_row, waiting_row = _row(page, slow.name), _row(page, waiting.name)
    expect(slow_row.locator(".badge")).to_have_text("processing", timeout=30_000)
    expect(waiting_row.locator(".badge")).to_have_text("pending", timeout=30_000)
    expect(page.locator("#stat-pending")).to_have_text("1", timeout=10_000)
    waiting_row.get_by_role("button", name=f"Cancel {waiting.name}").click()
    expect(waiting_row.locator(".badge")).to_have_text("cancelled", timeout=30_000)
    expect(waiting_row.locator(".cancel")).to_be_hidden()
    expect(page.locator("#stat-cancelled")).to_have_text("1", timeout=10_000)
    assert httpx.get(f"{base}/tasks?status=cancelled", timeout=10).json()["total"] == 1
    release_llm()  # the running one goes on to the end

    # 3. Query the first document with "context only": its distinctive word is in the answer.
    page.get_by_label("Question").fill("What is the Quillfeather project?")
    page.get_by_label("Mode").select_option("naive")
    page.get_by_label("Context only").check()
    page.get_by_role("button", name="Ask").click()
    answer = page.locator("#query-answer")
    expect(answer).to_be_visible(timeout=60_000)
    expect(answer).to_contain_text("Quillfeather")
    expect(page.locator("#query-meta")).to_contain_text("context")
    assert page.locator("#query-answer").evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"

    # 4. A file dropped on the drop zone is uploaded too; one the server refuses shows its JSON error.
    transfer = page.evaluate_handle(
        """() => {
            const dt = new DataTransfer();
            dt.items.add(new File(["MZ binary"], "image.exe", {type: "application/octet-stream"}));
            return dt;
        }"""
    )
    page.locator("#dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    error_item = page.locator("#upload-log li[data-state=error]")
    expect(error_item).to_contain_text("HTTP 415", timeout=15_000)
    expect(error_item).to_contain_text("unsupported")

    _batch_to_done(sync_api, page)
    _documents_tab(sync_api, page, base, first, hold_llm)
    _batch_split_and_cancel(sync_api, page, forget, hold_llm)

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 1000 and data.startswith(PNG_MAGIC)
    if os.environ.get("UPDATE_SCREENSHOTS") == "1":
        SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
        SCREENSHOT.write_bytes(data)


#: A file name a browser would run if the page inserted it as HTML.
HOSTILE = '<img src=x onerror="window.__xss=1">.txt'
#: The same for a file of a batch (a browser's multipart encoding would escape quotes).
HOSTILE_EXE = "<img src=x onerror=window.__xss=2>.exe"


def _payload(name: str, text: str) -> dict:
    return {"name": name, "mimeType": "text/plain", "buffer": text.encode()}


def _batch_entry(page, text: str):
    """The upload log entry of the batch with a line (or title) containing ``text``."""
    return page.locator("#upload-log li.batch-item", has=page.locator(".filename", has_text=text))


def _batch_to_done(sync_api, page) -> None:
    expect = sync_api.expect
    # 5. Three files chosen at once are one POST /batch: one entry, a line per file (the refused one
    # with the server's error, its hostile name as text), overall progress up to done.
    page.set_input_files(
        "#file-input",
        [
            _payload("tide-tables.txt", story("tide tables", "Brinewick", 8)),
            _payload("canal-boats.md", "# Canal boats\n\n" + story("canal boats", "Lockhaven", 8)),
            _payload(HOSTILE_EXE, "MZ binary"),
        ],
    )
    entry = _batch_entry(page, "tide-tables.txt")
    expect(entry).to_have_count(1, timeout=15_000)
    expect(entry.locator(".batch-file[data-state=ok]")).to_have_count(2, timeout=15_000)
    expect(entry.locator(".batch-file[data-state=ok]").first).to_contain_text("queued as task")
    refused = entry.locator(".batch-file[data-state=error]")
    expect(refused).to_have_count(1)
    expect(refused.locator(".filename")).to_have_text(HOSTILE_EXE)
    expect(refused.locator(".upload-state")).to_contain_text("HTTP 415")
    expect(refused.locator(".upload-state")).to_contain_text("unsupported")
    assert page.locator("#upload-log img").count() == 0
    assert page.evaluate("() => window.__xss === undefined")
    progress = entry.locator(".batch-head [role=progressbar]")
    expect(progress).to_have_attribute("aria-valuenow", "100", timeout=120_000)
    state = entry.locator(".batch-head .upload-state")
    expect(state).to_have_text("done: completed 2 · 1 refused", timeout=30_000)
    expect(entry.locator(".batch-file[data-state=ok]").first).to_contain_text("completed")
    expect(entry.get_by_role("button", name="Cancel the batch of 3 files")).to_be_hidden()
    # Its tasks are in the live table, tagged with their kind.
    expect(_row(page, "tide-tables.txt").locator(".kind")).to_have_text("file")

    # A batch of which no file is accepted shows each file's error.
    page.set_input_files(
        "#file-input", [_payload("setup-tool.exe", "MZ one"), _payload("driver.bin", "MZ two")]
    )
    rejected = _batch_entry(page, "setup-tool.exe")
    expect(rejected).to_have_attribute("data-state", "error", timeout=15_000)
    expect(rejected.locator(".batch-head .upload-state")).to_contain_text("batch_rejected")
    expect(rejected.locator(".batch-file[data-state=error]")).to_have_count(2)
    expect(rejected.locator(".batch-file", has_text="driver.bin")).to_contain_text("HTTP 415")
    bar = rejected.locator("[role=progressbar]")
    expect(bar).to_have_count(1)
    expect(bar).to_be_hidden()  # nothing to make progress


def _batch_split_and_cancel(
    sync_api, page, forget: Callable[[str], object], hold_llm: Callable[[], object]
) -> None:
    expect = sync_api.expect
    # Both halves must still be unfinished when they are cancelled below: from here on, every
    # extraction call is held until the end of the test (a fast engine finished the first half before).
    hold_llm()
    # 6. Four files against MAX_BATCH_FILES=3: the 413 too_many_files is shown and the files go as
    # two batches of two. One worker, its extraction held: the second batch waits, and is cancelled.
    page.set_input_files(
        "#file-input",
        [_payload(f"volume-{i}.txt", story(f"archive volume {i}", f"Tomekeeper{i}", 20)) for i in range(4)],
    )
    split = _batch_entry(page, "Batch of 4 files")
    expect(split.locator(".batch-head .upload-state")).to_contain_text("too_many_files", timeout=15_000)
    expect(split.locator(".batch-head .upload-state")).to_contain_text("smaller groups")
    first_half, second_half = _batch_entry(page, "volume-0.txt"), _batch_entry(page, "volume-3.txt")
    expect(first_half.locator(".batch-file[data-state=ok]")).to_have_count(2, timeout=15_000)
    expect(second_half.locator(".batch-file[data-state=ok]")).to_have_count(2, timeout=15_000)
    cancel = second_half.get_by_role("button", name="Cancel the batch of 2 files")
    expect(cancel).to_be_visible()

    # A dismissed confirmation cancels nothing; an accepted one (keyboard) shows the server's outcome.
    page.once("dialog", lambda dialog: dialog.dismiss())
    cancel.click()
    expect(second_half.locator(".batch-outcome")).to_have_text("")
    page.once("dialog", lambda dialog: dialog.accept())
    cancel.focus()
    page.keyboard.press("Enter")
    expect(second_half.locator(".batch-outcome")).to_have_text(
        "2 task(s) cancelled, 0 being stopped", timeout=15_000
    )
    state = second_half.locator(".batch-head .upload-state")
    expect(state).to_have_text("done: cancelled 2", timeout=30_000)
    expect(cancel).to_be_hidden()
    expect(_row(page, "volume-3.txt").locator(".badge")).to_have_text("cancelled", timeout=15_000)

    # A batch the server no longer knows (its record gone, as after its TTL): the cancel's 404 is
    # shown, and the status reads stop with the 404 shown (no endless polling).
    # The page's status poll would see the 404 too and hide the button (stopBatch) before the
    # click: its reads of this batch are held until the cancel's 404 is shown, then let through.
    batch_id = first_half.get_attribute("data-batch-id")
    held: list = []

    def hold_status_reads(route) -> None:
        if route.request.method == "GET":
            held.append(route)
        else:
            route.continue_()

    page.route(f"**/batch/{batch_id}", hold_status_reads)
    for _ in range(100):  # a held read means no other one is in flight (one poll at a time)
        if held:
            break
        page.wait_for_timeout(100)
    assert held, "the page stopped polling a running batch"
    forget(batch_id)
    page.once("dialog", lambda dialog: dialog.accept())
    first_half.get_by_role("button", name="Cancel the batch of 2 files").click()
    expect(first_half.locator(".batch-outcome")).to_contain_text("cancel failed: HTTP 404", timeout=15_000)
    for route in held:
        route.continue_()
    page.unroute(f"**/batch/{batch_id}", hold_status_reads)
    expect(first_half.locator(".batch-head .upload-state")).to_contain_text(
        "status unavailable: HTTP 404", timeout=15_000
    )
    expect(first_half.get_by_role("button", name="Cancel the batch of 2 files")).to_be_hidden()


def _documents_tab(sync_api, page, base: str, first: Path, hold_llm: Callable[[], object]) -> None:
    expect = sync_api.expect
    with httpx.Client(base_url=base, timeout=30) as client:
        hostile = client.post(
            "/insert/text", json={"text": story("sea walls", "Hostilename", 6), "filename": HOSTILE}
        ).json()
        wait_sync(
            lambda: client.get(f"/task/{hostile['task_id']}").json()["status"] == "completed",
            timeout=180, message="hostile-named document indexed",
        )  # fmt: skip
        hold_llm()  # the busy document stays in its extraction until the end of the test
        busy = client.post(
            "/insert/text", json={"text": story("canal locks", "Busydoc", 20), "filename": "busy.txt"}
        ).json()
        wait_sync(
            lambda: client.get(f"/documents/{busy['doc_id']}").status_code == 200,
            timeout=120, message="busy document in LightRAG",
        )  # fmt: skip
        total = client.get("/documents").json()["total"]

    page.get_by_role("tab", name="Documents").click()
    expect(page.locator("#panel-documents")).to_be_visible()
    expect(page.locator("#panel-tasks")).to_be_hidden()
    rows = page.locator("#docs-body tr")
    expect(rows).to_have_count(total, timeout=10_000)
    expect(page.locator("#docs-range")).to_have_text(f"1–{total} of {total}")
    # The hostile name is text: no element was made of it and nothing ran.
    named = page.locator("#docs-body .filename", has_text=HOSTILE)
    expect(named).to_have_count(1)
    assert page.locator("#docs-body img").count() == 0
    assert page.evaluate("() => window.__xss === undefined")

    # Deleting the document being indexed is refused: the 409 is shown, the row stays.
    busy_row = page.locator("#docs-body tr[data-doc-id]", has=page.locator(".filename", has_text="busy.txt"))
    page.once("dialog", lambda dialog: dialog.accept())
    busy_row.get_by_role("button", name="Delete busy.txt").click()
    expect(page.locator("#docs-message")).to_contain_text("HTTP 409", timeout=15_000)
    expect(busy_row.locator(".details")).to_contain_text("doc_in_progress")

    # A dismissed confirmation deletes nothing; an accepted one removes the document.
    first_row = page.locator("#docs-body tr", has=page.locator(".filename", has_text=first.name))
    page.once("dialog", lambda dialog: dialog.dismiss())
    first_row.get_by_role("button", name=f"Delete {first.name}").click()
    expect(first_row).to_have_count(1)
    page.once("dialog", lambda dialog: dialog.accept())
    first_row.get_by_role("button", name=f"Delete {first.name}").click()
    expect(page.locator("#docs-message")).to_contain_text(f"Deleted {first.name}", timeout=30_000)
    expect(first_row).to_have_count(0, timeout=10_000)
    expect(rows).to_have_count(total - 1)

    # The status filter asks the server for that status only.
    page.get_by_label("Status").select_option("processed")
    expect(busy_row).to_have_count(0, timeout=10_000)
    for badge in page.locator("#docs-body .badge").all():
        expect(badge).to_have_text("processed")
    page.get_by_label("Status").select_option("")
    expect(busy_row).to_have_count(1, timeout=10_000)

    # Back to the tasks tab (the screenshot shows it), with the keyboard: arrow keys move between tabs;
    # a text task is tagged with its kind.
    page.get_by_role("tab", name="Documents").focus()
    page.keyboard.press("ArrowLeft")
    expect(page.get_by_role("tab", name="Tasks")).to_be_focused()
    expect(page.locator("#panel-tasks")).to_be_visible()
    expect(page.locator("#panel-documents")).to_be_hidden()
    expect(_row(page, HOSTILE).locator(".kind")).to_have_text("text")
