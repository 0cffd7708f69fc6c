"""The embedding signature of a knowledge base in PostgreSQL lives in PostgreSQL: every instance
checks the same record (src/rag/embedding_signature.py)."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from src.rag.embedding_signature import EmbeddingMismatchError, ensure_shared_embedding_signature
from tests.pg import pg_env  # noqa: F401  (session fixture)

pytestmark = pytest.mark.integration


@pytest.fixture
def pg_environment(pg_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:  # noqa: F811
    from lightrag.kg.shared_storage import initialize_share_data

    for name, value in pg_env.items():
        monkeypatch.setenv(name, value)
    initialize_share_data()


async def test_instances_agree_on_one_model_per_workspace(pg_environment: None) -> None:
    """Catches: a per-instance record (an instance configured with another model opening the shared
    workspace unnoticed: LightRAG would make it vector tables of its own, and it would answer from
    nothing), and two instances starting together each recording their own model."""
    workspace = f"sig-{uuid.uuid4().hex[:8]}"
    results = await asyncio.gather(
        ensure_shared_embedding_signature(workspace, "model-a", 384, "PGVectorStorage"),
        ensure_shared_embedding_signature(workspace, "model-b", 384, "PGVectorStorage"),
        return_exceptions=True,
    )
    refused = [r for r in results if isinstance(r, EmbeddingMismatchError)]
    assert len(refused) == 1 and results.count(None) == 1, results
    winner = "model-a" if results[0] is None else "model-b"
    loser = "model-b" if winner == "model-a" else "model-a"
    assert winner in str(refused[0]) and loser in str(refused[0])
    await ensure_shared_embedding_signature(workspace, winner, 384, "PGVectorStorage")  # same model: fine
    with pytest.raises(EmbeddingMismatchError, match="dim=384"):
        await ensure_shared_embedding_signature(workspace, winner, 768, "PGVectorStorage")
    # Another workspace records its own.
    await ensure_shared_embedding_signature(f"{workspace}-2", loser, 768, "PGVectorStorage")
