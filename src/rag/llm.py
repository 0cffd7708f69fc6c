"""LLM functions for LightRAG 1.4.16: an OpenAI-compatible client and an offline stand-in.

LightRAG calls ``llm_model_func(prompt, system_prompt=..., history_messages=...,
keyword_extraction=..., stream=..., hashing_kv=..., enable_cot=..., ...)`` (see
lightrag/operate.py: extraction/gleaning via ``use_llm_func_with_cache``, summaries in
``_summarize_descriptions``, keywords in ``extract_keywords_only`` and answers in
``kg_query`` / ``naive_query``) and expects a ``str``, or an async iterator of text when
``stream=True``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlparse

import openai

from .retry import LazyOpenAIClient, build_retrying

logger = logging.getLogger(__name__)


TUPLE_DELIMITER = "<|#|>"
COMPLETION_DELIMITER = "<|COMPLETE|>"
OFFLINE_LABEL = (
    "[offline mode: no generative LLM is configured; below is the retrieved context most "
    "relevant to your question]"
)


def _setting(settings: Any, name: str, default: Any) -> Any:
    value = getattr(settings, name, default)
    return default if value is None else value


# ======================================================================================
# OpenAI-compatible chat completions
# ======================================================================================

#: Chat-completions parameters forwarded from LightRAG kwargs / llm_model_kwargs; LightRAG's
#: own kwargs (hashing_kv, _priority, enable_cot, keyword_extraction, token_tracker, ...) are not.
_API_KWARGS = frozenset(
    {
        "temperature",
        "top_p",
        "max_tokens",
        "max_completion_tokens",
        "stop",
        "seed",
        "presence_penalty",
        "frequency_penalty",
        "response_format",
        "logit_bias",
        "user",
        "extra_body",
        "extra_headers",
        "extra_query",
        "reasoning_effort",
        "service_tier",
        "metadata",
    }
)

_FENCE_RE = re.compile(r"^\s*```(?:json)?\s*|\s*```\s*$", re.IGNORECASE)


def _extract_json_object(text: str) -> str:
    """Best effort: the JSON object in a reply wrapped in fences or prose (LightRAG json_repairs it)."""
    stripped = _FENCE_RE.sub("", text.strip())
    start, end = stripped.find("{"), stripped.rfind("}")
    if start != -1 and end > start:
        return stripped[start : end + 1]
    return stripped


class OpenAICompatibleLLM:
    """Chat completions against any OpenAI-compatible endpoint with one shared client.

    LightRAG's bundled binding creates an ``AsyncOpenAI`` (SSL context and all, ~18 ms of CPU on
    the event loop) for every call; here one client and its connection pool serve all calls.
    """

    def __init__(self, settings: Any) -> None:
        self.model: str = _setting(settings, "llm_model", "gpt-4o-mini")
        self.base_url: str | None = getattr(settings, "llm_base_url", None)
        self._api_key = getattr(settings, "llm_api_key", None) or "not-needed"
        self._timeout = float(_setting(settings, "llm_timeout_seconds", 120.0))
        self._attempts = int(_setting(settings, "llm_max_retries", 3))
        self._client = LazyOpenAIClient(self.base_url, self._api_key, self._timeout)
        #: Set to False once the provider rejects response_format=json_object.
        self._json_mode = True

    @property
    def client(self) -> Any:
        return self._client.get()

    async def aclose(self) -> None:
        """Close the shared HTTP connection pool (call at shutdown)."""
        await self._client.aclose()

    async def _create(self, **request: Any) -> Any:
        async for attempt in build_retrying(self._attempts):
            with attempt:
                return await self.client.chat.completions.create(**request)
        raise RuntimeError("unreachable")  # pragma: no cover

    async def __call__(
        self,
        prompt: str,
        system_prompt: str | None = None,
        history_messages: list[dict[str, Any]] | None = None,
        keyword_extraction: bool = False,
        stream: bool | None = False,
        **kwargs: Any,
    ) -> str | AsyncIterator[str]:
        messages: list[dict[str, Any]] = []
        if system_prompt:
            messages.append({"role": "system", "content": system_prompt})
        messages.extend(history_messages or [])
        messages.append({"role": "user", "content": prompt})

        request: dict[str, Any] = {k: v for k, v in kwargs.items() if k in _API_KWARGS and v is not None}
        dropped = sorted(k for k in kwargs if k not in _API_KWARGS)
        if dropped:
            logger.debug("not forwarding LightRAG kwargs to the LLM API: %s", dropped)
        request.update(model=self.model, messages=messages)
        if keyword_extraction and self._json_mode and "response_format" not in request:
            request["response_format"] = {"type": "json_object"}

        if stream:
            return await self._stream(request)

        try:
            response = await self._create(**request)
        except openai.BadRequestError as exc:
            if "response_format" not in request or "response_format" in kwargs:
                raise
            # Some OpenAI-compatible servers reject json_object mode: ask in plain text instead.
            logger.warning("LLM endpoint rejected response_format=json_object (%s); not using it again", exc)
            self._json_mode = False
            request.pop("response_format")
            response = await self._create(**request)

        if not response.choices:
            raise RuntimeError(f"LLM endpoint returned no choices for model {self.model!r}")
        content = response.choices[0].message.content or ""
        return _extract_json_object(content) if keyword_extraction else content

    async def _stream(self, request: dict[str, Any]) -> AsyncIterator[str]:
        # Retries cover opening the stream; a failure after the first delta propagates.
        response = await self._create(**request, stream=True)

        async def deltas() -> AsyncIterator[str]:
            try:
                async for chunk in response:
                    if not chunk.choices:
                        continue
                    text = getattr(chunk.choices[0].delta, "content", None)
                    if text:
                        yield text
            finally:
                await response.close()

        return deltas()

    def describe(self) -> str:
        host = urlparse(self.base_url).netloc if self.base_url else "api.openai.com"
        return f"openai-compatible model={self.model} at {host}"

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAICompatibleLLM:
        return self  # LightRAG's asdict() deep-copies llm_model_func; share the client instead


# ======================================================================================
# Offline extractive stand-in
# ======================================================================================

_STOPWORDS = frozenset(
    """
    a about above after again against all also am an and any are aren as at be because been before being
    below between both but by can cannot could did didn do does doesn doing don down during each either
    else etc even ever every few for from further get gets got had has have having he her here hers
    herself him himself his how however i if in into is isn it its itself just least less let like may me
    might mine more most much must my myself neither no nor not now of off on once one only or other ought
    our ours ourselves out over own per perhaps rather same shall she should so some such than that the
    their theirs them themselves then there these they this those though through thus to too under until
    up upon us use used uses using very via was wasn we were weren what whatever when where whether which
    while who whom whose why will with within without would yes yet you your yours yourself yourselves
    meanwhile moreover therefore hence instead already still often usually always never sometimes
    new many several various certain another way ways thing things make makes made well back first second
    third last next today yesterday tomorrow mr mrs ms dr please tell explain describe give show list
    what's it's don't doesn't can't won't isn't aren't i'm we're they're you're
    import print return def class self none true false async await lambda elif bash
    """.split()
)
_QUESTION_WORDS = frozenset(
    "what which who whom whose why how when where does do did is are was were".split()
)
_CJK_STOP_CHARS = set("的了是在和与及或而也就都很把被对从向于以之其这那有为着个们中上下不没并等")

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_CJK_RUN_RE = re.compile(f"[{_CJK}]{{2,}}")
_CJK_CHAR_RE = re.compile(f"[{_CJK}]")
_LATIN = "A-Za-z0-9\u00c0-\u024f"
_CAP_WORD = rf"[A-Z][{_LATIN}'’&+.-]*"
_CONNECTOR = r"(?:of|the|and|for|de|du|la|le|von|van|der|&)"
_CAP_PHRASE_RE = re.compile(
    rf"(?<![{_LATIN}_-]){_CAP_WORD}(?:[ \t]+(?:{_CONNECTOR}[ \t]+)?{_CAP_WORD}){{0,5}}"
)
_FENCE_LANG_RE = re.compile(r"```[\w+-]*")
_POSSESSIVE_RE = re.compile(r"['’]s$")
_LOWER_WORD_RE = re.compile(rf"(?<![{_LATIN}_-])[a-z][a-z0-9]*(?:-[a-z0-9]+)*(?![{_LATIN}_-])")
_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:['’-][^\W_{_CJK}]+)*|[^\w\s]")
_CJK_QUERY_STOP_RE = re.compile(
    "为什么|如何|什么|怎么|怎样|哪些|哪个|是否|请问|吗|呢|请|的|了|是|在|和|与|及|或|有"
)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9\u00c0-\u024f])|(?<=[。！？；])|\n+")
_ORG_CUES = frozenset(
    "inc inc. corp corp. corporation ltd ltd. llc gmbh company co. university institute foundation agency "
    "association bank group council committee ministry department bureau laboratory labs society "
    "commission authority federation union".split()
)
_LOC_CUES = frozenset(
    "city river mountain mountains county street avenue lake island islands province state republic "
    "kingdom valley bay ocean sea desert park region district village town".split()
)
_EVENT_CUES = frozenset(
    "conference summit war championship festival election olympics cup meeting congress expo "
    "summit workshop symposium revolution crisis".split()
)
_PERSON_TITLES = frozenset("mr mr. mrs mrs. ms ms. dr dr. prof prof. president ceo professor sir".split())

MAX_ENTITIES_PER_CHUNK = 25
MAX_RELATIONS_PER_CHUNK = 30
MAX_DESCRIPTION_CHARS = 400
MAX_ANSWER_CHARS = 3000
MAX_PASSAGES = 6


def _clean_field(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """Make text safe for one field of LightRAG's record format (no delimiters, no newlines)."""
    text = text.replace("<|", "<").replace("|>", ">").replace("<SEP>", " ")
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        cut = text[:limit].rsplit(" ", 1)[0]
        text = (cut if len(cut) > limit // 2 else text[:limit]).rstrip() + "…"
    return text


def split_sentences(text: str) -> list[str]:
    """Sentence-ish units: split after . ! ? (before a capital), after CJK stops, and at newlines."""
    return [s.strip() for s in _SENTENCE_SPLIT_RE.split(text) if s and s.strip() and _WORD_RE.search(s)]


def _title(term: str) -> str:
    return " ".join(w[:1].upper() + w[1:] for w in term.split())


def _is_cjk(text: str) -> bool:
    return bool(_CJK_CHAR_RE.search(text))


def _trim_stop_edges(words: list[str]) -> list[str]:
    while words and words[0].lower().strip(".'’") in _STOPWORDS:
        words = words[1:]
    while words and words[-1].lower().strip(".'’") in _STOPWORDS:
        words = words[:-1]
    return words


class _Candidate:
    __slots__ = ("key", "forms", "count", "score", "first", "kind")

    def __init__(self, key: str, kind: str, first: int) -> None:
        self.key = key
        self.kind = kind
        self.forms: Counter[str] = Counter()
        self.count = 0
        self.score = 0.0
        self.first = first

    @property
    def name(self) -> str:
        return self.forms.most_common(1)[0][0]


def _entity_type(name: str, kind: str, sentence: str, allowed: dict[str, str]) -> str:
    def pick(*wanted: str) -> str | None:
        for w in wanted:
            if w in allowed:
                return allowed[w]
        return None

    words = name.lower().split()
    before = sentence[: max(0, sentence.find(name))].lower().split()[-1:] if name in sentence else []
    guess: str | None = None
    if kind == "cap":
        if any(w in _ORG_CUES for w in words):
            guess = pick("organization")
        elif any(w in _EVENT_CUES for w in words):
            guess = pick("event")
        elif any(w in _LOC_CUES for w in words) or (before and before[0] in {"in", "at", "near", "from"}):
            guess = pick("location")
        elif before and before[0] in _PERSON_TITLES:
            guess = pick("person")
    elif kind == "acronym" and any(c.isdigit() for c in name):
        guess = pick("artifact", "data")
    return guess or pick("concept", "other") or next(iter(allowed.values()), "other")


def extract_graph_records(text: str, entity_types: list[str] | None = None) -> str:
    """Heuristic entities/relations in LightRAG 1.4.16's extraction output format.

    Entities: capitalised (multi-word) phrases, acronyms, terms repeated in the chunk
    (words, word pairs, CJK n-grams). Relations: entities co-occurring in one sentence.
    Deterministic and purely lexical - a stand-in for an LLM, not a replacement.
    """
    allowed = {
        t.strip().lower().replace(" ", ""): t.strip().lower().replace(" ", "") for t in entity_types or []
    }
    allowed = {k: v for k, v in allowed.items() if k and not re.search(r"['()<>|/\\]", k)}
    if not allowed:
        allowed = {
            "concept": "concept",
            "organization": "organization",
            "person": "person",
            "location": "location",
            "event": "event",
            "other": "other",
        }

    sentences = split_sentences(_FENCE_LANG_RE.sub(" ", text))
    candidates: dict[str, _Candidate] = {}
    position = 0

    def add(key: str, form: str, kind: str, weight: float) -> None:
        nonlocal position
        position += 1
        cand = candidates.get(key)
        if cand is None:
            cand = candidates[key] = _Candidate(key, kind, position)
        cand.forms[form] += 1
        cand.count += 1
        cand.score += weight

    lower_counts: Counter[str] = Counter()
    lower_forms: dict[str, Counter[str]] = {}
    bigram_counts: Counter[tuple[str, str]] = Counter()
    cjk_counts: Counter[str] = Counter()

    for sentence in sentences:
        stripped_start = len(sentence) - len(sentence.lstrip("#*->•0123456789.)( \t\"'“"))
        for match in _CAP_PHRASE_RE.finditer(sentence):
            raw_words = match.group().split()
            raw_words[-1] = _POSSESSIVE_RE.sub("", raw_words[-1].rstrip(".,;:'’-"))
            words = _trim_stop_edges([w for w in raw_words if w])
            if not words:
                continue
            phrase = " ".join(words)
            if len(phrase) < 2 or len(phrase) > 80 or phrase.isdigit():
                continue
            at_start = match.start() <= stripped_start and words[0] == raw_words[0]
            is_acronym = len(words) == 1 and len(phrase) >= 2 and phrase.replace("&", "").isupper()
            is_camel = (
                len(words) == 1 and any(c.isupper() for c in phrase[1:]) or any(c.isdigit() for c in phrase)
            )
            kind = "acronym" if (is_acronym or is_camel) else "cap"
            if len(words) == 1 and kind == "cap" and at_start:
                # A capitalised first word is usually just grammar; count it only as weak evidence.
                add(phrase.lower(), phrase, kind, 0.5)
                continue
            add(phrase.lower(), phrase, kind, 3.0 + len(words) if kind == "cap" else 4.0)

        tokens = [(m.group(), m.start()) for m in _LOWER_WORD_RE.finditer(sentence)]
        previous: str | None = None
        previous_end = -1
        for word, start in tokens:
            if len(word) < 4 or word in _STOPWORDS or word.isdigit():
                previous = None
                continue
            key = word[:-1] if word.endswith("s") and not word.endswith("ss") and len(word) > 4 else word
            lower_counts[key] += 1
            lower_forms.setdefault(key, Counter())[word] += 1
            gap = sentence[previous_end:start] if previous is not None else ""
            if previous is not None and gap.strip() == "":
                bigram_counts[(previous, key)] += 1
            previous, previous_end = key, start + len(word)

        for run in _CJK_RUN_RE.findall(sentence):
            for n in range(2, 7):
                for i in range(len(run) - n + 1):
                    gram = run[i : i + n]
                    if gram[0] in _CJK_STOP_CHARS or gram[-1] in _CJK_STOP_CHARS:
                        continue
                    cjk_counts[gram] += 1

    # Single capitalised words seen only at sentence starts once are grammar, not names.
    for key in [k for k, c in candidates.items() if c.kind == "cap" and c.score < 1.0 and c.count < 2]:
        del candidates[key]

    in_bigrams: Counter[str] = Counter()
    for (a, b), count in bigram_counts.items():
        if count >= 2:
            in_bigrams[a] += count
            in_bigrams[b] += count
            form = f"{lower_forms[a].most_common(1)[0][0]} {lower_forms[b].most_common(1)[0][0]}"
            key = form.lower()
            if key not in candidates:
                cand = candidates[key] = _Candidate(key, "term", len(candidates) + 1000)
                cand.forms[_title(form)] += count
                cand.count = count
                cand.score = 2.0 * count + 1
    for key, count in lower_counts.items():
        count -= in_bigrams[key]  # a word seen only inside a frequent pair is that pair's entity
        if count >= 2 and key not in candidates and lower_forms[key].most_common(1)[0][0] not in candidates:
            form = lower_forms[key].most_common(1)[0][0]
            cand = candidates[form] = _Candidate(form, "term", len(candidates) + 1000)
            cand.forms[_title(form)] += count
            cand.count = count
            cand.score = 1.5 * count + min(len(form), 12) / 12
    if cjk_counts:
        frequent = {g: c for g, c in cjk_counts.items() if c >= 2}
        for gram, count in sorted(frequent.items(), key=lambda kv: (-len(kv[0]), -kv[1])):
            # Keep maximal n-grams: drop a gram whose longer extension is just as frequent.
            if any(
                gram in other and len(other) > len(gram) and frequent[other] >= count for other in frequent
            ):
                continue
            if gram not in candidates:
                cand = candidates[gram] = _Candidate(gram, "cjk", len(candidates) + 1000)
                cand.forms[gram] += count
                cand.count = count
                cand.score = count * (1 + len(gram) / 2)

    chosen = sorted(candidates.values(), key=lambda c: (-c.score, c.first))[:MAX_ENTITIES_PER_CHUNK]
    if not chosen:
        return COMPLETION_DELIMITER

    def mentions(cand: _Candidate, sentence: str) -> int:
        """Position of the entity in the sentence, or -1."""
        if cand.kind == "cjk":
            return sentence.find(cand.key)
        for form in (cand.name, cand.key):
            m = re.search(rf"(?<![{_LATIN}_-]){re.escape(form)}", sentence, flags=re.IGNORECASE)
            if m:
                return m.start()
        if cand.kind == "term":  # plural / singular variant
            m = re.search(
                rf"(?<![{_LATIN}_-]){re.escape(cand.key)}s?(?![{_LATIN}_-])", sentence, flags=re.IGNORECASE
            )
            if m:
                return m.start()
        return -1

    lines: list[str] = []
    per_sentence: list[list[tuple[int, _Candidate]]] = [[] for _ in sentences]
    for cand in chosen:
        described: list[str] = []
        for i, sentence in enumerate(sentences):
            pos = mentions(cand, sentence)
            if pos >= 0:
                per_sentence[i].append((pos, cand))
                if len(described) < 2:
                    described.append(sentence)
        name = _clean_field(cand.name, 120)
        description = _clean_field(" ".join(described) or f"{name} is mentioned in the source text.")
        etype = _entity_type(cand.name, cand.kind, described[0] if described else "", allowed)
        lines.append(TUPLE_DELIMITER.join(("entity", name, etype, description)))

    seen_pairs: set[frozenset[str]] = set()
    relations = 0
    for i, sentence in enumerate(sentences):
        found = sorted(per_sentence[i], key=lambda pc: pc[0])
        names = [c.name for _, c in found]
        pairs: list[tuple[str, str]] = []
        for a, b in zip(names, names[1:], strict=False):
            pairs.append((a, b))
        for b in names[2:4]:
            pairs.append((names[0], b))
        entity_words = {w.lower() for n in names for w in n.split()}
        keywords = [
            w.lower()
            for w in _LOWER_WORD_RE.findall(sentence)
            if len(w) >= 4 and w not in _STOPWORDS and w.lower() not in entity_words
        ]
        keyword_field = ",".join(list(dict.fromkeys(keywords))[:3]) if keywords else "co-occurrence"
        for a, b in pairs:
            pair = frozenset((a.lower(), b.lower()))
            if len(pair) < 2 or pair in seen_pairs or a.lower() in b.lower() or b.lower() in a.lower():
                continue
            seen_pairs.add(pair)
            lines.append(
                TUPLE_DELIMITER.join(
                    (
                        "relation",
                        _clean_field(a, 120),
                        _clean_field(b, 120),
                        _clean_field(keyword_field, 80),
                        _clean_field(sentence),
                    )
                )
            )
            relations += 1
            if relations >= MAX_RELATIONS_PER_CHUNK:
                break
        if relations >= MAX_RELATIONS_PER_CHUNK:
            break

    lines.append(COMPLETION_DELIMITER)
    return "\n".join(lines)


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


def extract_keywords_json(query: str) -> str:
    """The keywords JSON LightRAG expects, built from the query's own words.

    low-level: proper-noun phrases, content words and CJK pieces (matched against entities);
    high-level: runs of consecutive content words (matched against relation keywords).
    """
    low_level: list[str] = []
    for match in _CAP_PHRASE_RE.finditer(query):
        words = _trim_stop_edges(match.group().rstrip("?.!,;:").split())
        words = [w for w in words if w.lower() not in _QUESTION_WORDS]
        if words:
            low_level.append(_POSSESSIVE_RE.sub("", " ".join(words)))
    tokens = _query_tokens(query)
    content = [t for t in tokens if _is_content_word(t)]
    phrases: list[str] = []
    run: list[str] = []
    for token in [*tokens, ","]:
        if _is_content_word(token) and not _is_cjk(token):
            run.append(token)
            continue
        if len(run) >= 2:
            phrases.append(" ".join(run))
        run = []
    low_level.extend(content)
    high_level = phrases + [w for w in content if _is_cjk(w) or len(w) > 3]
    low_level = list(dict.fromkeys(k for k in low_level if k))[:10]
    high_level = list(dict.fromkeys(k for k in high_level if k))[:10]
    if not high_level and low_level:
        high_level = low_level[:3]
    return json.dumps(
        {"high_level_keywords": high_level, "low_level_keywords": low_level}, ensure_ascii=False
    )


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

    It recognises LightRAG 1.4.16's prompts (lightrag/prompt.py) and answers each in the exact
    format LightRAG parses: heuristic entity/relation records for extraction, nothing new for
    gleaning, merged descriptions for summaries, the query's own words as keywords, and, for
    the final answer, a clearly labelled extract of the retrieved context. It generates no
    text of its own and understands nothing: it exists so the service works without a model.
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
        if keyword_extraction or "---Real Data---\nUser Query:" in prompt:
            match = re.search(r"User Query:\s*(.*?)\n+---Output---", prompt, flags=re.DOTALL)
            return extract_keywords_json(match.group(1).strip() if match else prompt)
        if "identify and extract any **missed or incorrectly formatted** entities" in prompt:
            return COMPLETION_DELIMITER  # gleaning: the heuristics have nothing more to add
        if "Extract entities and relationships from the input text" in prompt:
            found = self._EXTRACT_RE.findall(prompt)
            types_match = self._TYPES_RE.search(prompt)
            types = [t.strip().strip("\"'") for t in types_match.group(1).split(",")] if types_match else None
            if not found:
                logger.warning("offline LLM: extraction prompt without an <Input Text> block; using it whole")
            body = found[-1] if found else prompt
            return await asyncio.to_thread(extract_graph_records, body, types)
        if "Description List:" in prompt and "summary" in prompt.lower():
            if len(prompt) < 4000:
                return summarize_descriptions(prompt)
            return await asyncio.to_thread(summarize_descriptions, prompt)
        if "---Context---" in system_prompt:
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


# ======================================================================================
# Factory
# ======================================================================================


def build_llm_func(settings: Any) -> Callable[..., Awaitable[str | AsyncIterator[str]]]:
    """LightRAG ``llm_model_func`` for ``settings.resolved_llm_provider`` ("openai" or "offline")."""
    provider = getattr(settings, "resolved_llm_provider", None) or "offline"
    if provider == "openai":
        return OpenAICompatibleLLM(settings)
    if provider == "offline":
        return OfflineExtractiveLLM()
    raise ValueError(f"unknown LLM provider {provider!r} (expected openai or offline)")


def llm_description(settings: Any) -> str:
    """One line for /health: which LLM answers, without secrets."""
    provider = getattr(settings, "resolved_llm_provider", None) or "offline"
    if provider == "openai":
        base_url = getattr(settings, "llm_base_url", None)
        host = urlparse(base_url).netloc if base_url else "api.openai.com"
        return f"openai-compatible model={_setting(settings, 'llm_model', 'gpt-4o-mini')} at {host}"
    return "offline-extractive (no generative LLM)"
