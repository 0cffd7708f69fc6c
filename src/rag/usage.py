"""Tokens spent on the model providers, metered per unit of work (a task, a query).

Whoever starts a unit of work opens a `UsageMeter` (`metering()`); every provider call made inside
it (also in tasks spawned inside, which copy the context) adds its tokens to that meter: the
provider's own ``usage`` when the answer carries one, else the tokens counted with the tokenizer.
The offline stand-ins (extractive LLM, OCR, local embeddings) record nothing: they cost nothing,
and a count of their "tokens" would suggest a bill that does not exist.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import asdict, dataclass, fields
from typing import Any

log = logging.getLogger(__name__)

_METER: ContextVar[UsageMeter | None] = ContextVar("ragsvc_usage_meter", default=None)


@dataclass
class UsageMeter:
    """Tokens and calls of one unit of work, per kind of provider call (mutable, shared by the
    tasks the work spawns)."""

    llm_calls: int = 0
    llm_input_tokens: int = 0
    llm_output_tokens: int = 0
    vision_calls: int = 0
    vision_input_tokens: int = 0
    vision_output_tokens: int = 0
    embedding_calls: int = 0
    embedding_tokens: int = 0

    @property
    def total_tokens(self) -> int:
        return (
            self.llm_input_tokens
            + self.llm_output_tokens
            + self.vision_input_tokens
            + self.vision_output_tokens
            + self.embedding_tokens
        )

    def as_dict(self) -> dict[str, int]:
        return {**asdict(self), "total_tokens": self.total_tokens}

    def add(self, other: UsageMeter) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))


@contextlib.contextmanager
def metering() -> Iterator[UsageMeter]:
    """A fresh meter for the provider calls made inside."""
    meter = UsageMeter()
    token = _METER.set(meter)
    try:
        yield meter
    finally:
        _METER.reset(token)


def split_usage(spent: UsageMeter, meters: list[UsageMeter | None]) -> None:
    """Add ``spent`` (work done for several units at once, e.g. one merge of several documents) to
    their ``meters`` in equal parts; the remainder of each count goes to the first ones, so the
    parts add up exactly. Units without a meter get nothing (their part is lost, as it would be
    had they spent it alone)."""
    if not meters:
        return
    n = len(meters)
    for f in fields(spent):
        total = getattr(spent, f.name)
        share, rest = divmod(total, n)
        for i, meter in enumerate(meters):
            if meter is not None:
                setattr(meter, f.name, getattr(meter, f.name) + share + (1 if i < rest else 0))


def current_meter() -> UsageMeter | None:
    """The meter of the work running here (None outside any): a stream captures it when it opens,
    since its pieces are read later, elsewhere."""
    return _METER.get()


_encoding: Any = None


def count_tokens(text: str) -> int:
    """Tokens of ``text`` with the service's tokenizer (tiktoken o200k_base, seeded offline at
    start-up); for providers that do not report their usage."""
    global _encoding
    if not text:
        return 0
    if _encoding is None:
        import tiktoken

        from src.rag.tokenizer import ENCODING_NAME

        _encoding = tiktoken.get_encoding(ENCODING_NAME)
    return len(_encoding.encode(text, disallowed_special=()))


def message_text(messages: list[dict[str, Any]]) -> str:
    """The text of chat messages (a picture part counts as nothing here)."""
    parts: list[str] = []
    for m in messages:
        content = m.get("content")
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts.extend(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return "\n".join(parts)


def record_chat(
    kind: str,
    usage: Any,
    messages: list[dict[str, Any]],
    answer: str,
    meter: UsageMeter | None = None,
) -> None:
    """One chat call (``kind``: "llm" or "vision"): the provider's ``usage`` (prompt_tokens,
    completion_tokens) when given, else counted."""
    meter = meter or _METER.get()
    if meter is None:
        return
    prompt = getattr(usage, "prompt_tokens", None) if usage is not None else None
    completion = getattr(usage, "completion_tokens", None) if usage is not None else None
    if prompt is None:
        prompt = count_tokens(message_text(messages))
    if completion is None:
        completion = count_tokens(answer)
    setattr(meter, f"{kind}_calls", getattr(meter, f"{kind}_calls") + 1)
    setattr(meter, f"{kind}_input_tokens", getattr(meter, f"{kind}_input_tokens") + int(prompt))
    setattr(meter, f"{kind}_output_tokens", getattr(meter, f"{kind}_output_tokens") + int(completion))


def record_embedding(usage: Any, texts: list[str]) -> None:
    """One embedding call: the provider's ``usage.prompt_tokens`` when given, else counted."""
    meter = _METER.get()
    if meter is None:
        return
    tokens = getattr(usage, "prompt_tokens", None) if usage is not None else None
    if tokens is None:
        tokens = sum(count_tokens(t) for t in texts)
    meter.embedding_calls += 1
    meter.embedding_tokens += int(tokens)
