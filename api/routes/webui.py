"""LightRAG's own WebUI at ``/webui/`` (from the installed lightrag-hku package, its API requests
re-pointed to ``/lightrag``: src/rag/webui.py). The document manager, graph viewer and retrieval
tester then work against this service, tenant-scoped by the key or login they present."""

from __future__ import annotations

import asyncio
import mimetypes

from fastapi import APIRouter, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from api.errors import ApiError
from src.rag.webui import WebUiBundle, WebUiUnavailable

router = APIRouter(include_in_schema=False)

_bundle: WebUiBundle | None = None
_lock = asyncio.Lock()


async def bundle() -> WebUiBundle:
    global _bundle
    if _bundle is None:
        async with _lock:
            if _bundle is None:
                try:
                    _bundle = await asyncio.to_thread(WebUiBundle.load)
                except WebUiUnavailable as exc:
                    raise ApiError(503, "webui_unavailable", str(exc)) from None
    return _bundle


@router.get("/webui")
async def webui_root() -> RedirectResponse:
    return RedirectResponse("/webui/", status_code=307)


@router.get("/webui/{path:path}")
async def webui(path: str, request: Request) -> Response:
    ui = await bundle()
    path = path or "index.html"
    name = path.rsplit("/", 1)[-1]
    if path.startswith("assets/") and name in ui.patched:
        return Response(ui.patched[name], media_type="text/javascript", headers={"Cache-Control": "no-cache"})
    found = ui.file(path)
    if found is None:
        raise ApiError(404, "not_found", f"no such WebUI file: {path}")
    media_type = mimetypes.guess_type(found.name)[0] or "application/octet-stream"
    cache = "no-cache" if found.suffix == ".html" else "public, max-age=86400"
    return FileResponse(found, media_type=media_type, headers={"Cache-Control": cache})
