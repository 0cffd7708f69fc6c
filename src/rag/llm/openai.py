"""OpenAI-compatible chat completions adapter for LightRAG's ``llm_model_func``.

LightRAG calls ``llm_model_func(prompt, system_prompt=..., history_messages=...,
keyword_extraction=..., stream=..., hashing_kv=..., enable_cot=..., ...)`` (see
lightrag/operate.py) and expects a ``str``, or an async iterator of text when ``stream=True``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import urlparse

import openai

from src.core.config import Settings
from src.rag.usage import current_meter, record_chat

from ..retry import LazyOpenAIClient, build_retrying

logger = logging.getLogger(__name__)


#: Chat-completions parameters forwarded from LightRAG kwargs / llm_model_kwargs; LightRAG's
#: own kwargs (hashing_kv, _priority, enable_cot, keyword_extraction, token_tracker, ...) are not.
_API_KWARGS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "logit_bias",
        "user",
        "extra_body",
        "extra_headers",
        "extra_query",
        "reasoning_effort",
        "service_tier",
        "metadata",
    }
)

_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.IGNORECASE)


def _extract_json_object(text: str) -> str:
    """Best effort: the JSON object in a reply wrapped in fences or prose (LightRAG json_repairs it)."""
    stripped = _FENCE_RE.sub("", text.strip())
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        return stripped[start : end + 1]
    return stripped


class OpenAICompatibleLLM:
    """Chat completions against any OpenAI-compatible endpoint with one shared client.

    LightRAG's bundled binding creates an ``AsyncOpenAI`` (SSL context and all, ~18 ms of CPU on
    the event loop) for every call; here one client and its connection pool serve all calls.
    """

    def __init__(self, settings: Settings) -> None:
        self.model: str = settings.llm_model
        self.base_url: str | None = settings.llm_base_url
        self._api_key = settings.llm_api_key or "not-needed"
        self._timeout = float(settings.llm_timeout_seconds)
        self._attempts = int(settings.llm_max_retries)
        self._client = LazyOpenAIClient(self.base_url, self._api_key, self._timeout)
        #: Set to False once the provider rejects response_format=json_object.
        self._json_mode = True

    async def aclose(self) -> None:
        """Close the shared HTTP connection pool (call at shutdown)."""
        await self._client.aclose()

    async def _create(self, **request: Any) -> Any:
        async for attempt in build_retrying(self._attempts):
            with attempt:
                client = await self._client.aget()
                return await client.chat.completions.create(**request)
        raise RuntimeError("unreachable")  # pragma: no cover

    async def __call__(
        self,
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        keyword_extraction: bool = False,
        stream: bool | None = False,
        **kwargs: Any,
    ) -> str | AsyncIterator[str]:
        messages: list[dict[str, Any]] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.extend(history_messages or [])
        messages.append({"role": "user", "content": prompt})

        request: dict[str, Any] = {k: v for k, v in kwargs.items() if k in _API_KWARGS and v is not None}
        dropped = sorted(k for k in kwargs if k not in _API_KWARGS)
        if dropped:
            logger.debug("not forwarding LightRAG kwargs to the LLM API: %s", dropped)
        request.update(model=self.model, messages=messages)
        if keyword_extraction and self._json_mode and "response_format" not in request:
            request["response_format"] = {"type": "json_object"}

        if stream:
            return await self._stream(request)

        try:
            response = await self._create(**request)
        except openai.BadRequestError as exc:
            if "response_format" not in request or "response_format" in kwargs:
                raise
            # Some OpenAI-compatible servers reject json_object mode: ask in plain text instead.
            logger.warning("LLM endpoint rejected response_format=json_object (%s); not using it again", exc)
            self._json_mode = False
            request.pop("response_format")
            response = await self._create(**request)

        if not response.choices:
            raise RuntimeError(f"LLM endpoint returned no choices for model {self.model!r}")
        content = response.choices[0].message.content or ""
        record_chat("llm", getattr(response, "usage", None), messages, content)
        return _extract_json_object(content) if keyword_extraction else content

    async def _stream(self, request: dict[str, Any]) -> AsyncIterator[str]:
        # Retries cover opening the stream; a failure after the first delta propagates.
        response = await self._create(**request, stream=True)
        meter = current_meter()  # the pieces are read later, outside the work's context

        async def deltas() -> AsyncIterator[str]:
            said: list[str] = []
            try:
                async for chunk in response:
                    if not chunk.choices:
                        continue
                    text = getattr(chunk.choices[0].delta, "content", None)
                    if text:
                        said.append(text)
                        yield text
            finally:
                await response.close()
                record_chat("llm", None, request["messages"], "".join(said), meter)

        return deltas()

    def describe(self) -> str:
        host = urlparse(self.base_url).netloc if self.base_url else "api.openai.com"
        return f"openai-compatible model={self.model} at {host}"

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAICompatibleLLM:
        return self  # LightRAG's asdict() deep-copies llm_model_func; share the client instead
