"""The browser dashboard at /ui: the ASGI app serves the page and its static files with the right
types and nothing else, and the live events and batch status the page is fed by carry what it shows.
The browser test is tests/test_dashboard_browser.py (a real process)."""

from __future__ import annotations

import re

import httpx
import pytest

from tests.helpers import Service, make_settings, read_events_until, start_socket_service, story
from tests.procs import ROOT

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]
STATIC = ROOT / "api" / "static"


# ------------------------------------------------------------------------------------------ fast


async def test_ui_page_and_static_files_are_served_with_their_types(service: Service) -> None:
    page = await service.client.get("/ui")
    assert page.status_code == 200
    assert page.headers["content-type"] == "text/html; charset=utf-8"
    assert '<script src="/ui/static/app.js"' in page.text
    assert 'href="/ui/static/style.css"' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    assert page.headers["x-content-type-options"] == "nosniff"

    js = await service.client.get("/ui/static/app.js")
    assert js.status_code == 200
    assert js.headers["content-type"] == "text/javascript; charset=utf-8"
    assert "EventSource" in js.text

    css = await service.client.get("/ui/static/style.css")
    assert css.status_code == 200
    assert css.headers["content-type"] == "text/css; charset=utf-8"

    for bad in ("/ui/static/missing.js", "/ui/static/%2e%2e/routes_ui.py", "/ui/static/..%2Froutes_ui.py"):
        response = await service.client.get(bad)
        assert response.status_code == 404, bad
        assert response.json()["code"] == "not_found"


def test_static_files_use_no_external_resource_and_no_inner_html() -> None:
    for name in ("index.html", "app.js", "style.css"):
        text = (STATIC / name).read_text()
        assert not re.search(r"(https?:)?//[a-z0-9.-]+\.[a-z]{2,}/", text, re.I), name
        assert "@import" not in text, name
    js = (STATIC / "app.js").read_text()
    assert "innerHTML" not in js and "outerHTML" not in js and "insertAdjacentHTML" not in js
    assert "document.write" not in js and "eval(" not in js


async def test_ui_has_a_documents_tab_wired_to_the_documents_api(service: Service) -> None:
    """Catches the documents tab missing from the page, or its script not calling the listing and
    the delete routes (the browser test drives it for real: tests/test_dashboard_browser.py)."""
    page = (await service.client.get("/ui")).text
    assert 'role="tablist"' in page and 'id="tab-documents"' in page
    assert 'id="panel-documents"' in page and 'aria-controls="panel-documents"' in page
    for status in ("pending", "processing", "preprocessed", "processed", "failed"):
        assert f'<option value="{status}">' in page, status
    js = (STATIC / "app.js").read_text()
    assert "/documents?${params}" in js and 'method: "DELETE"' in js and "window.confirm(" in js
    listed = await service.client.get("/documents", params={"limit": 25, "offset": 0, "status": "failed"})
    assert listed.status_code == 200 and listed.json()["documents"] == []


async def test_live_events_tag_each_task_with_its_kind_and_end_a_batch_the_page_shows(
    tmp_path, redis_url
) -> None:
    """The dashboard's table and batch entry are fed by /events: each task view carries its `kind`
    (the table's tag), and once the events of a batch's tasks are final, the GET /batch the page
    makes on them answers done at 100 % with those statuses (the page then stops reading it).
    Catches a view without `kind`, or a batch status that lags the events the page refreshes on."""
    settings = make_settings(tmp_path, redis_url, embedding_provider="hash")
    async with start_socket_service(settings) as svc:
        async with httpx.AsyncClient(base_url=svc.url, timeout=30) as client:
            files = [
                ("files", ("kelp-farms.txt", story("kelp farms", "Kelpmoor").encode())),
                ("files", ("sea-salt.md", story("sea salt", "Saltmarrow").encode())),
                ("files", ("setup.exe", b"MZ binary")),
            ]
            batch = (await client.post("/batch", files=files)).json()
            text = (await client.post("/insert/text", json={"text": story("oyster beds", "Oystrel")})).json()
            wanted = {t["task_id"] for t in batch["tasks"]} | {text["task_id"]}

            def all_final(events: list[dict]) -> bool:
                final = {e["task"]["task_id"] for e in events if e["task"]["status"] == "completed"}
                return wanted <= final

            events = await read_events_until(client, "/events", all_final)
            kinds = {
                e["task"]["task_id"]: e["task"]["kind"] for e in events if e["task"]["task_id"] in wanted
            }
            assert kinds == {**{t["task_id"]: "file" for t in batch["tasks"]}, text["task_id"]: "text"}

            view = (await client.get(f"/batch/{batch['batch_id']}")).json()
            assert view["done"] and view["progress"] == 100.0 and view["counts"]["completed"] == 2
            assert [t["status"] for t in view["tasks"]] == ["completed", "completed"]
            assert [(e["filename"], e["status_code"]) for e in view["errors"]] == [("setup.exe", 415)]
