"""A LightRAG Server `.env` drives what the builder wires: the LLM at LLM_BINDING_HOST (an Ollama
root URL reached through its /v1), MAX_ASYNC concurrent LLM calls, EMBEDDING_FUNC_MAX_ASYNC and
EMBEDDING_BATCH_NUM for the embeddings; calls really reach the endpoint named by their variables."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from benchmarks.mock_llm import MockConfig, MockServer
from src.core.config import Settings
from src.rag.batching import EmbeddingBatcher

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


async def test_lightrag_server_env_drives_the_built_lightrag(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from src.rag.builder import build_lightrag

    with MockServer(MockConfig(api_key="sk-theirs")) as mock:
        env = {
            "DATA_DIR": str(tmp_path / "data"),
            "LLM_BINDING": "ollama",
            "LLM_BINDING_HOST": mock.root_url,  # as LightRAG's ollama binding takes it: the root
            "LLM_BINDING_API_KEY": "sk-theirs",
            "LLM_MODEL": "mock-gpt",
            "MAX_ASYNC": "5",
            "EMBEDDING_BINDING": "openai",
            "EMBEDDING_BINDING_HOST": mock.base_url,
            "EMBEDDING_BINDING_API_KEY": "sk-theirs",
            "EMBEDDING_MODEL": "mock-embedding",
            "EMBEDDING_DIM": "384",
            "EMBEDDING_FUNC_MAX_ASYNC": "3",
            "EMBEDDING_BATCH_NUM": "7",
        }
        for name, value in env.items():
            monkeypatch.setenv(name, value)
        settings = Settings(_env_file=None)

        rag = await build_lightrag(settings, workspace="lrs_env")
        try:
            scheduled_llm = rag.llm_model_func
            assert scheduled_llm.scheduler.limit == 5  # the process-wide LLM bound
            assert rag.llm_model_max_async == 5  # LightRAG's per-document concurrency
            assert scheduled_llm.provider_func.base_url == f"{mock.root_url}/v1"
            batcher = rag.embedding_func.func
            assert isinstance(batcher, EmbeddingBatcher)
            assert (batcher.scheduler.limit, batcher.max_batch, rag.embedding_batch_num) == (3, 7, 7)

            answer = await scheduled_llm("Say hello.")
            vectors = await rag.embedding_func(["one", "two"])
        finally:
            await rag.finalize_storages()
        assert isinstance(answer, str) and answer
        assert vectors.shape == (2, 384)
        async with httpx.AsyncClient(timeout=10) as client:
            stats = (await client.get(f"{mock.root_url}/_mock/stats")).json()
        assert stats["calls"]["chat"] == 1 and stats["calls"]["embeddings"] == 1
        assert stats["auth_failures"] == 0
