"""LightRAG's own WebUI (served at /webui/ from the installed lightrag-hku, talking to /lightrag)
driven by headless Chromium through Playwright against the real service (uvicorn subprocess, the
offline LLM): upload a file -> it shows as Completed -> the graph viewer loads the graph around
an entity of it -> the retrieval tester answers a question from it. Browsers are never
downloaded: Chromium is found as the dashboard test finds it.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.helpers import story
from tests.procs import service_env, start_service, stop_process
from tests.test_dashboard_browser import CHROMIUM_ARGS, find_chromium

pytestmark = [pytest.mark.process, pytest.mark.timeout(300)]


def test_lightrag_webui_upload_graph_and_retrieval(tmp_path: Path, listen) -> None:
    chromium = find_chromium()
    if chromium is None:
        pytest.skip("no chromium on PATH (apt-get install -y chromium); browsers are never downloaded")
    sync_api = pytest.importorskip("playwright.sync_api", reason="pip install playwright (test extra)")

    http = listen()
    base = http.url
    env = service_env(tmp_path / "data", http, None, EMBEDDING_PROVIDER="hash", LOG_LEVEL="INFO")
    doc = tmp_path / "harbour-notes.md"
    doc.write_text(story("tidal harbours", "Quillfeather", 10))
    service = None
    try:
        service = start_service(env, tmp_path / "service.log")
        with sync_api.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, headless=True)
            try:
                page = browser.new_page(viewport={"width": 1360, "height": 900})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                stray: list[str] = []
                page.on(
                    "request",
                    lambda req: (
                        None if req.url.startswith((base, f"blob:{base}", "data:")) else stray.append(req.url)
                    ),
                )
                api_calls: list[str] = []
                page.on(
                    "request",
                    lambda req: (
                        api_calls.append(req.url[len(base) :])
                        if req.url.startswith(base) and "/assets/" not in req.url
                        else None
                    ),
                )
                _scenario(page, base, doc)
                assert errors == [], errors
                assert stray == [], stray
                # Every API request of the WebUI went to the compatibility mount.
                api = [u for u in api_calls if not u.startswith(("/webui", "/docs", "/openapi.json"))]
                assert api and all(u.startswith("/lightrag/") for u in api), api
            finally:
                browser.close()
    except BaseException:
        log = tmp_path / "service.log"
        if log.exists():
            sys.stderr.write(log.read_text(errors="replace")[-4000:])
        raise
    finally:
        stop_process(service)


def _scenario(page, base: str, doc: Path) -> None:  # noqa: ANN001 - Playwright's Page
    page.goto(f"{base}/webui/")
    page.get_by_text("Uploaded Documents", exact=True).wait_for(timeout=30_000)

    # Upload through the WebUI's dialog, then watch the document list reach "Completed".
    page.get_by_role("button", name="Upload").click()
    page.locator("input[type=file]").set_input_files(str(doc))
    page.get_by_text("harbour-notes.md").first.wait_for(timeout=30_000)
    page.keyboard.press("Escape")
    completed = page.get_by_role("button", name="Completed (1)")
    for _ in range(12):  # the WebUI polls while its pipeline is busy; a reload also re-reads the list
        try:
            completed.wait_for(timeout=10_000)
            break
        except Exception:
            page.reload()
    completed.wait_for(timeout=10_000)
    page.get_by_text("The Quillfeather project").first.wait_for()

    # The graph viewer: pick the entity, the WebUI loads the graph around it and draws it.
    page.get_by_text("Knowledge Graph", exact=True).click()
    page.get_by_text("Search node name...").click()
    page.keyboard.type("Quillfeather")
    with page.expect_response(lambda r: "/lightrag/graphs?" in r.url, timeout=30_000) as loaded:
        page.get_by_role("option").filter(has_text="Quillfeather").first.click()
    graph = loaded.value.json()
    names = {n["id"] for n in graph["nodes"]}
    assert any("Quillfeather" in name for name in names), names
    page.locator("canvas").first.wait_for()

    # The retrieval tester: a question, answered from the uploaded document.
    page.get_by_text("Retrieval", exact=True).click()
    box = page.get_by_placeholder("Enter your query (Support prefix: /<Query Mode>)")
    box.fill("Who founded the Quillfeather project?")
    with page.expect_response(lambda r: "/lightrag/query" in r.url, timeout=60_000) as asked:
        box.press("Enter")
    assert asked.value.status == 200
    # The answer quotes the document (the offline LLM answers with its passages); the document
    # list's hidden summary also says "Lisbon", so only a visible match counts.
    page.locator("text=Lisbon >> visible=true").first.wait_for(timeout=60_000)
    body = asked.value.text()
    first = json.loads(body.splitlines()[0]) if body.strip() else {}
    assert "references" in first or "response" in first, body[:500]

    # The API page the WebUI's "API" tab embeds renders with no request leaving the machine.
    page.goto(f"{base}/docs")
    page.locator(".swagger-ui .info .title").get_by_text("RAG ingestion service").wait_for(timeout=30_000)
    page.locator(".opblock-summary-path", has_text="/insert/text").first.wait_for()
