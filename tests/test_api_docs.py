"""/docs works offline: Swagger UI's files come from the installed lightrag-hku, not a CDN
(the browser-level proof is in tests/test_webui_browser.py)."""

from __future__ import annotations

import pytest

from tests.helpers import make_settings, start_service

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_docs_page_loads_swagger_ui_from_this_service(tmp_path, redis_url) -> None:
    """Catches a /docs page that points at a CDN (blank offline) or assets that are not served."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        page = await svc.client.get("/docs")
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        assert "cdn." not in page.text and "https://" not in page.text, page.text
        assert "/openapi.json" in page.text
        for name, media_type, marker in (
            ("swagger-ui-bundle.js", "text/javascript", b"SwaggerUIBundle"),
            ("swagger-ui.css", "text/css", b".swagger-ui"),
            ("favicon-32x32.png", "image/png", b"\x89PNG"),
        ):
            assert f"/docs/assets/{name}" in page.text
            asset = await svc.client.get(f"/docs/assets/{name}")
            assert asset.status_code == 200, name
            assert asset.headers["content-type"].startswith(media_type)
            assert marker in asset.content[:2_000_000], name


async def test_docs_assets_serve_only_swagger_ui_files(tmp_path, redis_url) -> None:
    """Catches an asset route that serves any file of the package (or outside it) by name."""
    async with start_service(make_settings(tmp_path, redis_url)) as svc:
        for name in ("index.html", "..%2F..%2F__init__.py", "%2e%2e%2fwebui%2findex.html", "swagger-ui.js"):
            refused = await svc.client.get(f"/docs/assets/{name}")
            assert refused.status_code == 404, (name, refused.status_code)
            assert refused.json()["code"] == "not_found", name
