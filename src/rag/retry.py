"""Retry policy shared by the OpenAI-compatible LLM and embedding clients.

Transient failures (429, 408, 409, 5xx, timeouts, dropped connections) are retried with
jittered exponential backoff, honouring a server's ``Retry-After``; permanent ones
(400/401/403/404/422 ...) raise at once so a task fails fast with the provider's message.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
from typing import Any

import openai
import tenacity

logger = logging.getLogger(__name__)

TRANSIENT_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 520, 522, 524, 529})
#: Upper bound of one backoff sleep and of a honoured Retry-After, in seconds.
MAX_BACKOFF_SECONDS = 30.0


def is_transient_error(exc: BaseException) -> bool:
    """True when repeating the same request later may succeed."""
    if isinstance(exc, (openai.APITimeoutError, openai.APIConnectionError)):
        return True
    if isinstance(exc, openai.APIStatusError):
        return exc.status_code in TRANSIENT_STATUS or exc.status_code >= 500
    return isinstance(exc, (TimeoutError, ConnectionError))


def _retry_after_seconds(exc: BaseException | None) -> float | None:
    response = getattr(exc, "response", None)
    headers = getattr(response, "headers", None)
    if not headers:
        return None
    value = headers.get("retry-after-ms")
    try:
        if value is not None:
            return float(value) / 1000.0
        value = headers.get("retry-after")
        return float(value) if value is not None else None
    except (TypeError, ValueError):
        return None  # an HTTP date: fall back to our own backoff


def _wait(retry_state: tenacity.RetryCallState) -> float:
    """Full-jitter exponential backoff (0.5 s, 1 s, 2 s ... capped), or the server's Retry-After."""
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    hinted = _retry_after_seconds(exc)
    if hinted is not None and hinted >= 0:
        return min(hinted, MAX_BACKOFF_SECONDS) + random.uniform(0, 0.25)
    ceiling = min(MAX_BACKOFF_SECONDS, 0.5 * (2 ** (retry_state.attempt_number - 1)))
    return random.uniform(ceiling / 2, ceiling)


def _log_retry(retry_state: tenacity.RetryCallState) -> None:
    exc = retry_state.outcome.exception() if retry_state.outcome else None
    logger.warning(
        "transient provider error (attempt %d), retrying in %.1fs: %s",
        retry_state.attempt_number,
        retry_state.next_action.sleep if retry_state.next_action else 0.0,
        exc,
    )


def build_retrying(attempts: int, **overrides: Any) -> tenacity.AsyncRetrying:
    """An ``AsyncRetrying`` making at most ``attempts`` attempts (at least one) in total."""
    options: dict[str, Any] = {
        "stop": tenacity.stop_after_attempt(max(1, int(attempts))),
        "wait": _wait,
        "retry": tenacity.retry_if_exception(is_transient_error),
        "before_sleep": _log_retry,
        "reraise": True,
    }
    options.update(overrides)
    return tenacity.AsyncRetrying(**options)


class LazyOpenAIClient:
    """One shared ``openai.AsyncOpenAI`` per provider, built on first use (thread-safe).

    Sharing it avoids LightRAG's per-call client construction (an SSL context each time);
    ``max_retries=0`` because retries are ours (``build_retrying``), not the SDK's. The async
    paths build it with ``aget``, in a thread: loading the CA bundle for its SSL context takes
    ~20 ms of CPU, which stalled the event loop at each provider's first call.
    """

    def __init__(self, base_url: str | None, api_key: str | None, timeout: float):
        self.base_url = base_url
        self._api_key = api_key
        self._timeout = timeout
        self._client: Any = None
        self._lock = threading.Lock()

    def get(self) -> Any:
        if self._client is None:
            with self._lock:
                if self._client is None:
                    self._client = openai.AsyncOpenAI(
                        base_url=self.base_url, api_key=self._api_key, timeout=self._timeout, max_retries=0
                    )
        return self._client

    async def aget(self) -> Any:
        """``get`` without building the client on the event loop."""
        if self._client is None:
            return await asyncio.to_thread(self.get)
        return self._client

    def set(self, client: Any) -> None:
        """Use a ready client (e.g. one with a custom ``http_client``) instead of building one."""
        self._client = client

    async def aclose(self) -> None:
        if self._client is not None:
            await self._client.close()
            self._client = None
