"""Local OpenAI-compatible mock LLM + embedding server.

Used by the test suite (fault injection) and by the benchmarks (a cheap, latency-controlled
stand-in for a real provider). Nothing here touches the network beyond 127.0.0.1.

Endpoints
---------
* ``POST /v1/chat/completions`` - non-streaming and ``stream: true`` (SSE, OpenAI chunk format,
  terminated by ``data: [DONE]``). Answers are shaped so that LightRAG 1.4.16 really builds a
  graph: entity-extraction prompts get ``entity<|#|>...`` / ``relation<|#|>...`` records ending
  with ``<|COMPLETE|>``, gleaning prompts get ``<|COMPLETE|>``, keyword prompts get the JSON
  object LightRAG expects, description-summary prompts get a short merge, anything else gets a
  short answer quoting a line of the provided context.
* ``POST /v1/embeddings`` - deterministic feature-hashing vectors (L2-normalised), ``float`` or
  ``base64`` encoding (the ``openai`` client asks for base64 by default).
* ``GET /v1/models``
* ``GET /_mock/stats``, ``GET|POST /_mock/config``, ``POST /_mock/reset``, ``GET /_mock/health``.

Faults (chat + embeddings, see ``MockConfig.error_endpoints``): ``fail_first`` deterministic
failures, random transient errors with probability ``error_rate`` (429 with ``Retry-After`` /
500 / 503 ...), random hangs, and ``permanent_error`` mode (always 400/401). All randomness comes
from ``random.Random(seed)`` instances drawn in request-arrival order, so a serial run with a
given seed is fully reproducible.

Run standalone::

    python -m benchmarks.mock_llm --port 8999 --latency 0.5 --error-rate 0.3 --error-status 429

or in-process on a real socket (e.g. for code that builds its own ``AsyncOpenAI`` client)::

    with MockServer(MockConfig(latency=0.1)) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="x")
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import itertools
import json
import math
import random
import re
import sys
import threading
import time
import zlib
from collections import deque
from typing import Any, Literal, Self

import numpy as np
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from src.rag.prompts import (
    COMPLETION_DELIMITER,
    KINDS,
    TUPLE_DELIMITER,
    classify_prompt,
    extraction_input,
    keyword_query,
)

ENDPOINTS = ("chat", "embeddings", "models")

__all__ = [
    "COMPLETION_DELIMITER",
    "KINDS",
    "TUPLE_DELIMITER",
    "MockConfig",
    "MockServer",
    "MockState",
    "build_parser",
    "classify_request",
    "config_from_args",
    "create_mock_app",
    "embed_text",
    "embed_vector",
    "embed_tokens",
    "extraction_records",
    "main",
]


# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


class MockConfig(BaseModel):
    """Behaviour of the mock. Every field can be changed at run time via ``POST /_mock/config``."""

    model_config = ConfigDict(extra="forbid")

    # --- latency ------------------------------------------------------------------------------
    #: Seconds every served chat (and, unless embedding_latency is set, embedding) call waits.
    #: asyncio.sleep, so concurrent calls overlap instead of queueing.
    latency: float = Field(default=0.0, ge=0)
    #: Extra uniform random latency in [0, latency_jitter] seconds (seeded).
    latency_jitter: float = Field(default=0.0, ge=0)
    #: Latency of embedding calls; None -> same as ``latency``.
    embedding_latency: float | None = Field(default=None, ge=0)
    #: Seconds an injected (transient or permanent) error waits before it is returned.
    error_latency: float = Field(default=0.0, ge=0)

    # --- fault injection ----------------------------------------------------------------------
    #: Probability that an eligible call fails with ``error_status``.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    #: Status of injected transient errors (429 adds Retry-After; 500, 503, ...).
    error_status: int = 429
    #: Value advertised by 429 responses: ``Retry-After`` (whole seconds, rounded up, as the
    #: header only allows integers) plus ``retry-after-ms`` (exact; honoured by the openai client).
    retry_after: float = Field(default=1.0, ge=0)
    #: The first N eligible calls (after start/reset) fail with ``error_status`` deterministically.
    fail_first: int = Field(default=0, ge=0)
    #: Every eligible call fails with ``permanent_error_status`` (400/401 ...).
    permanent_error: bool = False
    permanent_error_status: int = 401
    #: Overrides the default message of permanent errors.
    permanent_error_message: str | None = None
    #: Probability that an eligible call first sleeps ``hang_seconds`` (to provoke client timeouts).
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_seconds: float = Field(default=30.0, ge=0)
    #: Which endpoints faults apply to.
    error_endpoints: list[Literal["chat", "embeddings"]] = Field(
        default_factory=lambda: ["chat", "embeddings"]
    )
    #: If set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
    api_key: str | None = None
    seed: int = 0

    # --- answers ------------------------------------------------------------------------------
    model: str = "mock-gpt"
    embedding_model: str = "mock-embedding"
    embedding_dim: int = Field(default=384, ge=1, le=65536)
    #: Max entities emitted per extraction call (relations: consecutive pairs -> max-1).
    max_entities: int = Field(default=8, ge=1, le=200)
    #: Words per streamed chunk and optional delay between chunks.
    stream_chunk_words: int = Field(default=8, ge=1)
    stream_chunk_delay: float = Field(default=0.0, ge=0)

    # --- bookkeeping --------------------------------------------------------------------------
    #: Per-call records kept for ``/_mock/stats`` (oldest dropped first).
    max_recorded_calls: int = Field(default=10_000, ge=0)

    @field_validator("error_status")
    @classmethod
    def _check_error_status(cls, v: int) -> int:
        if not 400 <= v <= 599:
            raise ValueError("error_status must be a 4xx/5xx status")
        return v

    @field_validator("permanent_error_status")
    @classmethod
    def _check_permanent_status(cls, v: int) -> int:
        if not 400 <= v <= 499:
            raise ValueError("permanent_error_status must be a 4xx status")
        return v


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


# ----------------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------------


def _error_payload(message: str, etype: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


_TRANSIENT = {
    429: (
        "Rate limit reached for requests (mock injected error). Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (mock injected error).",
        "server_error",
        "internal_error",
    ),
    502: ("Bad gateway (mock injected error).", "server_error", "bad_gateway"),
    503: (
        "The engine is currently overloaded, please try again later (mock injected error).",
        "server_error",
        "service_unavailable",
    ),
    504: ("Gateway timeout (mock injected error).", "server_error", "gateway_timeout"),
}

_PERMANENT = {
    400: (
        "Invalid request: the mock server is in permanent_error mode and rejects every request.",
        "invalid_request_error",
        "invalid_request",
    ),
    401: (
        "Incorrect API key provided: the mock server is in permanent_error mode (rejects every request).",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("Permission denied (mock permanent_error mode).", "permission_error", "permission_denied"),
    404: (
        "The model does not exist (mock permanent_error mode).",
        "invalid_request_error",
        "model_not_found",
    ),
}


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


class MockState:
    """Mutable state of one mock app (config, seeded RNGs, counters). Lives in ``app.state.mock``."""

    def __init__(self, config: MockConfig):
        self.initial_config = config.model_copy(deep=True)
        self.config = config.model_copy(deep=True)
        self.reset()

    # --- lifecycle ----------------------------------------------------------------------------
    def reseed(self) -> None:
        seed = self.config.seed
        self.error_rng = random.Random(seed)
        self.hang_rng = random.Random(seed + 1)
        self.jitter_rng = random.Random(seed + 2)
        self.eligible_calls = 0  # counter behind fail_first

    def reset(self, restore_config: bool = False) -> None:
        if restore_config:
            self.config = self.initial_config.model_copy(deep=True)
        self.reseed()
        self.started = time.time()
        self.calls = dict.fromkeys(ENDPOINTS, 0)
        self.kinds = dict.fromkeys(KINDS, 0)
        self.streams = 0
        self.errors_by_status: dict[str, int] = {}
        self.errors_total = 0
        self.permanent_errors = 0
        self.auth_failures = 0
        self.bad_requests = 0
        self.hangs = 0
        self.embedding_inputs = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.records: deque[dict[str, Any]] = deque(maxlen=self.config.max_recorded_calls)

    def update_config(self, changes: dict[str, Any]) -> MockConfig:
        new = MockConfig.model_validate({**self.config.model_dump(), **changes})
        self.config = new
        if "seed" in changes:
            self.reseed()
        if "max_recorded_calls" in changes:
            self.records = deque(self.records, maxlen=new.max_recorded_calls)
        return new

    # --- per call -----------------------------------------------------------------------------
    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def record(
        self, endpoint: str, status: int, started: float, kind: str | None = None, **extra: Any
    ) -> None:
        self.records.append(
            {
                "endpoint": endpoint,
                "kind": kind,
                "status": status,
                "latency_s": round(time.perf_counter() - started, 6),
                "at": round(time.time() - self.started, 6),
                **extra,
            }
        )

    def draw_fault(self, endpoint: str, cfg: MockConfig) -> tuple[str | None, bool]:
        """-> (fault, hang). fault in {None, "permanent", "transient"}. Synchronous, so draws
        happen in request-arrival order (deterministic for serial runs with a fixed seed)."""
        if endpoint not in cfg.error_endpoints:
            return None, False
        self.eligible_calls += 1
        r_err = self.error_rng.random()
        r_hang = self.hang_rng.random()
        if cfg.permanent_error:
            return "permanent", False
        if self.eligible_calls <= cfg.fail_first or r_err < cfg.error_rate:
            return "transient", False
        return None, r_hang < cfg.hang_rate

    def call_latency(self, endpoint: str, cfg: MockConfig) -> float:
        base = cfg.latency
        if endpoint == "embeddings" and cfg.embedding_latency is not None:
            base = cfg.embedding_latency
        if cfg.latency_jitter > 0:
            base += self.jitter_rng.uniform(0.0, cfg.latency_jitter)
        return base

    def error_response(self, status: int, permanent: bool, cfg: MockConfig) -> Response:
        table = _PERMANENT if permanent else _TRANSIENT
        message, etype, code = table.get(
            status,
            (
                f"Mock {'permanent' if permanent else 'injected'} error (HTTP {status}).",
                "invalid_request_error" if status < 500 else "server_error",
                f"mock_error_{status}",
            ),
        )
        if permanent and cfg.permanent_error_message:
            message = cfg.permanent_error_message
        headers = {}
        if status == 429 and not permanent:
            headers["Retry-After"] = str(math.ceil(cfg.retry_after))
            headers["retry-after-ms"] = str(round(cfg.retry_after * 1000))
        key = str(status)
        self.errors_by_status[key] = self.errors_by_status.get(key, 0) + 1
        self.errors_total += 1
        if permanent:
            self.permanent_errors += 1
        return _json_response(_error_payload(message, etype, code), status, headers)

    # --- stats --------------------------------------------------------------------------------
    def snapshot(self, include_calls: bool = False) -> dict[str, Any]:
        by_endpoint: dict[str, list[float]] = {}
        for r in self.records:
            by_endpoint.setdefault(r["endpoint"], []).append(r["latency_s"])
        latency = {}
        for ep, vals in by_endpoint.items():
            vals.sort()
            latency[ep] = {
                "count": len(vals),
                "mean_s": round(sum(vals) / len(vals), 6),
                "p50_s": _percentile(vals, 0.5),
                "p95_s": _percentile(vals, 0.95),
                "max_s": vals[-1],
            }
        out: dict[str, Any] = {
            "calls": dict(self.calls),
            "kinds": dict(self.kinds),
            "streams": self.streams,
            "errors_injected": {
                "total": self.errors_total,
                "by_status": dict(self.errors_by_status),
                "permanent": self.permanent_errors,
            },
            "auth_failures": self.auth_failures,
            "bad_requests": self.bad_requests,
            "hangs": self.hangs,
            "embedding_inputs": self.embedding_inputs,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "latency": latency,
            "uptime_s": round(time.time() - self.started, 3),
            "config": self.config.model_dump(),
        }
        if include_calls:
            out["calls_detail"] = list(self.records)
        return out


# ----------------------------------------------------------------------------------------------
# app
# ----------------------------------------------------------------------------------------------


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _sse(payload: dict[str, Any]) -> bytes:
    return (
        b"data: " + json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n\n"
    )


def _stream_pieces(content: str, words: int) -> list[str]:
    parts = _STREAM_PIECE_RE.findall(content)
    return ["".join(parts[i : i + words]) for i in range(0, len(parts), words)] or [content]


def create_mock_app(config: MockConfig | None = None) -> FastAPI:
    """Build a fresh mock app; its state is ``app.state.mock`` (a ``MockState``)."""
    state = MockState(config or MockConfig())
    app = FastAPI(title="mock-openai", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.mock = state
    seq = {"n": 0}

    def next_id(prefix: str) -> str:
        seq["n"] += 1
        return f"{prefix}-mock-{seq['n']:08d}"

    def check_auth(request: Request, cfg: MockConfig) -> Response | None:
        if cfg.api_key is None:
            return None
        if request.headers.get("authorization", "") == f"Bearer {cfg.api_key}":
            return None
        state.auth_failures += 1
        return _json_response(
            _error_payload("Incorrect API key provided.", "invalid_request_error", "invalid_api_key"), 401
        )

    async def read_json(request: Request) -> dict[str, Any] | Response:
        try:
            body = json.loads(await request.body())
        except ValueError:
            body = None
        if not isinstance(body, dict):
            state.bad_requests += 1
            return _json_response(
                _error_payload("Request body must be a JSON object.", "invalid_request_error", None), 400
            )
        return body

    async def fault_response(endpoint: str, cfg: MockConfig, started: float) -> Response | None:
        """Apply hang / injected errors. Caller holds the in-flight slot."""
        fault, hang = state.draw_fault(endpoint, cfg)
        if hang:
            state.hangs += 1
            await asyncio.sleep(cfg.hang_seconds)
        if fault is None:
            return None
        if cfg.error_latency:
            await asyncio.sleep(cfg.error_latency)
        permanent = fault == "permanent"
        status = cfg.permanent_error_status if permanent else cfg.error_status
        resp = state.error_response(status, permanent, cfg)
        state.record(endpoint, status, started, fault=fault)
        return resp

    # --- OpenAI surface -----------------------------------------------------------------------
    @app.post("/v1/chat/completions")
    async def chat_completions(request: Request) -> Response:
        started = time.perf_counter()
        state.calls["chat"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        if not isinstance(body.get("messages"), list) or not body["messages"]:
            state.bad_requests += 1
            return _json_response(
                _error_payload(
                    "'messages' must be a non-empty array.", "invalid_request_error", None, "messages"
                ),
                400,
            )
        stream = bool(body.get("stream"))
        state.enter()
        handed_off = False
        try:
            err = await fault_response("chat", cfg, started)
            if err is not None:
                return err
            delay = state.call_latency("chat", cfg)
            if delay > 0:
                await asyncio.sleep(delay)
            kind, content = chat_answer(body, cfg)
            state.kinds[kind] += 1
            model = str(body.get("model") or cfg.model)
            cid = next_id("chatcmpl")
            created = int(time.time())
            prompt_tokens = sum(
                _approx_tokens(_message_text(m.get("content")))
                for m in body["messages"]
                if isinstance(m, dict)
            )
            completion_tokens = _approx_tokens(content)
            usage = {
                "prompt_tokens": prompt_tokens,
                "completion_tokens": completion_tokens,
                "total_tokens": prompt_tokens + completion_tokens,
            }
            if not stream:
                state.record("chat", 200, started, kind=kind)
                return _json_response(
                    {
                        "id": cid,
                        "object": "chat.completion",
                        "created": created,
                        "model": model,
                        "system_fingerprint": "mock",
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": content, "refusal": None},
                                "logprobs": None,
                                "finish_reason": "stop",
                            }
                        ],
                        "usage": usage,
                    }
                )

            state.streams += 1
            opts = body.get("stream_options")
            include_usage = isinstance(opts, dict) and bool(opts.get("include_usage"))
            pieces = _stream_pieces(content, cfg.stream_chunk_words)
            chunk_delay = cfg.stream_chunk_delay
            released = {"done": False}

            def release() -> None:
                if not released["done"]:
                    released["done"] = True
                    state.leave()
                    state.record("chat", 200, started, kind=kind, stream=True)

            async def events():
                base = {
                    "id": cid,
                    "object": "chat.completion.chunk",
                    "created": created,
                    "model": model,
                    "system_fingerprint": "mock",
                }
                try:
                    yield _sse(
                        {
                            **base,
                            "choices": [
                                {
                                    "index": 0,
                                    "delta": {"role": "assistant", "content": ""},
                                    "logprobs": None,
                                    "finish_reason": None,
                                }
                            ],
                        }
                    )
                    for piece in pieces:
                        if chunk_delay:
                            await asyncio.sleep(chunk_delay)
                        yield _sse(
                            {
                                **base,
                                "choices": [
                                    {
                                        "index": 0,
                                        "delta": {"content": piece},
                                        "logprobs": None,
                                        "finish_reason": None,
                                    }
                                ],
                            }
                        )
                    yield _sse(
                        {
                            **base,
                            "choices": [{"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}],
                        }
                    )
                    if include_usage:
                        yield _sse({**base, "choices": [], "usage": usage})
                    yield b"data: [DONE]\n\n"
                finally:
                    release()

            handed_off = True
            return StreamingResponse(
                events(),
                media_type="text/event-stream",
                headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
            )
        finally:
            if not handed_off:
                state.leave()

    @app.post("/v1/embeddings")
    async def embeddings(request: Request) -> Response:
        started = time.perf_counter()
        state.calls["embeddings"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        body = await read_json(request)
        if isinstance(body, Response):
            return body
        raw = body.get("input")
        inputs: list[str | list[int]]
        if isinstance(raw, str):
            inputs = [raw]
        elif isinstance(raw, list) and raw and all(isinstance(x, int) for x in raw):
            inputs = [raw]  # one pre-tokenised input
        elif isinstance(raw, list) and raw and all(isinstance(x, (str, list)) for x in raw):
            inputs = raw
        else:
            state.bad_requests += 1
            return _json_response(
                _error_payload(
                    "'input' must be a string, an array of strings or an array of token arrays, "
                    "and must not be empty.",
                    "invalid_request_error",
                    None,
                    "input",
                ),
                400,
            )
        dim = body.get("dimensions") or cfg.embedding_dim
        if not isinstance(dim, int) or dim < 1 or dim > 65536:
            state.bad_requests += 1
            return _json_response(
                _error_payload("'dimensions' must be a positive integer.", "invalid_request_error", None),
                400,
            )
        use_b64 = body.get("encoding_format") == "base64"
        state.enter()
        try:
            err = await fault_response("embeddings", cfg, started)
            if err is not None:
                return err
            delay = state.call_latency("embeddings", cfg)
            if delay > 0:
                await asyncio.sleep(delay)
            data = []
            tokens = 0
            for i, item in enumerate(inputs):
                vec = embed_vector(item, dim)
                tokens += len(item) if isinstance(item, list) else _approx_tokens(item)
                emb: Any = (
                    base64.b64encode(vec.astype("<f4").tobytes()).decode("ascii") if use_b64 else vec.tolist()
                )
                data.append({"object": "embedding", "index": i, "embedding": emb})
            state.embedding_inputs += len(inputs)
            state.record("embeddings", 200, started, inputs=len(inputs))
            return _json_response(
                {
                    "object": "list",
                    "data": data,
                    "model": str(body.get("model") or cfg.embedding_model),
                    "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
                }
            )
        finally:
            state.leave()

    @app.get("/v1/models")
    async def models(request: Request) -> Response:
        state.calls["models"] += 1
        cfg = state.config
        denied = check_auth(request, cfg)
        if denied is not None:
            return denied
        return _json_response(
            {
                "object": "list",
                "data": [
                    {"id": cfg.model, "object": "model", "created": 0, "owned_by": "mock"},
                    {"id": cfg.embedding_model, "object": "model", "created": 0, "owned_by": "mock"},
                ],
            }
        )

    # --- control ------------------------------------------------------------------------------
    @app.get("/_mock/health")
    async def health() -> Response:
        return _json_response({"status": "ok"})

    @app.get("/_mock/stats")
    async def stats(include_calls: bool = False) -> Response:
        return _json_response(state.snapshot(include_calls=include_calls))

    @app.get("/_mock/config")
    async def get_config() -> Response:
        return _json_response(state.config.model_dump())

    @app.post("/_mock/config")
    async def set_config(request: Request) -> Response:
        try:
            changes = json.loads(await request.body() or b"{}")
        except ValueError:
            changes = None
        if not isinstance(changes, dict):
            return _json_response({"detail": "body must be a JSON object of MockConfig fields"}, 400)
        try:
            new = state.update_config(changes)
        except ValidationError as exc:
            return _json_response({"detail": json.loads(exc.json())}, 422)
        return _json_response(new.model_dump())

    @app.post("/_mock/reset")
    async def reset(restore_config: bool = False) -> Response:
        state.reset(restore_config=restore_config)
        return _json_response({"status": "reset", "config": state.config.model_dump()})

    return app


# ----------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------


class MockServer:
    """Serve a mock app on 127.0.0.1 from a background thread (own event loop).

    For code that opens its own HTTP connections (e.g. LightRAG's OpenAI helpers). ``port=0``
    picks a free port; read it from ``.port`` / ``.base_url`` after ``start()``. Query state over
    HTTP (``/_mock/stats``) rather than touching ``.state`` from another thread while busy.
    """

    def __init__(self, config: MockConfig | None = None, port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = create_mock_app(config)
        self.state: MockState = self.app.state.mock
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app, host="127.0.0.1", port=port, log_level=log_level, access_log=False, lifespan="off"
            )
        )
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MockServer:
        self._thread = threading.Thread(target=self._server.run, name="mock-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("mock LLM server failed to start")
            time.sleep(0.01)
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.mock_llm",
        description="OpenAI-compatible mock LLM + embedding server (binds 127.0.0.1 only).",
    )
    p.add_argument("--port", type=int, default=8999, help="TCP port on 127.0.0.1 (default 8999)")
    p.add_argument("--latency", type=float, default=0.0, help="seconds per chat call")
    p.add_argument("--latency-jitter", type=float, default=0.0, help="extra uniform [0, J] seconds")
    p.add_argument("--embedding-latency", type=float, default=None, help="seconds per embedding call")
    p.add_argument("--error-latency", type=float, default=0.0, help="seconds before an injected error")
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of a transient error")
    p.add_argument("--error-status", type=int, default=429, help="status of transient errors")
    p.add_argument("--retry-after", type=float, default=1.0, help="seconds advertised by 429s")
    p.add_argument("--fail-first", type=int, default=0, help="first N eligible calls fail")
    p.add_argument("--permanent-error", action="store_true", help="every call fails (400/401)")
    p.add_argument("--permanent-error-status", type=int, default=401)
    p.add_argument("--permanent-error-message", default=None)
    p.add_argument("--hang-rate", type=float, default=0.0, help="probability of a hang")
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument(
        "--error-endpoints",
        default="chat,embeddings",
        help="comma list of endpoints faults apply to (chat,embeddings)",
    )
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mock-gpt")
    p.add_argument("--embedding-model", default="mock-embedding")
    p.add_argument("--embedding-dim", type=int, default=384)
    p.add_argument("--max-entities", type=int, default=8)
    p.add_argument("--stream-chunk-words", type=int, default=8)
    p.add_argument("--stream-chunk-delay", type=float, default=0.0)
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    return p


def config_from_args(args: argparse.Namespace) -> MockConfig:
    return MockConfig(
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        embedding_latency=args.embedding_latency,
        error_latency=args.error_latency,
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        fail_first=args.fail_first,
        permanent_error=args.permanent_error,
        permanent_error_status=args.permanent_error_status,
        permanent_error_message=args.permanent_error_message,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        error_endpoints=[e.strip() for e in args.error_endpoints.split(",") if e.strip()],
        api_key=args.api_key,
        seed=args.seed,
        model=args.model,
        embedding_model=args.embedding_model,
        embedding_dim=args.embedding_dim,
        max_entities=args.max_entities,
        stream_chunk_words=args.stream_chunk_words,
        stream_chunk_delay=args.stream_chunk_delay,
    )


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValidationError as exc:
        parser.error(str(exc))
    print(
        f"mock LLM: http://127.0.0.1:{args.port}/v1 config={cfg.model_dump_json()}",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(
        create_mock_app(cfg),
        host="127.0.0.1",
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
    )


if __name__ == "__main__":
    main()
