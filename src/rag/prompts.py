"""Recognise which LightRAG prompt an LLM call carries (lightrag/prompt.py of the supported release).

One classifier shared by the offline extractive LLM (src/rag/llm/offline.py) and the benchmark
mock server (benchmarks/mock_llm.py), so both answer the same prompts the same way and a LightRAG
upgrade that rewords a prompt is fixed in one place.
"""

from __future__ import annotations

from typing import Literal

PromptKind = Literal["extract", "glean", "summary", "keywords", "answer"]
KINDS: tuple[PromptKind, ...] = ("extract", "glean", "summary", "keywords", "answer")

TUPLE_DELIMITER = "<|#|>"
COMPLETION_DELIMITER = "<|COMPLETE|>"

# Markers copied from lightrag/prompt.py (tests/test_lightrag_contract.py checks they are still there).
_GLEAN_MARKERS = (
    "identify and extract any **missed or incorrectly formatted** entities",  # entity_continue_extraction
)
_EXTRACT_MARKER = "Extract entities and relationships from the input text"  # entity_extraction_user_prompt
_EXTRACT_SYSTEM_MARKER = "responsible for extracting entities"
_SUMMARY_MARKERS = ("synthesize a list of descriptions", "Description List:")  # summarize_entity_descriptions
_KEYWORD_MARKERS = ("expert keyword extractor", "---Real Data---\nUser Query:")  # keywords_extraction
CONTEXT_MARKER = "---Context---"  # rag_response / naive_rag_response system prompts


def classify_prompt(prompt: str, system_prompt: str = "", keyword_extraction: bool = False) -> PromptKind:
    """Which LightRAG call this is; ``answer`` for anything unrecognised.

    ``keyword_extraction`` is LightRAG's own flag (or a JSON keyword response format) and wins;
    otherwise the user prompt decides, gleaning before extraction (a gleaning prompt may repeat
    the extraction wording), and the system prompt only confirms an extraction.
    """
    prompt = prompt or ""
    system_prompt = system_prompt or ""
    if keyword_extraction:
        return "keywords"
    if any(m in prompt for m in _GLEAN_MARKERS) or (
        "Based on the last extraction task" in prompt and "missed" in prompt
    ):
        return "glean"
    if _EXTRACT_MARKER in prompt or ("<Input Text>" in prompt and _EXTRACT_SYSTEM_MARKER in system_prompt):
        return "extract"
    if any(m in prompt for m in _SUMMARY_MARKERS):
        return "summary"
    if any(m in prompt or m in system_prompt for m in _KEYWORD_MARKERS):
        return "keywords"
    return "answer"


def has_context(system_prompt: str) -> bool:
    """True for an answer prompt that carries retrieved context (kg_query / naive_query)."""
    return CONTEXT_MARKER in (system_prompt or "")


def extraction_input(prompt: str) -> tuple[str, list[str]]:
    """Input text and entity types of an ``entity_extraction_user_prompt``.

    The text is the last fenced block after ``<Input Text>`` (the examples before it carry their
    own); types come from the ``<Entity_types>`` list, without ones that could break a record.
    """
    text = prompt
    start = prompt.rfind("<Input Text>")
    if start >= 0:
        body = prompt[start + len("<Input Text>") :]
        open_fence = body.find("```")
        end = body.rfind("<Output>")
        if end < 0:
            end = len(body)
        close_fence = body.rfind("```", 0, end)
        if 0 <= open_fence < close_fence:
            text = body[open_fence + 3 : close_fence]
        else:
            text = body[:end]
    types: list[str] = []
    tstart = prompt.rfind("<Entity_types>", 0, start if start >= 0 else len(prompt))
    if tstart >= 0:
        lb = prompt.find("[", tstart)
        rb = prompt.find("]", lb + 1) if lb >= 0 else -1
        if 0 <= lb < rb:
            for t in prompt[lb + 1 : rb].split(","):
                t = t.strip().strip("\"'` ")
                if t and not any(c in t for c in "'()<>|/\\"):
                    types.append(t)
    return text.strip(), types


def keyword_query(prompt: str) -> str:
    """The user query inside a ``keywords_extraction`` prompt (the whole prompt if absent)."""
    i = prompt.rfind("User Query:")
    if i < 0:
        return prompt
    q = prompt[i + len("User Query:") :]
    j = q.find("---Output---")
    return (q[:j] if j >= 0 else q).strip()
