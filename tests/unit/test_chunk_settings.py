"""Chunking settings: LightRAG Server's names are understood, and an overlap that would never let
the chunker advance is refused at start-up with a message naming both variables."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from src.core.config import Settings

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]


def test_lightrag_server_chunk_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHUNK_SIZE", "300")
    monkeypatch.setenv("CHUNK_OVERLAP_SIZE", "30")
    settings = Settings(_env_file=None)
    assert (settings.chunk_token_size, settings.chunk_overlap_token_size) == (300, 30)


@pytest.mark.parametrize(("size", "overlap"), [("100", "100"), ("100", "150")])
def test_overlap_not_below_size_is_refused(monkeypatch: pytest.MonkeyPatch, size: str, overlap: str) -> None:
    monkeypatch.setenv("CHUNK_SIZE", size)
    monkeypatch.setenv("CHUNK_OVERLAP_SIZE", overlap)
    with pytest.raises(ValidationError, match="CHUNK_OVERLAP_SIZE .* must be below CHUNK_SIZE"):
        Settings(_env_file=None)
