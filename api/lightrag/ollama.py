"""LightRAG Server's Ollama-compatible chat API (``/lightrag/api/...``): chat front-ends such as
Open WebUI, or any Ollama client pointed at ``http://host:port/lightrag``, talk to the tenant's
knowledge base as if it were an Ollama model.

As in LightRAG Server: `/api/chat` answers the last user message from the knowledge base (the
earlier messages are the conversation history; a ``/local``, ``/global``, ``/naive``, ``/hybrid``,
``/mix`` or ``/bypass`` prefix picks the mode, ``/context`` and ``/<mode>context`` ask for the
retrieved context, ``/<mode>[instructions]`` adds a user prompt); `/api/generate` and Open WebUI's
own title/tag requests go to the LLM without retrieval (mode ``bypass``). Streams are NDJSON, one
object per piece and a final ``done`` object with token counts. Errors keep our JSON shape.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, Field

from api.body_limits import BoundedJsonRoute
from api.deps import ServicesDep
from api.errors import ApiError
from api.lightrag.auth import CompatTenantDep
from api.lightrag.mount import PREFIX
from api.routes.query import query_spec
from api.schemas import (
    MAX_HISTORY_MESSAGES,
    MAX_MESSAGE_CHARS,
    MAX_USER_PROMPT_CHARS,
    ChatMessage,
    QueryOptions,
)
from src.rag.errors import ProviderError
from src.rag.knowledge import QueryMode, QuerySpec

router = APIRouter(prefix=f"{PREFIX}/api", tags=["lightrag: ollama"], route_class=BoundedJsonRoute)

#: What LightRAG Server answers for /api/version (the Ollama release its shapes follow).
OLLAMA_VERSION = "0.9.3"
MODEL_SIZE = 7365960935
CREATED_AT = "2024-01-15T00:00:00Z"
DIGEST = "sha256:lightrag"
#: Open WebUI's title / tag generation requests: answered by the LLM, not from the knowledge base.
_OPEN_WEBUI_TASK = re.compile(r"\n<chat_history>\nUSER:")
_BRACKET = re.compile(r"^/([a-z]*)\[(.*?)\](.*)", re.S)
#: Prefix -> (mode, only the context); longest prefixes first so "/mixcontext" is not "/mix".
_PREFIXES: tuple[tuple[str, QueryMode, bool], ...] = (
    ("/localcontext", QueryMode.LOCAL, True),
    ("/globalcontext", QueryMode.GLOBAL, True),
    ("/hybridcontext", QueryMode.HYBRID, True),
    ("/naivecontext", QueryMode.NAIVE, True),
    ("/mixcontext", QueryMode.MIX, True),
    ("/context", QueryMode.MIX, True),
    ("/local ", QueryMode.LOCAL, False),
    ("/global ", QueryMode.GLOBAL, False),
    ("/naive ", QueryMode.NAIVE, False),
    ("/hybrid ", QueryMode.HYBRID, False),
    ("/mix ", QueryMode.MIX, False),
    ("/bypass ", QueryMode.BYPASS, False),
)


class OllamaMessage(BaseModel):
    role: str = Field(max_length=20)
    content: str = Field(default="", max_length=MAX_MESSAGE_CHARS)
    images: list[str] | None = None


class OllamaChatRequest(BaseModel):
    model: str = Field(default="", max_length=200)
    messages: list[OllamaMessage] = Field(min_length=1, max_length=MAX_HISTORY_MESSAGES + 1)
    stream: bool = True
    options: dict[str, Any] | None = None
    system: str | None = Field(default=None, max_length=MAX_USER_PROMPT_CHARS)


class OllamaGenerateRequest(BaseModel):
    model: str = Field(default="", max_length=200)
    prompt: str = Field(min_length=1, max_length=MAX_MESSAGE_CHARS)
    system: str | None = Field(default=None, max_length=MAX_USER_PROMPT_CHARS)
    stream: bool = False
    options: dict[str, Any] | None = None


def parse_query_mode(query: str) -> tuple[str, QueryMode, bool, str | None]:
    """LightRAG Server's prefixes: (question, mode, only the context, user prompt)."""
    user_prompt = None
    bracket = _BRACKET.match(query)
    if bracket:
        user_prompt = bracket.group(2)
        query = f"/{bracket.group(1)} {bracket.group(3).lstrip()}".strip()
    for prefix, mode, context_only in _PREFIXES:
        if query.startswith(prefix):
            return query[len(prefix) :].lstrip(), mode, context_only, user_prompt
    if query == "/" or (bracket and query.startswith("/ ")):
        query = query[1:].lstrip()
    return query, QueryMode.MIX, False, user_prompt


def _model(services: ServicesDep) -> str:
    settings = services.settings
    return f"{settings.ollama_emulating_model_name}:{settings.ollama_emulating_model_tag}"


def _count(text: str) -> int:
    """Tokens as Ollama reports them: an estimate (whitespace-separated pieces, CJK characters)."""
    return len(re.findall(r"[\u3400-\u9fff]|[^\s\u3400-\u9fff]+", text))


def _history(messages: list[OllamaMessage], system: str | None) -> list[ChatMessage]:
    history = [ChatMessage(role="system", content=system)] if system else []
    for m in messages:
        if m.role not in ("user", "assistant", "system"):
            raise ApiError(400, "invalid_chat", f"unknown message role '{m.role}'")
        history.append(ChatMessage(role=m.role, content=m.content))
    return history


def _spec(text: str, mode: QueryMode, context_only: bool, prompt: str | None, history: list) -> QuerySpec:
    if not text.strip():
        raise ApiError(400, "invalid_chat", "the message is empty")
    options = QueryOptions(
        only_need_context=context_only,
        user_prompt=prompt,
        conversation_history=history[-MAX_HISTORY_MESSAGES:],
    )
    return query_spec(text.strip(), mode.value, options)


def _final(model: str, started: int, prompt: str, answer: str, **shape: Any) -> dict[str, Any]:
    total = time.time_ns() - started
    return {
        "model": model,
        "created_at": CREATED_AT,
        **shape,
        "done_reason": "stop",
        "done": True,
        "total_duration": total,
        "load_duration": 0,
        "prompt_eval_count": _count(prompt),
        "prompt_eval_duration": 0,
        "eval_count": _count(answer),
        "eval_duration": total,
    }


async def _ndjson(
    services: ServicesDep, tenant: str, spec: QuerySpec, images: list[str] | None, shape: str, model: str
) -> AsyncIterator[bytes]:
    """The answer streamed as Ollama's NDJSON (``shape``: "message" for chat, "response" for
    generate). The query starts before the status line, so a refusal is still a 4xx."""
    started = time.time_ns()
    answer = await services.knowledge.query_stream(tenant, spec, images)

    def piece(text: str) -> dict[str, Any]:
        if shape == "message":
            return {"message": {"role": "assistant", "content": text, "images": None}}
        return {"response": text}

    async def lines() -> AsyncIterator[bytes]:
        said: list[str] = []
        try:
            async for text in answer.pieces:
                said.append(text)
                line = {"model": model, "created_at": CREATED_AT, **piece(text), "done": False}
                yield (json.dumps(line, ensure_ascii=False) + "\n").encode()
        except ProviderError as exc:  # the status line is gone already: report in-band
            yield (json.dumps({"error": exc.message}, ensure_ascii=False) + "\n").encode()
            return
        finally:
            await answer.pieces.aclose()  # gives the tenant's engine back even if the client went away
        final = _final(model, started, spec.text, "".join(said), **piece(""))
        yield (json.dumps(final, ensure_ascii=False) + "\n").encode()

    return lines()


def _streaming(body: AsyncIterator[bytes]) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(body, media_type="application/x-ndjson", headers=headers)


@router.get("/version", summary="Ollama: the version of the API emulated")
async def version(tenant: CompatTenantDep) -> dict[str, str]:
    return {"version": OLLAMA_VERSION}


def _details(family: str, parameters: str) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": family,
        "families": [family],
        "parameter_size": parameters,
        "quantization_level": "Q4_0",
    }


@router.get("/tags", summary="Ollama: the one model, the tenant's knowledge base")
async def tags(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    name = _model(services)
    family = services.settings.ollama_emulating_model_name
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "modified_at": CREATED_AT,
                "size": MODEL_SIZE,
                "digest": DIGEST,
                "details": _details(family, "13B"),
            }
        ]
    }


@router.get("/ps", summary="Ollama: the running model")
async def ps(tenant: CompatTenantDep, services: ServicesDep) -> dict[str, Any]:
    name = _model(services)
    return {
        "models": [
            {
                "name": name,
                "model": name,
                "size": MODEL_SIZE,
                "digest": DIGEST,
                "details": _details("llama", "7.2B"),
                "expires_at": "2050-12-31T14:38:31.83753-07:00",
                "size_vram": MODEL_SIZE,
            }
        ]
    }


@router.post("/generate", summary="Ollama: a completion by the LLM (no retrieval, like LightRAG Server)")
async def generate(body: OllamaGenerateRequest, tenant: CompatTenantDep, services: ServicesDep) -> Any:
    model = _model(services)
    spec = _spec(body.prompt, QueryMode.BYPASS, False, None, _history([], body.system))
    if body.stream:
        return _streaming(await _ndjson(services, tenant, spec, None, "response", model))
    started = time.time_ns()
    result = await services.knowledge.query(tenant, spec)
    answer = result.response or ""
    return _final(model, started, body.prompt, answer, response=answer, context=[])


@router.post("/chat", summary="Ollama: chat with the knowledge base (mode prefixes as LightRAG Server's)")
async def chat(body: OllamaChatRequest, tenant: CompatTenantDep, services: ServicesDep) -> Any:
    model = _model(services)
    last = body.messages[-1]
    if last.role != "user":
        raise ApiError(400, "invalid_chat", "the last message must be from the user role")
    text, mode, context_only, prompt = parse_query_mode(last.content)
    if _OPEN_WEBUI_TASK.search(text):
        mode = QueryMode.BYPASS
    spec = _spec(text, mode, context_only, prompt, _history(body.messages[:-1], body.system))
    images = last.images or None
    if body.stream:
        return _streaming(await _ndjson(services, tenant, spec, images, "message", model))
    started = time.time_ns()
    result = await services.knowledge.query(tenant, spec, images)
    answer = result.response or "No response generated"
    message = {"role": "assistant", "content": answer, "images": None}
    return _final(model, started, text, answer, message=message)


def _at_root() -> APIRouter:
    """The same routes at ``/api/...``, where LightRAG Server serves them: an Ollama client (Open
    WebUI's "Ollama URL") pointed at this service's root works as it did against LightRAG Server.
    Our own ``/api/queue/stats`` does not collide. Same handlers, same tenant scoping."""
    root = APIRouter(prefix="/api", tags=["ollama (LightRAG Server's paths)"], route_class=BoundedJsonRoute)
    for route in router.routes:
        root.add_api_route(
            route.path.removeprefix(router.prefix),
            route.endpoint,
            methods=sorted(route.methods),
            summary=route.summary,
            include_in_schema=route.include_in_schema,
        )
    return root


#: Mounted at the service root by main.py.
root_router = _at_root()
