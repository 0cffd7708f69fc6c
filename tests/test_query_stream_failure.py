"""A streamed answer whose provider fails after the first piece: the 200 status line is gone, so the
failure is reported in-band as the stream's last NDJSON line (LightRAG Server's format), and the
tenant's engine is given back."""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator

import pytest

from api.routes.query import ndjson_lines
from src.rag.errors import ProviderError
from src.rag.knowledge import StreamedAnswer

pytestmark = [pytest.mark.integration, pytest.mark.timeout(30)]


async def test_a_failure_after_the_first_piece_ends_the_stream_with_an_error_line() -> None:
    """Catches a mid-stream provider failure that cuts the stream without a word (the client would
    take a partial answer for a whole one) or escapes as an exception after the status line was sent,
    and a stream that keeps the tenant's engine (its generator never closed)."""
    closed: list[bool] = []

    async def pieces() -> AsyncGenerator[str, None]:
        try:
            yield "The first piece."
            raise ProviderError("RateLimitError: 429 after the first piece")
        finally:
            closed.append(True)

    answer = StreamedAnswer(references=(), pieces=pieces())
    lines = [json.loads(line) async for line in ndjson_lines(answer, include_references=True)]
    assert lines == [
        {"references": []},
        {"response": "The first piece."},
        {"error": "RateLimitError: 429 after the first piece"},
    ]
    assert closed == [True]
