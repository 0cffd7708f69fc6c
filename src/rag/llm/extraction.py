"""Offline heuristic entity/relation extraction and the text helpers the offline LLM shares.

Purely lexical and deterministic: capitalised phrases, acronyms, repeated terms and CJK n-grams
become entities; entities co-occurring in a sentence become relations. Output is LightRAG
1.4.16's extraction record format (lightrag/prompt.py).
"""

from __future__ import annotations

import re
from collections import Counter

from ..prompts import COMPLETION_DELIMITER, TUPLE_DELIMITER

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
