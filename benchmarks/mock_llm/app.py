"""The FastAPI app of the mock: OpenAI-compatible routes and the /_mock control routes."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import ValidationError

from src.rag.prompts import KINDS

from .answers import (
    _STREAM_PIECE_RE,
    _approx_tokens,
    _message_text,
    chat_answer,
    classify_request,
    embed_vector,
)
from .config import MockConfig
from .state import MockState, _error_payload, _json_response
from .vision import all_text, as_json, image_parts, record, vision_answer

# ----------------------------------------------------------------------------------------------
# app
# ----------------------------------------------------------------------------------------------


def _sse(payload: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"
    )


def _stream_pieces(content: str, words: int) -> list[str]:
    parts = _STREAM_PIECE_RE.findall(content)
    return ["".join(parts[i : i + words]) for i in range(0, len(parts), words)] or [content]


def create_mock_app(config: MockConfig | None = None) -> FastAPI:
    """Build a fresh mock app; its state is ``app.state.mock`` (a ``MockState``)."""
    state = MockState(config or MockConfig())
    app = FastAPI(title="mock-openai", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.mock = state
    seq = {"n": 0}

    def next_id(prefix: str) -> str:
        seq["n"] += 1
        return f"{prefix}-mock-{seq['n']:08d}"

    def check_auth(request: Request, cfg: MockConfig) -> Response | None:
        if cfg.api_key is None:
            return None
        if request.headers.get("authorization", "") == f"Bearer {cfg.api_key}":
            return None
        state.auth_failures += 1
        return _json_response(
            _error_payload("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), 401
        )

    async def read_json(request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            state.bad_requests += 1
            return _json_response(
                _error_payload("Request body must be a JSON object.", "invalid_request_error", None), 400
            )
        return body

    async def fault_response(endpoint: str, cfg: MockConfig, started: float) -> Response | None:
        """Apply hang / injected errors. Caller holds the in-flight slot."""
        fault, hang = state.draw_fault(endpoint, cfg)
        if hang:
            state.hangs += 1
            await asyncio.sleep(cfg.hang_seconds)
        if fault is None:
            return None
        if cfg.error_latency:
            await asyncio.sleep(cfg.error_latency)
        permanent = fault == "permanent"
        status = cfg.permanent_error_status if permanent else cfg.error_status
        resp = state.error_response(status, permanent, cfg)
        state.record(endpoint, status, started, fault=fault)
        return resp

    # --- OpenAI surface -----------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        state.calls["chat"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            state.bad_requests += 1
            return _json_response(
                _error_payload(
                    "'messages' must be a non-empty array.", "invalid_request_error", None, "messages"
                ),
                400,
            )
        stream = bool(body.get("stream"))
        state.enter()
        handed_off = False
        try:
            err = await fault_response("chat", cfg, started)
            if err is not None:
                return err
            images = image_parts(body["messages"])
            held_as = "vision" if images else classify_request(body["messages"], body.get("response_format"))
            await state.wait_if_held(held_as)
            delay = state.call_latency("vision" if images else "chat", cfg)
            if delay > 0:
                await asyncio.sleep(delay)
            if images:
                text = all_text(body["messages"])
                record(state.vision_requests, text, images)
                kind, content = "vision", vision_answer(text, images)
            else:
                kind, content = chat_answer(body, cfg)
            state.kinds[kind] = state.kinds.get(kind, 0) + 1
            state.chat_requests.append({"kind": kind, "messages": body["messages"]})
            model = str(body.get("model") or cfg.model)
            cid = next_id("chatcmpl")
            created = int(time.time())
            prompt_tokens = sum(
                _approx_tokens(_message_text(m.get("content")))
                for m in body["messages"]
                if isinstance(m, dict)
            )
            completion_tokens = _approx_tokens(content)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            state.tokens["prompt"] += prompt_tokens
            state.tokens["completion"] += completion_tokens
            if not stream:
                state.record("chat", 200, started, kind=kind)
                return _json_response(
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "mock",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content, "refusal": None},
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )

            state.streams += 1
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            pieces = _stream_pieces(content, cfg.stream_chunk_words)
            chunk_delay = cfg.stream_chunk_delay
            released = {"done": False}

            def release() -> None:
                if not released["done"]:
                    released["done"] = True
                    state.leave()
                    state.record("chat", 200, started, kind=kind, stream=True)

            async def events():
                base = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "mock",
                }
                try:
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                    for piece in pieces:
                        if chunk_delay:
                            await asyncio.sleep(chunk_delay)
                        yield _sse(
                            {
                                **base,
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {"content": piece},
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ],
                            }
                        )
                    yield _sse(
                        {
                            **base,
                            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                        }
                    )
                    if include_usage:
                        yield _sse({**base, "choices": [], "usage": usage})
                    yield b"data: [DONE]\n\n"
                finally:
                    release()

            handed_off = True
            return StreamingResponse(
                events(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        finally:
            if not handed_off:
                state.leave()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        state.calls["embeddings"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        raw = body.get("input")
        inputs: list[str | list[int]]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [raw]  # one pre-tokenised input
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = raw
        else:
            state.bad_requests += 1
            return _json_response(
                _error_payload(
                    "'input' must be a string, an array of strings or an array of token arrays, "
                    "and must not be empty.",
                    "invalid_request_error",
                    None,
                    "input",
                ),
                400,
            )
        dim = body.get("dimensions") or cfg.embedding_dim
        if not isinstance(dim, int) or dim < 1 or dim > 65536:
            state.bad_requests += 1
            return _json_response(
                _error_payload("'dimensions' must be a positive integer.", "invalid_request_error", None),
                400,
            )
        use_b64 = body.get("encoding_format") == "base64"
        state.enter()
        try:
            err = await fault_response("embeddings", cfg, started)
            if err is not None:
                return err
            await state.wait_if_held("embeddings")
            delay = state.call_latency("embeddings", cfg)
            if delay > 0:
                await asyncio.sleep(delay)
            data = []
            tokens = 0
            for i, item in enumerate(inputs):
                vec = embed_vector(item, dim)
                tokens += len(item) if isinstance(item, list) else _approx_tokens(item)
                emb: Any = (
                    base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii") if use_b64 else vec.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": emb})
            state.embedding_inputs += len(inputs)
            state.tokens["embedding"] += tokens
            state.record("embeddings", 200, started, inputs=len(inputs))
            return _json_response(
                {
                    "object": "list",
                    "data": data,
                    "model": str(body.get("model") or cfg.embedding_model),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        finally:
            state.leave()

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        state.calls["models"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        return _json_response(
            {
                "object": "list",
                "data": [
                    {"id": cfg.model, "object": "model", "created": 0, "owned_by": "mock"},
                    {"id": cfg.embedding_model, "object": "model", "created": 0, "owned_by": "mock"},
                ],
            }
        )

    # --- control ------------------------------------------------------------------------------
    @app.post("/v1/rerank")
    async def rerank(request: Request) -> Response:
        """Jina/Cohere's rerank API: a document scores 1.0 when it contains every word (4+ letters)
        of the query, else 0.1 - so a reranker's effect is visible in what a query retrieves."""
        state.calls["rerank"] += 1
        denied = check_auth(request, state.config)
        if denied is not None:
            return denied
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        query, documents = str(body.get("query") or ""), body.get("documents") or []
        words = [w for w in query.lower().split() if len(w) >= 4 and w.isalpha()]
        scored = [
            {"index": i, "relevance_score": 1.0 if all(w in str(d).lower() for w in words) else 0.1}
            for i, d in enumerate(documents)
        ]
        scored.sort(key=lambda r: -r["relevance_score"])
        top_n = body.get("top_n")
        return _json_response({"results": scored[: int(top_n)] if top_n else scored})

    @app.get("/_mock/chats")
    async def chats() -> Response:
        return _json_response(list(state.chat_requests))

    @app.get("/_mock/health")
    async def health() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/_mock/stats")
    async def stats(include_calls: bool = False) -> Response:
        return _json_response(state.snapshot(include_calls=include_calls))

    @app.get("/_mock/config")
    async def get_config() -> Response:
        return _json_response(state.config.model_dump())

    @app.post("/_mock/config")
    async def set_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return _json_response({"detail": "body must be a JSON object of MockConfig fields"}, 400)
        try:
            new = state.update_config(changes)
        except ValidationError as exc:
            return _json_response({"detail": json.loads(exc.json())}, 422)
        return _json_response(new.model_dump())

    @app.get("/_mock/vision")
    async def vision_requests() -> Response:
        """The requests that carried images: their text and image bytes (base64)."""
        return _json_response(as_json(state.vision_requests))

    @app.post("/_mock/hold")
    async def hold(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        kinds = body.get("kinds") if isinstance(body, dict) else None
        allowed = {*KINDS, "vision", "embeddings"}
        if not isinstance(kinds, list) or not kinds or not set(kinds) <= allowed:
            detail = f"body must be {{'kinds': [...]}} with kinds from {sorted(allowed)}"
            return _json_response({"detail": detail}, 400)
        state.hold(frozenset(kinds))
        return _json_response({"hold_kinds": sorted(state.hold_kinds), "held": state.held})

    @app.post("/_mock/release")
    async def release(request: Request) -> Response:
        """Every held call (no body), or only those of ``{"kinds": [...]}``, which are held no more."""
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        kinds = body.get("kinds") if isinstance(body, dict) else None
        if not isinstance(body, dict) or (kinds is not None and not isinstance(kinds, list)):
            return _json_response({"detail": "body must be empty or {'kinds': [...]}"}, 400)
        released = state.release(None if kinds is None else frozenset(kinds))
        return _json_response({"released": released})

    @app.post("/_mock/reset")
    async def reset(restore_config: bool = False) -> Response:
        state.reset(restore_config=restore_config)
        return _json_response({"status": "reset", "config": state.config.model_dump()})

    return app
