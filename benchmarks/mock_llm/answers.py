"""What the mock answers: LightRAG-shaped chat replies (via src/rag/prompts.py) and hash embeddings."""

from __future__ import annotations

import itertools
import json
import math
import re
import zlib
from typing import Any

import numpy as np

from src.rag.prompts import (
    COMPLETION_DELIMITER,
    TUPLE_DELIMITER,
    classify_prompt,
    extraction_input,
    keyword_query,
)

from .config import MockConfig

# ----------------------------------------------------------------------------------------------
# text helpers (pure functions, cheap: a few regex passes per call)
# ----------------------------------------------------------------------------------------------

# fmt: off
_STOPWORDS = frozenset(
    (
        "a", "about", "above", "after", "again", "against", "all", "also", "although", "am", "among", "an",
        "and", "any", "are", "as", "at", "be", "because", "been", "before", "being", "below", "between",
        "both", "but", "by", "can", "could", "did", "do", "does", "doing", "down", "during", "each",
        "either", "else", "every", "few", "for", "from", "further", "had", "has", "have", "having", "he",
        "her", "here", "hers", "herself", "him", "himself", "his", "how", "however", "i", "if", "in",
        "into", "is", "it", "its", "itself", "just", "let", "me", "meanwhile", "might", "more", "most",
        "much", "must", "my", "myself", "neither", "no", "nor", "not", "now", "of", "off", "on", "once",
        "only", "or", "other", "our", "ours", "ourselves", "out", "over", "own", "same", "she", "should",
        "since", "so", "some", "such", "than", "that", "the", "their", "theirs", "them", "themselves",
        "then", "there", "these", "they", "this", "those", "through", "thus", "to", "too", "under", "until",
        "up", "upon", "very", "was", "we", "were", "what", "when", "where", "which", "while", "who", "whom",
        "why", "will", "with", "within", "without", "would", "yet", "you", "your", "yours", "yourself",
        "yourselves", "one", "two", "many", "several", "another", "according", "based", "given", "please",
        "tell", "explain", "describe", "list", "show", "give", "later", "earlier", "today", "yesterday",
        "tomorrow", "first", "finally", "afterwards", "next", "still", "instead", "therefore", "hence",
        "indeed", "moreover", "furthermore", "additionally", "overall", "soon", "eventually",
    )
)
# fmt: on

_PHRASE_RE = re.compile(r"(?<![\w\-])[A-Z][A-Za-z0-9\-]*(?:[ ]+[A-Z][A-Za-z0-9\-]*)*")
_WORD_RE = re.compile(r"[^\W\d_][\w\-]*")
_TOKEN_RE = re.compile(r"\w+")
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+|\n+")
_STREAM_PIECE_RE = re.compile(r"\S+\s*|\s+")
_WS_RE = re.compile(r"\s+")


def _clean(text: str, limit: int = 0) -> str:
    """One line, no LightRAG delimiters, optionally truncated at a word boundary."""
    text = _WS_RE.sub(" ", text.replace("<|", " ").replace("|>", " ")).strip()
    if limit and len(text) > limit:
        cut = text.rfind(" ", 0, limit)
        text = text[: cut if cut > limit // 2 else limit].rstrip(" ,;:") + "..."
    return text


def _sentences(text: str) -> list[str]:
    return [s for s in (p.strip() for p in _SENTENCE_SPLIT_RE.split(text)) if s]


def _proper_phrases(sentence: str) -> list[str]:
    """Capitalised word runs with leading/trailing stopwords removed, at most 4 words."""
    out = []
    for m in _PHRASE_RE.finditer(sentence):
        words = m.group(0).split()
        while words and words[0].lower() in _STOPWORDS:
            words.pop(0)
        while words and words[-1].lower() in _STOPWORDS:
            words.pop()
        words = words[:4]
        if words and (len(words) > 1 or len(words[0]) > 1):
            out.append(" ".join(words))
    return out


def _stable_index(text: str, n: int) -> int:
    return zlib.crc32(text.encode("utf-8")) % n


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):  # [{"type": "text", "text": ...}, ...]
        return "".join(
            str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type", "text") == "text"
        )
    return "" if content is None else str(content)


def _split_messages(messages: Any) -> tuple[str, str, str]:
    """-> (system text, text of all other non-final messages, last user message)."""
    system: list[str] = []
    other: list[str] = []
    last_user = ""
    if not isinstance(messages, list):
        return "", "", ""
    last_user_idx = -1
    for i, m in enumerate(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            last_user_idx = i
    for i, m in enumerate(messages):
        if not isinstance(m, dict):
            continue
        text = _message_text(m.get("content"))
        if i == last_user_idx:
            last_user = text
        elif m.get("role") in ("system", "developer"):
            system.append(text)
        else:
            other.append(text)
    return "\n".join(system), "\n".join(other), last_user


def _wants_keywords(response_format: Any) -> bool:
    if not isinstance(response_format, dict):
        return False
    schema = response_format.get("json_schema")
    if isinstance(schema, dict):
        props = (schema.get("schema") or {}).get("properties") or {}
        return "high_level_keywords" in props or schema.get("name") == "GPTKeywordExtractionFormat"
    return False


def classify_request(messages: Any, response_format: Any = None) -> str:
    """Which LightRAG call this is: one of ``KINDS`` (shared classifier: src/rag/prompts.py)."""
    system, _other, last_user = _split_messages(messages)
    return classify_prompt(last_user, system, keyword_extraction=_wants_keywords(response_format))


# --- extraction -------------------------------------------------------------------------------


def extraction_records(text: str, entity_types: list[str] | None = None, max_entities: int = 8) -> str:
    """Entity/relation records in LightRAG's format, ending with ``<|COMPLETE|>``.

    Entities are capitalised word runs (most frequent first, up to ``max_entities``), falling
    back to frequent long words for text without capitals; relations link consecutive entities
    (in order of first appearance).
    """
    types = [t for t in (entity_types or []) if t.lower() != "other"] or ["Concept"]
    sentences = _sentences(text)
    counts: dict[str, int] = {}
    first: dict[str, tuple[int, int]] = {}  # name -> (order of first appearance, sentence index)
    for si, sent in enumerate(sentences):
        for name in _proper_phrases(sent):
            counts[name] = counts.get(name, 0) + 1
            if name not in first:
                first[name] = (len(first), si)
    if not counts:  # no capitals (lower-case or non-Latin text): frequent long words
        for si, sent in enumerate(sentences):
            for w in _WORD_RE.findall(sent):
                if len(w) < 5 or w.lower() in _STOPWORDS:
                    continue
                name = w[:24].capitalize()
                counts[name] = counts.get(name, 0) + 1
                if name not in first:
                    first[name] = (len(first), si)
    chosen = sorted(counts, key=lambda n: (-counts[n], first[n][0]))[:max_entities]
    chosen.sort(key=lambda n: first[n][0])

    lines = []
    d = TUPLE_DELIMITER
    for name in chosen:
        etype = types[_stable_index(name, len(types))]
        sentence = sentences[first[name][1]]
        desc = _clean(f"{name} appears in the text: {sentence}", 240)
        lines.append(f"entity{d}{name}{d}{etype}{d}{desc}")
    for a, b in itertools.pairwise(chosen):
        sa, sb = first[a][1], first[b][1]
        if sa == sb:
            desc = _clean(f"{a} and {b} are mentioned together: {sentences[sa]}", 240)
        else:
            desc = f"{a} and {b} are mentioned close to each other in the text."
        lines.append(f"relation{d}{a}{d}{b}{d}co-occurrence, related context{d}{desc}")
    lines.append(COMPLETION_DELIMITER)
    return "\n".join(lines)


# --- summary / keywords / answer --------------------------------------------------------------


def summary_answer(prompt: str, limit: int = 600) -> str:
    name = ""
    m = re.search(r"^\s*(?:Entity|Relation|\w+)\s+Name:\s*(.+)$", prompt, re.MULTILINE)
    if m:
        name = m.group(1).strip()
    descs: list[str] = []
    start = prompt.find("Description List:")
    block = prompt[start:] if start >= 0 else prompt
    for line in block.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            d = obj.get("Description") or obj.get("description")
            if isinstance(d, str) and d.strip() and d.strip() not in descs:
                descs.append(d.strip())
    merged = " ".join(descs) or _clean(block, 200) or "No description available."
    out = _clean(f"{name}: {merged}" if name else merged, limit)
    return out or "No description available."


def keywords_answer(prompt: str) -> str:
    query = keyword_query(prompt)
    phrases: list[str] = []
    for p in _proper_phrases(query):
        if p not in phrases:
            phrases.append(p)
    content: list[str] = []
    for w in _WORD_RE.findall(query):
        if len(w) >= 3 and w.lower() not in _STOPWORDS and w not in content:
            content.append(w)
    joined = " ".join(phrases)
    high = [w for w in content if len(w) >= 5 and w not in joined][:3] or content[:3]
    low = (phrases + [w for w in content if w not in joined and w not in high])[:5] or content[:3]
    return json.dumps({"high_level_keywords": high, "low_level_keywords": low}, ensure_ascii=False)


def _context_candidates(context: str, max_lines: int = 5000) -> tuple[list[tuple[str, int]], list[str]]:
    """(quotable texts, reference-list lines) from a LightRAG context (or any text)."""
    i = context.rfind("---Context---")
    if i >= 0:
        context = context[i:]
    texts: list[tuple[str, int]] = []  # (text, priority: document chunks first)
    refs: list[str] = []
    for n, line in enumerate(context.splitlines()):
        if n >= max_lines:
            break
        line = line.strip()
        if len(line) < 3 or line.startswith(("```", "---")):
            continue
        if line.startswith("{") and line.endswith("}"):
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict):
                for key, prio in (("content", 1), ("description", 0)):
                    v = obj.get(key)
                    if isinstance(v, str) and v.strip():
                        texts.append((v.replace("<SEP>", " "), prio))
                        break
                continue
        if re.match(r"^\[\d+\]\s+\S", line):
            refs.append(line)
            continue
        if len(line) >= 20:
            texts.append((line, 0))
    return texts, refs


def rag_answer(system: str, other: str, query: str) -> str:
    terms = {w.lower() for w in _TOKEN_RE.findall(query) if len(w) > 2 and w.lower() not in _STOPWORDS}
    texts, refs = _context_candidates(system + "\n" + other)
    if not texts:
        q = _clean(query, 200)
        return f'Mock answer: no context was provided for the question "{q}".' if q else "Mock answer."

    def score(t: str) -> int:
        low = t.lower()
        return sum(1 for w in terms if w in low)

    best = max(texts, key=lambda tp: 2 * score(tp[0]) + tp[1])[0]  # first best on ties
    sents = _sentences(best) or [best]
    quote = _clean(max(sents, key=score), 300)
    answer = f'Based on the provided context: "{quote}"'
    if refs:
        answer += "\n\n### References\n\n" + "\n".join(f"- {r}" for r in refs[:5])
    return answer


def chat_answer(body: dict[str, Any], cfg: MockConfig) -> tuple[str, str]:
    """-> (kind, assistant content). Content is never empty."""
    messages = body.get("messages")
    kind = classify_request(messages, body.get("response_format"))
    system, other, last_user = _split_messages(messages)
    if kind == "extract":
        text, types = extraction_input(last_user)
        return kind, extraction_records(text, types, cfg.max_entities)
    if kind == "glean":
        return kind, COMPLETION_DELIMITER
    if kind == "summary":
        return kind, summary_answer(last_user)
    if kind == "keywords":
        return kind, keywords_answer(last_user or system)
    return kind, rag_answer(system, other, last_user)


# --- embeddings -------------------------------------------------------------------------------


# ASCII punctuation -> space, then str.split(): ~6x cheaper than a \w+ regex on long chunks.
_PUNCT_TABLE = str.maketrans(
    {c: " " for c in "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~\u2018\u2019\u201c\u201d\u2013\u2014\u2026\u00a0"}
)
_HASH_CACHE: dict[str, int] = {}
_HASH_CACHE_MAX = 500_000
_SIGN_BIT = np.uint64(0x80000000)


def _token_hash(token: str) -> int:
    h = _HASH_CACHE.get(token)
    if h is None:
        if len(_HASH_CACHE) >= _HASH_CACHE_MAX:
            _HASH_CACHE.clear()
        h = _HASH_CACHE[token] = zlib.crc32(token.encode("utf-8"))
    return h


def embed_tokens(text: str) -> list[str]:
    return text.lower().translate(_PUNCT_TABLE).split()


def embed_vector(text: str | list[int], dim: int = 384) -> np.ndarray:
    """Deterministic L2-normalised feature-hashing vector (float64 array; unigrams + 0.5 x bigrams).

    A 32-bit crc32 h of each token adds sign(h) to bucket h % dim; bigrams hash the pair of token
    hashes. Stable across processes (crc32, not Python's salted hash()).
    """
    if isinstance(text, list):  # pre-tokenised input (token ids)
        hashes = [_token_hash(f"#{t}") for t in text]
    else:
        hashes = [_token_hash(t) for t in embed_tokens(text)]
    if not hashes:
        vec = np.zeros(dim)
        vec[_token_hash("<empty>") % dim] = 1.0
        return vec
    h = np.array(hashes, dtype=np.uint64)
    vec = np.bincount((h % dim).astype(np.intp), weights=np.where(h < _SIGN_BIT, 1.0, -1.0), minlength=dim)
    if h.size > 1:
        b = ((h[:-1] * np.uint64(1000003)) ^ h[1:]) & np.uint64(0xFFFFFFFF)
        vec += np.bincount(
            (b % dim).astype(np.intp), weights=np.where(b < _SIGN_BIT, 0.5, -0.5), minlength=dim
        )
    norm = math.sqrt(float(vec @ vec))
    if norm == 0.0:  # everything cancelled out
        vec[h[0] % dim] = 1.0
        return vec
    return vec / norm


def embed_text(text: str | list[int], dim: int = 384) -> list[float]:
    """``embed_vector`` as a plain list of floats (what ``encoding_format=float`` returns)."""
    return embed_vector(text, dim).tolist()


def _approx_tokens(text: str) -> int:
    return max(1, len(text) // 4) if text else 0
