"""Which embedding model built a knowledge base, recorded beside its vectors.

Why: vectors of two models are incomparable, and two offline models share 384 dimensions
(MiniLM and e5), so LightRAG's dimension check cannot tell them apart. Starting a workspace
with another model than the one recorded is refused with a message naming both; nothing is
ever mixed silently. A fresh workspace records the model it is first opened with: in a file beside
the embedded storages, or in PostgreSQL when the vectors are there (shared by every instance).
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)

SIGNATURE_FILE = "embedding_signature.json"
#: Models that did not exist before signatures were recorded: a workspace that has vectors but
#: no signature cannot have been built with them, so opening it with one of them is refused.
MODELS_NEWER_THAN_SIGNATURES = frozenset({"multilingual-e5-small-q4"})
_DIM_RE = re.compile(rb'"embedding_dim"\s*:\s*(\d+)')
_HAS_DATA_RE = re.compile(rb'"data"\s*:\s*\[\s*\{')


class EmbeddingMismatchError(RuntimeError):
    """The workspace's vectors were made by another embedding model than the configured one."""


def _existing_vectors(workspace_dir: Path) -> tuple[bool, set[int]]:
    """Whether NanoVectorDB files hold vectors, and their dimensions (read from the file head)."""
    has_data = False
    dims: set[int] = set()
    for path in sorted(workspace_dir.glob("vdb_*.json")):
        try:
            with path.open("rb") as fh:
                head = fh.read(4096)
        except OSError:
            continue
        if m := _DIM_RE.search(head):
            dims.add(int(m.group(1)))
        has_data = has_data or bool(_HAS_DATA_RE.search(head))
    return has_data, dims


def read_embedding_signature(workspace_dir: Path) -> dict[str, object] | None:
    """The recorded signature, or None when the workspace has none."""
    path = Path(workspace_dir) / SIGNATURE_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        raise EmbeddingMismatchError(f"unreadable embedding signature {path}: {exc}") from exc
    if not isinstance(data, dict) or "model" not in data or "dim" not in data:
        raise EmbeddingMismatchError(f"malformed embedding signature {path}: {data!r}")
    return data


def _write(workspace_dir: Path, model: str, dim: int) -> None:
    workspace_dir.mkdir(parents=True, exist_ok=True)
    payload = {"model": model, "dim": int(dim), "recorded_at": datetime.now(UTC).isoformat()}
    fd, tmp = tempfile.mkstemp(dir=workspace_dir, prefix=".embedding_signature.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh)
    os.replace(tmp, workspace_dir / SIGNATURE_FILE)


def _refuse_another_model(workspace: str, old_model: str, old_dim: int, model: str, dim: int) -> None:
    if old_model != model or old_dim != dim:
        raise EmbeddingMismatchError(
            f"knowledge base {workspace!r} was indexed with embedding model "
            f"{old_model!r} (dim={old_dim}) but the service is configured with {model!r} "
            f"(dim={dim}); vectors of different models cannot be mixed. Start with the "
            f"original embedding (EMBEDDING_PROVIDER / EMBEDDING_MODEL) or re-index the documents "
            f"into a new workspace."
        )


def ensure_embedding_signature(workspace_dir: Path | str, model: str, dim: int) -> None:
    """Record the model on a fresh workspace; refuse a workspace built by another model.

    Synchronous file I/O (a few hundred bytes): call it through ``asyncio.to_thread``.
    """
    workspace_dir = Path(workspace_dir)
    dim = int(dim)
    recorded = read_embedding_signature(workspace_dir)
    if recorded is not None:
        _refuse_another_model(workspace_dir.name, str(recorded["model"]), int(recorded["dim"]), model, dim)  # type: ignore[call-overload]
        return
    has_data, dims = _existing_vectors(workspace_dir)
    if dims and dims != {dim}:
        raise EmbeddingMismatchError(
            f"knowledge base {workspace_dir.name!r} holds {sorted(dims)}-dimensional vectors but the "
            f"configured embedding model {model!r} makes {dim}-dimensional ones; start with the "
            f"original embedding or re-index the documents into a new workspace."
        )
    if has_data:
        if model in MODELS_NEWER_THAN_SIGNATURES:
            raise EmbeddingMismatchError(
                f"knowledge base {workspace_dir.name!r} was indexed before embedding models were "
                f"recorded, so with another model than {model!r} (the former offline default was "
                f"'all-MiniLM-L6-v2-onnx-int8': EMBEDDING_PROVIDER=onnx); start with that embedding "
                f"or re-index the documents into a new workspace."
            )
        logger.warning(
            "knowledge base %s has vectors but no embedding signature; recording %s (dim=%d), "
            "the configured model, as the one that built it",
            workspace_dir.name,
            model,
            dim,
        )
    _write(workspace_dir, model, dim)


# ----------------------------------------------------------------------------- shared (PostgreSQL)
SHARED_TABLE = "ragsvc_embedding_signature"


async def ensure_shared_embedding_signature(
    workspace: str, model: str, dim: int, vector_storage: str
) -> None:
    """The same rule for a knowledge base in PostgreSQL, recorded there (one row per workspace).

    Why there: every instance opens the workspace, and a file in one instance's DATA_DIR is seen by
    that instance only; an instance configured with another model would create its own vector tables
    (LightRAG names them after the model) and answer from an empty knowledge base. The first
    instance to open a workspace records its model (insert-if-absent: instances starting together
    agree on one row); every other instance compares with it."""
    from src.rag.lightrag_compat import postgres_client, release_postgres_client, run_with_retry

    db = await postgres_client(vector_storage)
    try:
        row = await run_with_retry(db, lambda conn: _record_shared(conn, workspace, model, int(dim)))
    finally:
        await release_postgres_client(db)
    _refuse_another_model(workspace, str(row["model"]), int(row["dim"]), model, int(dim))


#: Serialises the table's creation and the first record between instances starting together.
_SHARED_LOCK_KEY = 0x5247_5345_4D42_53  # "RGSEMBS"


async def _record_shared(conn: Any, workspace: str, model: str, dim: int) -> Any:
    async with conn.transaction():
        # Held only for these three statements, which wait for nothing else of ours.
        await conn.execute("SELECT pg_advisory_xact_lock($1)", _SHARED_LOCK_KEY)
        await conn.execute(
            f"CREATE TABLE IF NOT EXISTS {SHARED_TABLE} (workspace text PRIMARY KEY, model text NOT NULL, "
            "dim integer NOT NULL, recorded_at timestamptz NOT NULL DEFAULT now())"
        )
        await conn.execute(
            f"INSERT INTO {SHARED_TABLE} (workspace, model, dim) VALUES ($1, $2, $3) "
            "ON CONFLICT (workspace) DO NOTHING",
            workspace,
            model,
            dim,
        )
        return await conn.fetchrow(f"SELECT model, dim FROM {SHARED_TABLE} WHERE workspace = $1", workspace)
