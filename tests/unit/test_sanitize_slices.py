"""A big document's text is cleaned slice by slice (issue 25 item 8): one regex pass over a 99 MB
text held the GIL, and with it the event loop, for about a second (the upload's control-character
count likewise). The result must be exactly what LightRAG's `sanitize_text_for_encoding` gives for
the whole text."""

from __future__ import annotations

import random

import pytest

from src.rag.engine import indexer

pytestmark = [pytest.mark.unit, pytest.mark.timeout(60)]
PIECES = [
    "word", " ", "  ", "\n", "\r\n", "\t", "中文", "&amp;", "&lt;", "&#65;", "&#x41;", "&amp", "&copy",
    "&", ";", "\ud800", "\udfff", "\ufffe", "\x00", "\x0b", "\x0c", "\x1f", "\x7f", "\x85", "é",
]  # fmt: skip


@pytest.mark.parametrize("seed", range(40))
def test_slices_give_exactly_the_whole_texts_cleaning(seed: int) -> None:
    """Catches a slice boundary that changes the text: whitespace stripped at a cut, an HTML entity
    cut in two, a control character kept."""
    rnd = random.Random(seed)
    text = "".join(rnd.choice(PIECES) for _ in range(rnd.randint(50, 400)))
    expected = indexer.sanitize_text_for_encoding(text)
    for slice_chars in (1, 7, 50):
        assert indexer.sanitized(text, slice_chars) == expected, (seed, slice_chars)


def test_each_call_cleans_about_one_slice(monkeypatch) -> None:
    """Catches the big text going through in one call again (or slices growing unbounded)."""
    sizes: list[int] = []
    clean = indexer.sanitize_text_for_encoding

    def recorded(text: str) -> str:
        sizes.append(len(text))
        return clean(text)

    monkeypatch.setattr(indexer, "sanitize_text_for_encoding", recorded)
    text = "a line of text &amp; more\n" * 40_000  # ~1 MB
    assert indexer.sanitized(text, 64 * 1024) == clean(text)
    assert len(sizes) >= 15 and max(sizes) <= 64 * 1024 + 30, (len(sizes), max(sizes))


def test_control_characters_are_counted_alike_in_slices(monkeypatch) -> None:
    """Catches a slice boundary that loses or doubles a control character in the upload's text check."""
    from src.rag import text_decoding

    rnd = random.Random(7)
    text = "".join(rnd.choice(["a", "\x01", "\x0b", "\n", "中", "\x7f"]) for _ in range(5000))
    whole = len(text_decoding._CONTROL_RE.findall(text))
    monkeypatch.setattr(text_decoding, "_SCAN_SLICE", 7)
    assert text_decoding._control_characters(text) == whole
