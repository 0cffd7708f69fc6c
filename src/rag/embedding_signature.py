"""Which embedding model built a knowledge base, recorded beside its vectors.

Why: vectors of two models are incomparable, and two offline models share 384 dimensions
(MiniLM and e5), so LightRAG's dimension check cannot tell them apart. Starting a workspace
with another model than the one recorded is refused with a message naming both; nothing is
ever mixed silently. A fresh workspace records the model it is first opened with.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
from datetime import UTC, datetime
from pathlib import Path

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


def ensure_embedding_signature(workspace_dir: Path | str, model: str, dim: int) -> None:
    """Record the model on a fresh workspace; refuse a workspace built by another model.

    Synchronous file I/O (a few hundred bytes): call it through ``asyncio.to_thread``.
    """
    workspace_dir = Path(workspace_dir)
    dim = int(dim)
    recorded = read_embedding_signature(workspace_dir)
    if recorded is not None:
        old_model, old_dim = str(recorded["model"]), int(recorded["dim"])  # type: ignore[call-overload]
        if old_model != model or old_dim != dim:
            raise EmbeddingMismatchError(
                f"knowledge base {workspace_dir.name!r} was indexed with embedding model "
                f"{old_model!r} (dim={old_dim}) but the service is configured with {model!r} "
                f"(dim={dim}); vectors of different models cannot be mixed. Start with the "
                f"original embedding (EMBEDDING_PROVIDER / EMBEDDING_MODEL) or re-index the documents "
                f"into a new workspace."
            )
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
