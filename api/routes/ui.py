"""The browser dashboard: GET /ui (index.html) and GET /ui/static/<file> from api/static.

Plain HTML/JS/CSS with no build step and no external resource: the Content-Security-Policy only
allows this origin, so the page works offline and cannot load anything from a CDN.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter
from fastapi.responses import FileResponse

from api.errors import ApiError

router = APIRouter(tags=["ui"])
STATIC_DIR = (Path(__file__).parent.parent / "static").resolve()

# Explicit types: Python's mimetypes (and /etc/mime.types) differ between versions and hosts.
MEDIA_TYPES = {
    ".html": "text/html; charset=utf-8",
    ".js": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
}
HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _file(path: Path) -> FileResponse:
    return FileResponse(path, media_type=MEDIA_TYPES[path.suffix], headers=HEADERS)


@router.get("/ui", include_in_schema=False)
def dashboard() -> FileResponse:
    return _file(STATIC_DIR / "index.html")


@router.get("/ui/static/{name:path}", include_in_schema=False)
def static_file(name: str) -> FileResponse:
    path = (STATIC_DIR / name).resolve()
    # Only regular files directly inside api/static with a known type; nothing else is reachable.
    if path.parent != STATIC_DIR or path.suffix not in MEDIA_TYPES or not path.is_file():
        raise ApiError(404, "not_found", f"no static file {name!r}")
    return _file(path)
