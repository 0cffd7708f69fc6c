"""Layer markers mean something only if every test file carries exactly one of them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = [pytest.mark.unit, pytest.mark.timeout(30)]

TESTS = Path(__file__).resolve().parent.parent
LAYERS = {"unit", "integration", "process"}
HEAVY = {"main", "lightrag", "raganything", "api"}


def layer_markers(path: Path) -> list[str]:
    """The layer markers named in the module-level `pytestmark` of a test file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == "pytestmark" for t in node.targets
        ):
            for sub in ast.walk(node.value):
                if isinstance(sub, ast.Attribute) and sub.attr in LAYERS:
                    found.append(sub.attr)
    return found


def test_every_test_file_has_exactly_one_layer_marker() -> None:
    """Catches a new test file without a layer (it would silently leave `-m unit` / `-m process`
    runs) or with two (a process test that `-m unit` would start)."""
    files = sorted(TESTS.rglob("test_*.py"))
    assert len(files) > 20, files
    wrong = {str(f.relative_to(TESTS)): layer_markers(f) for f in files if len(layer_markers(f)) != 1}
    assert wrong == {}, f"each test file needs exactly one of {sorted(LAYERS)} in pytestmark: {wrong}"


def test_no_test_carries_a_layer_marker_of_its_own() -> None:
    """Catches a test marked with a layer inside a file of another layer (a `@pytest.mark.unit`
    test in a process file): `-m unit` skips the whole file, so that test never runs in its layer."""
    wrong = []
    for path in sorted(TESTS.rglob("test_*.py")):
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                for decorator in node.decorator_list:
                    named = {sub.attr for sub in ast.walk(decorator) if isinstance(sub, ast.Attribute)}
                    if named & LAYERS:
                        wrong.append(f"{path.relative_to(TESTS)}::{node.name}")
    assert wrong == [], f"layer markers belong to the file's pytestmark only: {wrong}"


def test_unit_layer_does_not_import_the_app() -> None:
    """Catches a conftest or helper that imports `main` (the app, LightRAG) at module level, which
    makes `-m unit` pay for the whole stack."""
    for name in ("conftest.py", "helpers.py", "unit/conftest.py", "unit/helpers.py"):
        tree = ast.parse((TESTS / name).read_text())
        top_level = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        modules = {a.name for n in top_level if isinstance(n, ast.Import) for a in n.names}
        modules |= {n.module or "" for n in top_level if isinstance(n, ast.ImportFrom)}
        heavy = {m for m in modules if m.split(".")[0] in HEAVY or m.startswith("src.wiring")}
        assert not heavy, (name, heavy)
