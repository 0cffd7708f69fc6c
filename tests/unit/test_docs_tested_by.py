"""The "tested by" tables of docs/reliability.md and docs/security.md must name tests that exist."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

ROOT = Path(__file__).resolve().parents[2]
DOCS = ("docs/reliability.md", "docs/security.md")
REFERENCE = re.compile(r"`(tests/[\w/]+\.py)?::(test_\w+)`")


def defined_names(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {n.name for n in tree.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}


@pytest.mark.parametrize("doc", DOCS)
def test_every_test_named_in_the_docs_exists(doc: str) -> None:
    """Catches a renamed or deleted test that the docs still cite as proof of a promise
    (`::name` after a full reference means the same file)."""
    text = (ROOT / doc).read_text()
    checked, missing = 0, []
    current = None
    for line in text.splitlines():
        for match in REFERENCE.finditer(line):
            current = match.group(1) or current
            assert current, f"{doc}: `::{match.group(2)}` without a file before it: {line}"
            if match.group(2) not in defined_names(ROOT / current):
                missing.append(f"{current}::{match.group(2)}")
            checked += 1
    assert checked >= 20, f"{doc}: the tested-by references were not found"
    assert missing == [], f"{doc} names tests that do not exist: {missing}"
