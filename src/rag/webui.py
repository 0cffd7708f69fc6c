"""LightRAG's WebUI, served from the installed lightrag-hku package (nothing downloaded), pointed at
our LightRAG-compatible API.

The built app (``lightrag/api/webui``: index.html and ``assets/``) expects to live at ``/webui/`` and
sends its API requests to the server root (axios ``baseURL: ``; ``fetch(`/query/stream`)``). Our
root paths are our own API, so the bundle's requests are re-pointed to the compatibility mount
(``/lightrag``) when it is served: a handful of string replacements, checked against the installed
bundle (`PATCHES`, each with the number of places it must change; tests/test_lightrag_contract.py).
A release that builds the app differently fails that check instead of sending requests astray.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass, field
from pathlib import Path

#: (what the bundle says, what we serve instead, how many times it must occur).
PATCHES: tuple[tuple[bytes, bytes, int], ...] = (
    (b"baseURL:``", b"baseURL:`/lightrag`", 2),
    (b"fetch(`/query/stream`", b"fetch(`/lightrag/query/stream`", 2),
)


class WebUiUnavailable(RuntimeError):
    """The installed lightrag-hku has no built WebUI, or one these patches do not fit."""


def webui_dir() -> Path:
    """Where the installed lightrag-hku keeps its built WebUI (found without importing LightRAG)."""
    spec = importlib.util.find_spec("lightrag")
    if spec is None or not spec.submodule_search_locations:
        raise WebUiUnavailable("lightrag-hku is not installed")
    return Path(next(iter(spec.submodule_search_locations))) / "api" / "webui"


def swagger_ui_dir() -> Path:
    """Swagger UI's script, stylesheet and icon as shipped in lightrag-hku (``api/static/swagger-ui``):
    our ``/docs`` page serves them, so it works offline instead of loading them from a CDN."""
    return webui_dir().parent / "static" / "swagger-ui"


@dataclass
class WebUiBundle:
    """The WebUI's files; the scripts that talk to the API, patched (built once, off the loop)."""

    root: Path
    patched: dict[str, bytes] = field(default_factory=dict)

    @classmethod
    def load(cls, root: Path | None = None) -> WebUiBundle:
        """Read and patch the bundle (blocking: call in a thread)."""
        root = root or webui_dir()
        if not (root / "index.html").is_file():
            raise WebUiUnavailable(f"no built WebUI in the installed lightrag-hku ({root.name}/index.html)")
        found = dict.fromkeys((old for old, _, _ in PATCHES), 0)
        patched: dict[str, bytes] = {}
        for script in sorted((root / "assets").glob("*.js")):
            data = script.read_bytes()
            changed = data
            for old, new, _ in PATCHES:
                if old in changed:
                    found[old] += changed.count(old)
                    changed = changed.replace(old, new)
            if changed is not data:
                patched[script.name] = changed
        wrong = {old.decode(): n for old, _, want in PATCHES if (n := found[old]) != want}
        if wrong:
            raise WebUiUnavailable(f"the installed WebUI does not fit our patches (occurrences: {wrong})")
        return cls(root, patched)

    def file(self, relative: str) -> Path | None:
        """A file of the bundle by its path under /webui/, or None (also for anything outside it)."""
        candidate = (self.root / relative).resolve()
        if not candidate.is_relative_to(self.root.resolve()) or not candidate.is_file():
            return None
        return candidate
