"""LightRAG Server's HTTP API, mounted under ``/lightrag``: its exact paths and shapes over our
services, so a LightRAG Server client (or LightRAG's own WebUI, served at ``/webui``) changes only
its base URL.

Every route here is tenant-scoped like the rest of the API: an API key (``X-API-Key`` or
``Authorization: Bearer``) or a session token from ``/lightrag/login`` names the tenant, whose
workspace the route reads and writes. Uploads become tasks of our engine (durable, cancellable,
prioritised); a ``track_id`` is a task id (one document) or a batch id (several).
"""

from __future__ import annotations

from fastapi import APIRouter

from api.lightrag import auth, documents, graph, health, ollama, query
from api.lightrag.mount import PREFIX

__all__ = ["PREFIX", "ollama_root_router", "router"]

router = APIRouter()
for module in (auth, documents, query, graph, health, ollama):
    router.include_router(module.router)

#: The Ollama-compatible routes at the service root too (``/api/chat``, ...), where Ollama clients look.
ollama_root_router = ollama.root_router
