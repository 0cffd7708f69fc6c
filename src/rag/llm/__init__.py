"""LLM functions for LightRAG: an OpenAI-compatible client and an offline stand-in.

``openai.py`` is the adapter for any OpenAI-compatible endpoint; ``offline.py`` answers LightRAG's
prompts without a model (graph records and keywords from ``src/rag/zh_extractor.py``, text helpers
in ``extraction.py``). Which one serves is
``Settings.resolved_llm_provider``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import urlparse

from src.core.config import Settings

from ..prompts import COMPLETION_DELIMITER, TUPLE_DELIMITER
from ..zh_extractor import extract_graph_records, extract_keywords_json
from .extraction import split_sentences
from .offline import (
    OFFLINE_LABEL,
    OfflineExtractiveLLM,
    answer_from_context,
    query_terms,
    summarize_descriptions,
)
from .openai import OpenAICompatibleLLM

__all__ = [
    "COMPLETION_DELIMITER",
    "OFFLINE_LABEL",
    "TUPLE_DELIMITER",
    "OfflineExtractiveLLM",
    "OpenAICompatibleLLM",
    "answer_from_context",
    "build_llm_func",
    "extract_graph_records",
    "extract_keywords_json",
    "llm_description",
    "query_terms",
    "split_sentences",
    "summarize_descriptions",
]


def build_llm_func(settings: Settings) -> Callable[..., Awaitable[str | AsyncIterator[str]]]:
    """LightRAG ``llm_model_func`` for ``settings.resolved_llm_provider`` ("openai" or "offline")."""
    provider = settings.resolved_llm_provider
    if provider == "openai":
        return OpenAICompatibleLLM(settings)
    if provider == "offline":
        return OfflineExtractiveLLM()
    raise ValueError(f"unknown LLM provider {provider!r} (expected openai or offline)")


def llm_description(settings: Settings) -> str:
    """One line for /health: which LLM answers, without secrets."""
    if settings.resolved_llm_provider == "openai":
        host = urlparse(settings.llm_base_url).netloc if settings.llm_base_url else "api.openai.com"
        return f"openai-compatible model={settings.llm_model} at {host}"
    return "offline-extractive (no generative LLM)"
