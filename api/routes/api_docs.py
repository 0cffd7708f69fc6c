"""The interactive API page (``/docs``) with Swagger UI served from the installed lightrag-hku
package instead of a CDN: machines without internet (and LightRAG's WebUI, which embeds this page)
get a working page. ``/openapi.json`` itself is FastAPI's."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse

from api.errors import ApiError
from src.rag.webui import swagger_ui_dir

router = APIRouter(include_in_schema=False)

#: The files of Swagger UI the page loads, and their media types.
ASSETS = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
}
ASSETS_PATH = "/docs/assets"


@router.get("/docs")
async def swagger_ui() -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url="/openapi.json",
        title="RAG ingestion service - API",
        swagger_js_url=f"{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{ASSETS_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{ASSETS_PATH}/favicon-32x32.png",
    )


@router.get(ASSETS_PATH + "/{name}")
async def swagger_ui_asset(name: str) -> FileResponse:
    """Only the named files: the name never becomes a path unless it is one of them."""
    media_type = ASSETS.get(name)
    found = swagger_ui_dir() / name if media_type else None
    if found is None or not found.is_file():
        raise ApiError(404, "not_found", f"no such API page asset: {name}")
    return FileResponse(found, media_type=media_type, headers={"Cache-Control": "public, max-age=86400"})
