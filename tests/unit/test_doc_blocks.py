"""Each benchmark harness rewrites only its own block of docs/benchmarks.md."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.doc_blocks import TITLE, splice_block

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

A0, A1 = "<!-- a:start -->", "<!-- a:end -->"
B0, B1 = "<!-- b:start -->", "<!-- b:end -->"


def test_a_block_is_replaced_in_place_and_everything_around_it_stays(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    around = ("# Title\n\nintro\n\n", f"\n\nhand-written reading\n\n{B0}\nold b\n{B1}\n\ntail\n")
    out.write_text(f"{around[0]}{A0}\nold a\n{A1}{around[1]}")
    splice_block(out, f"{A0}\nnew a\nmore a\n{A1}", A0, A1)
    assert out.read_text() == f"{around[0]}{A0}\nnew a\nmore a\n{A1}{around[1]}"


def test_a_file_without_the_block_gets_it_appended_and_loses_nothing(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    out.write_text(f"# Title\n\n{B0}\nb\n{B1}\n\n\n")
    splice_block(out, f"{A0}\na\n{A1}", A0, A1)
    assert out.read_text() == f"# Title\n\n{B0}\nb\n{B1}\n\n{A0}\na\n{A1}\n"


def test_a_missing_file_starts_with_the_title(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    splice_block(out, f"{A0}\na\n{A1}", A0, A1)
    text = out.read_text()
    assert text.startswith(TITLE) and text.endswith(f"{A0}\na\n{A1}\n")
