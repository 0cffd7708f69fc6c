"""Storage selection by environment: defaults unchanged, every misconfiguration named at start-up,
tenant-merging workspace overrides refused, and no pip install at run time."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from src.rag.storage.selection import StorageConfigError, storage_kwargs_from_env

pytestmark = [pytest.mark.unit, pytest.mark.timeout(300)]
ROOT = Path(__file__).resolve().parent.parent
PG = {"POSTGRES_USER": "u", "POSTGRES_PASSWORD": "p", "POSTGRES_DATABASE": "d"}
ALL_PG = {
    "LIGHTRAG_KV_STORAGE": "PGKVStorage",
    "LIGHTRAG_VECTOR_STORAGE": "PGVectorStorage",
    "LIGHTRAG_GRAPH_STORAGE": "PGPlainGraphStorage",
    "LIGHTRAG_DOC_STATUS_STORAGE": "PGDocStatusStorage",
}


def test_defaults_are_the_embedded_sqlite_storages() -> None:
    """Catches: a changed embedded default (an unset environment must give the incremental SQLite
    storages, not LightRAG's whole-file JSON storages), and the defaults not being registered."""
    from lightrag.kg import verify_storage_implementation

    kwargs = storage_kwargs_from_env({})
    assert kwargs == {
        "kv_storage": "SqliteKVStorage",
        "vector_storage": "SqliteVectorStorage",
        "graph_storage": "SqliteGraphStorage",
        "doc_status_storage": "SqliteDocStatusStorage",
    }
    verify_storage_implementation("GRAPH_STORAGE", "SqliteGraphStorage")


def test_lightrags_file_storages_stay_selectable() -> None:
    """Catches: LightRAG Server's names for its file storages refused."""
    kwargs = storage_kwargs_from_env(
        {"LIGHTRAG_KV_STORAGE": "JsonKVStorage", "LIGHTRAG_GRAPH_STORAGE": "NetworkXStorage"}
    )
    assert kwargs["kv_storage"] == "JsonKVStorage" and kwargs["graph_storage"] == "NetworkXStorage"


def test_all_postgres_selection() -> None:
    """Catches: our graph storage not registered, or PG names rejected with complete variables."""
    kwargs = storage_kwargs_from_env({**ALL_PG, **PG})
    assert kwargs == {
        "kv_storage": "PGKVStorage",
        "vector_storage": "PGVectorStorage",
        "graph_storage": "PGPlainGraphStorage",
        "doc_status_storage": "PGDocStatusStorage",
    }
    from lightrag import kg

    assert "PGPlainGraphStorage" in kg.STORAGE_IMPLEMENTATIONS["GRAPH_STORAGE"]["implementations"]
    assert kg.STORAGES["PGPlainGraphStorage"] == "src.rag.storage.pg_graph"


def test_unknown_name_is_named() -> None:
    """Catches: a typo surfacing as a KeyError deep inside LightRAG instead of naming the variable."""
    with pytest.raises(StorageConfigError) as err:
        storage_kwargs_from_env({"LIGHTRAG_GRAPH_STORAGE": "PGGraphStorag"})
    assert "LIGHTRAG_GRAPH_STORAGE='PGGraphStorag'" in str(err.value)
    assert "PGPlainGraphStorage" in str(err.value)  # the choices are listed


def test_storage_in_wrong_slot_is_named() -> None:
    """Catches: a vector storage accepted as the KV storage."""
    with pytest.raises(StorageConfigError, match="LIGHTRAG_KV_STORAGE='PGVectorStorage' is not a KV_STORAGE"):
        storage_kwargs_from_env({"LIGHTRAG_KV_STORAGE": "PGVectorStorage", **PG})


def test_missing_variables_are_named() -> None:
    """Catches: a PG storage starting without a password (LightRAG would fail on the first document)."""
    with pytest.raises(StorageConfigError) as err:
        storage_kwargs_from_env({**ALL_PG, **PG, "POSTGRES_PASSWORD": ""})
    message = str(err.value)
    for variable in ALL_PG:
        assert f"{variable}=" in message
    assert "POSTGRES_PASSWORD" in message and "POSTGRES_USER," not in message
    with pytest.raises(StorageConfigError, match="LIGHTRAG_KV_STORAGE=RedisKVStorage needs .*REDIS_URI"):
        storage_kwargs_from_env({"LIGHTRAG_KV_STORAGE": "RedisKVStorage"})
    with pytest.raises(StorageConfigError, match="NEO4J_URI, NEO4J_USERNAME, NEO4J_PASSWORD"):
        storage_kwargs_from_env({"LIGHTRAG_GRAPH_STORAGE": "Neo4JStorage"})


def test_bad_port_is_named() -> None:
    """Catches: POSTGRES_PORT=abc reaching asyncpg as a confusing connection error."""
    with pytest.raises(StorageConfigError, match="POSTGRES_PORT='abc'"):
        storage_kwargs_from_env({**ALL_PG, **PG, "POSTGRES_PORT": "abc"})


def test_missing_driver_is_named() -> None:
    """Catches: a selected storage whose driver is absent (LightRAG would pip-install it at import)."""
    pytest.importorskip("lightrag")
    if __import__("importlib").util.find_spec("neo4j") is not None:
        pytest.skip("neo4j driver installed here")
    env = {"LIGHTRAG_GRAPH_STORAGE": "Neo4JStorage", "NEO4J_URI": "bolt://x"}
    env |= {"NEO4J_USERNAME": "a", "NEO4J_PASSWORD": "b"}
    with pytest.raises(StorageConfigError, match="Python package\\(s\\) neo4j"):
        storage_kwargs_from_env(env)


@pytest.mark.parametrize("variable", ["POSTGRES_WORKSPACE", "REDIS_WORKSPACE", "NEO4J_WORKSPACE"])
def test_workspace_override_refused(variable: str) -> None:
    """Catches: POSTGRES_WORKSPACE accepted, which puts every tenant into one workspace."""
    with pytest.raises(StorageConfigError, match=f"{variable} is set"):
        storage_kwargs_from_env({**ALL_PG, **PG, variable: "shared"})
    assert storage_kwargs_from_env({**ALL_PG, **PG, variable: ""})["kv_storage"] == "PGKVStorage"


def _run_isolated(code: str) -> subprocess.CompletedProcess[str]:
    """Runs `code` in a fresh interpreter whose audit hook aborts any pip subprocess (a safety net:
    the assertions below check that our guard, not this hook, stopped the install)."""
    prelude = textwrap.dedent(
        """
        import sys
        def hook(event, args):
            if event == "subprocess.Popen" and "pip" in " ".join(map(str, args[1] or [])):
                raise SystemExit("PIP-SPAWNED: " + " ".join(map(str, args[1])))
        sys.addaudithook(hook)
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, "-c", prelude + textwrap.dedent(code)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip


def test_importing_pg_storages_never_runs_pip() -> None:
    """Catches: asyncpg/pgvector not declared (LightRAG's pipmaster would pip-install them on import)."""
    result = _run_isolated(
        """
        import src.rag.storage.pg_graph
        import lightrag.kg.postgres_impl
        print("IMPORTED")
        """
    )
    assert "PIP-SPAWNED" not in result.stdout + result.stderr
    assert "IMPORTED" in result.stdout, result.stderr


def test_guard_turns_runtime_install_into_named_import_error() -> None:
    """Catches: the guard missing, so importing a LightRAG storage with an absent driver runs pip."""
    result = _run_isolated(
        """
        import importlib.util
        from src.rag.lightrag_compat import RuntimeInstallBlocked, block_runtime_installs
        block_runtime_installs()
        import pipmaster
        try:
            pipmaster.install("some-package-that-must-not-install")
        except RuntimeInstallBlocked as exc:
            print("BLOCKED:", exc)
        if importlib.util.find_spec("neo4j") is None:
            try:
                import lightrag.kg.neo4j_impl
            except RuntimeInstallBlocked as exc:
                print("NEO4J-BLOCKED:", exc)
        else:
            print("NEO4J-BLOCKED: 'neo4j' (driver installed, nothing to block)")
        """
    )
    out = result.stdout + result.stderr
    assert "PIP-SPAWNED" not in out
    expected = "BLOCKED: LightRAG asked pipmaster.install('some-package-that-must-not-install')"
    assert expected in result.stdout, out
    assert "NEO4J-BLOCKED:" in result.stdout and "'neo4j'" in result.stdout, out
