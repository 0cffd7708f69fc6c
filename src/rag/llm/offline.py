"""Offline extractive stand-in for a generative LLM (keywords, summaries, labelled answers).

Entity extraction heuristics live in ``extraction.py``; which prompt a call carries is decided by
the shared classifier ``src/rag/prompts.py``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from .. import zh_extractor
from ..prompts import COMPLETION_DELIMITER, classify_prompt, has_context
from .extraction import (
    _CJK_QUERY_STOP_RE,
    _LATIN,
    _QUESTION_WORDS,
    _STOPWORDS,
    _TOKEN_RE,
    _WORD_RE,
    _clean_field,
    _is_cjk,
    split_sentences,
)

logger = logging.getLogger(__name__)

OFFLINE_LABEL = (
    "[offline mode: no generative LLM is configured; below is the retrieved context most "
    "relevant to your question]"
)
MAX_ANSWER_CHARS = 3000
MAX_PASSAGES = 6


def _query_tokens(query: str) -> list[str]:
    """Words, CJK pieces (runs split at question/function words) and punctuation, in order."""
    tokens: list[str] = []
    for token in _TOKEN_RE.findall(query):
        if _is_cjk(token):
            tokens.extend(p for p in _CJK_QUERY_STOP_RE.split(token) if len(p) >= 2)
            tokens.append(",")  # a CJK run never joins a Latin phrase
        else:
            tokens.append(token)
    return tokens


def _is_content_word(token: str) -> bool:
    low = token.lower()
    if _is_cjk(token):
        return True
    if not _WORD_RE.fullmatch(token) or low in _STOPWORDS or low in _QUESTION_WORDS:
        return False
    return len(low) > 1 or low.isdigit()


def query_terms(query: str) -> list[str]:
    """Content words of a query (lower-cased), plus CJK bigrams for unsegmented text."""
    terms: list[str] = []
    for token in _query_tokens(query):
        if not _is_content_word(token):
            continue
        if _is_cjk(token):
            terms.extend(token[i : i + 2] for i in range(len(token) - 1))
        else:
            terms.append(token.lower())
    return list(dict.fromkeys(terms))


def summarize_descriptions(prompt: str) -> str:
    """Merge the JSON-lines description list of a summarize prompt: dedupe, join, truncate."""
    name_match = re.search(r"^(?:Entity|Relation)?\s*Name:\s*(.+)$", prompt, flags=re.MULTILINE)
    limit_match = re.search(r"must not exceed (\d+) tokens", prompt)
    limit_chars = int(limit_match.group(1)) * 4 if limit_match else 2400
    block = prompt.split("Description List:", 1)[-1]
    descriptions: dict[str, None] = {}  # ordered set
    total = 0
    for line in block.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            value = json.loads(line).get("Description", "")
        except (json.JSONDecodeError, AttributeError):
            continue
        for sentence in split_sentences(str(value)) or [str(value)]:
            if sentence and sentence not in descriptions:
                descriptions[sentence] = None
                total += len(sentence) + 1
        if total > limit_chars:
            break
    text = " ".join(descriptions)
    if not text and name_match:
        text = name_match.group(1).strip()
    # Short: the merged description is what gets embedded (MiniLM reads 256 word pieces).
    return _clean_field(text, min(limit_chars, 1200))


def _parse_context(system_prompt: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]], dict[str, str]]:
    context = system_prompt.split("---Context---", 1)[-1]
    chunks: list[dict[str, Any]] = []
    entities: list[dict[str, Any]] = []
    for line in context.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(item, dict):
            continue
        if "content" in item:
            chunks.append(item)
        elif "entity" in item and "description" in item:
            entities.append(item)
    references: dict[str, str] = {}
    ref_block = (
        context.split("Reference Document List", 1)[-1] if "Reference Document List" in context else ""
    )
    for match in re.finditer(r"^\[(\w+)\]\s+(.+)$", ref_block, flags=re.MULTILINE):
        references[match.group(1)] = match.group(2).strip()
    return chunks, entities, references


def _stem(term: str) -> str:
    """Crude English suffix stripping; matching is by prefix, so "produce" finds "produces"."""
    for suffix in ("ing", "ed", "es", "s"):
        if term.endswith(suffix) and len(term) - len(suffix) >= 4:
            return term[: -len(suffix)]
    return term


def _term_hits(terms: list[str], text: str) -> int:
    low = text.lower()
    hits = 0
    for term in terms:
        if _is_cjk(term):
            hits += term in low
        elif re.search(rf"(?<![{_LATIN}_]){re.escape(_stem(term))}", low):
            hits += 1
    return hits


def answer_from_context(query: str, system_prompt: str, max_chars: int = MAX_ANSWER_CHARS) -> str:
    """Labelled extractive answer: the context sentences sharing most words with the query."""
    chunks, entities, references = _parse_context(system_prompt or "")
    terms = query_terms(query)
    scored: list[tuple[float, int, int, str, str]] = []
    for c_index, chunk in enumerate(chunks):
        ref = str(chunk.get("reference_id", "") or "")
        for s_index, sentence in enumerate(split_sentences(str(chunk.get("content", "")))):
            hits = _term_hits(terms, sentence)
            # Earlier chunks were ranked higher by retrieval: use that as the tie-breaker.
            score = hits + 0.5 * (hits / max(1, len(terms))) - 0.01 * c_index
            scored.append((score, c_index, s_index, sentence, ref))
    relevant = [s for s in scored if s[0] > 0.5] or [s for s in scored if s[2] < 2][:4]
    relevant.sort(key=lambda s: (-s[0], s[1], s[2]))

    parts = [OFFLINE_LABEL, ""]
    used_refs: list[str] = []
    if not relevant and not entities:
        parts.append("No retrieved passage matches the question.")
    seen: set[str] = set()
    for _, _, _, sentence, ref in relevant:
        key = re.sub(r"\W+", " ", sentence.lower()).strip()
        if key in seen:
            continue
        seen.add(key)
        cite = f" [{ref}]" if ref else ""
        parts.append(f"- {_clean_field(sentence, 600)}{cite}")
        if ref and ref not in used_refs:
            used_refs.append(ref)
        if len(seen) >= MAX_PASSAGES:
            break
    matching_entities = [e for e in entities if _term_hits(terms, str(e.get("entity", ""))) > 0][:3]
    if matching_entities:
        parts.append("")
        parts.append("Related entities:")
        for entity in matching_entities:
            name = _clean_field(str(entity["entity"]), 120)
            parts.append(f"- {name}: {_clean_field(str(entity['description']), 300)}")
    if used_refs and references:
        parts.append("")
        parts.append("### References")
        for ref in used_refs[:5]:
            if ref in references:
                parts.append(f"- [{ref}] {references[ref]}")
    answer = "\n".join(parts)
    if len(answer) > max_chars:
        answer = answer[: max_chars - 1].rsplit("\n", 1)[0] + "\n…"
    return answer


async def _stream_text(text: str) -> AsyncIterator[str]:
    for line in text.splitlines(keepends=True):
        yield line
        await asyncio.sleep(0)


class OfflineExtractiveLLM:
    """Deterministic stand-in for a generative LLM, so LightRAG can index and answer offline.

    It recognises LightRAG's prompts (lightrag/prompt.py, through src/rag/prompts.py) and answers each
    in the exact format LightRAG parses: heuristic entity/relation records for extraction, nothing new
    for gleaning, merged descriptions for summaries, the query's own words as keywords, and, for the
    final answer, a clearly labelled extract of the retrieved context. It generates no text of its own
    and understands nothing: it exists so the service works without a model.
    """

    _EXTRACT_RE = re.compile(r"<Input Text>\s*```\n?(.*?)\n?```\s*<Output>", re.DOTALL)
    _TYPES_RE = re.compile(r"<Entity_types>\s*\[(.*?)\]", re.DOTALL)

    def __init__(self) -> None:
        logger.warning(
            "LLM: offline extractive stand-in in use - it is NOT a generative model; answers are "
            "labelled extracts of retrieved context. Set LLM_BASE_URL / LLM_API_KEY for a real LLM."
        )

    async def __call__(
        self,
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        keyword_extraction: bool = False,
        stream: bool | None = False,
        **kwargs: Any,
    ) -> str | AsyncIterator[str]:
        text = await self._respond(prompt or "", system_prompt or "", keyword_extraction)
        return _stream_text(text) if stream else text

    async def _respond(self, prompt: str, system_prompt: str, keyword_extraction: bool) -> str:
        kind = classify_prompt(prompt, system_prompt, keyword_extraction)
        if kind == "keywords":
            match = re.search(r"User Query:\s*(.*?)\n+---Output---", prompt, flags=re.DOTALL)
            query = match.group(1).strip() if match else prompt
            return await asyncio.to_thread(zh_extractor.extract_keywords_json, query)
        if kind == "glean":
            return COMPLETION_DELIMITER  # gleaning: the heuristics have nothing more to add
        if kind == "extract":
            found = self._EXTRACT_RE.findall(prompt)
            types_match = self._TYPES_RE.search(prompt)
            types = [t.strip().strip("\"'") for t in types_match.group(1).split(",")] if types_match else None
            if not found:
                logger.warning("offline LLM: extraction prompt without an <Input Text> block; using it whole")
            body = found[-1] if found else prompt
            return await asyncio.to_thread(zh_extractor.extract_graph_records, body, types)
        if kind == "summary":
            if len(prompt) < 4000:
                return summarize_descriptions(prompt)
            return await asyncio.to_thread(summarize_descriptions, prompt)
        if has_context(system_prompt):
            answer = await asyncio.to_thread(answer_from_context, prompt, system_prompt)
            # kg_query/naive_query strip the system prompt from answers longer than it (operate.py).
            return answer[: max(1, len(system_prompt) - 1)]
        logger.info("offline LLM: unrecognised prompt (%d chars); returning a labelled notice", len(prompt))
        return (
            "[offline mode: no generative LLM is configured, so this request cannot be answered by a "
            "model. Configure LLM_BASE_URL / LLM_API_KEY for generated answers.]"
        )

    def describe(self) -> str:
        return "offline-extractive (no generative LLM)"

    def __deepcopy__(self, memo: dict[int, Any]) -> OfflineExtractiveLLM:
        return self
