"""Offline entity/relation extraction for Chinese, English and mixed technical prose.

Why: the offline LLM stand-in found only capitalised words and repeated n-grams, so on Chinese
prose every entity was a number fragment or filler (十五, 百分, 方米, 要求) and names mentioned
once (青龙水库, 西湖街道) were lost. This module segments Chinese with jieba's part-of-speech
tagger and chunks noun phrases: runs of noun-like tokens are merged, numerals/measure words/
fillers dropped, proper names (ns/nt/nr tags, suffixes such as 水库/街道/局/公司) kept even when
mentioned once. Code is handled apart: fenced blocks are skipped, identifiers and file names
(``main.py``, ``/insert``, ``run_pipeline``) are kept whole. Relations link phrases of one
clause, with the verbs between them as keywords. Deterministic and lexical: not a language model.

``extract_graph_records`` returns LightRAG's extraction record format, so the offline
LLM can answer an extraction prompt with it directly.

One module (~640 lines): the Chinese, English and code rules share one tokenisation and one
ranking of candidates per clause.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass, field

from lightrag.prompt import PROMPTS

logger = logging.getLogger(__name__)

TUPLE_DELIMITER: str = PROMPTS["DEFAULT_TUPLE_DELIMITER"]
COMPLETION_DELIMITER: str = PROMPTS["DEFAULT_COMPLETION_DELIMITER"]

MAX_ENTITIES = 25
MAX_RELATIONS = 30
MAX_DESCRIPTION_CHARS = 400
MAX_PHRASE_CHARS = 24

_CJK = "\u3400-\u4dbf\u4e00-\u9fff"
_CJK_RE = re.compile(f"[{_CJK}]")
_FENCED_RE = re.compile(r"^[ \t]*(```|~~~).*?^[ \t]*\1[ \t]*$", re.DOTALL | re.MULTILINE)
_MERMAID_ARROW_RE = re.compile(r"-->|==>|-\.->")
#: Code-like tokens kept whole: `inline code`, file names, URL paths, dotted/snake/Camel names.
_FILE_EXT = (
    r"py|pyi|md|txt|json|jsonl|yaml|yml|toml|ini|cfg|env|js|ts|tsx|jsx|html|css|sh|sql|lua|go|rs|"
    r"java|c|h|cpp|log|csv|pdf|docx|xlsx|conf|lock"
)
_CODE_RE = re.compile(
    r"`(?P<tick>[^`\n]{1,60})`"
    rf"|(?P<file>(?<![\w/.-])[\w.-]*[A-Za-z0-9_]\.(?:{_FILE_EXT})(?![\w]))"
    r"|(?P<path>(?<![\w/.:])/[A-Za-z_][\w-]*(?:/[\w{}:-]+)*/?)"
    r"|(?P<ident>(?<![\w.])(?:[A-Za-z_]\w*\.)+[A-Za-z_]\w*(?:\(\))?"
    r"|(?<![\w.])[A-Za-z][A-Za-z0-9]*_[A-Za-z0-9_]+(?:\(\))?"
    r"|(?<![\w.])[A-Za-z_]\w*\(\))"
)
_SENTENCE_RE = re.compile(r"(?<=[。！？；!?;])|\n+|(?<=[.])\s+(?=[A-Z\"'(\[])")
_CLAUSE_RE = re.compile(r"[，,（）()\[\]【】“”\"|]")  # not 、 or ：, which join list items and definitions

# --- Chinese --------------------------------------------------------------------------
#: jieba POS tags that can be part of a noun phrase.
_NOUN_TAGS = frozenset(
    {"n", "nr", "nrfg", "nrt", "ns", "nt", "nz", "ng", "vn", "an", "eng", "j", "nl", "code"}
)
_PROPER_TAGS = {"nr": "person", "nrfg": "person", "nrt": "person", "ns": "location", "nt": "organization"}
_VERB_TAGS = frozenset({"v", "vd", "vg", "vi", "vq", "vn"})
_LOCATION_SUFFIXES = (
    "水库", "街道", "社区", "小区", "新区", "开发区", "园区", "村", "镇", "乡", "区", "县", "市", "省",
    "路", "大道", "河", "江", "湖", "山", "桥", "公园", "广场", "流域", "港", "机场", "车站",
)  # fmt: skip
_ORG_SUFFIXES = (
    "局", "厂", "公司", "集团", "大学", "学院", "研究院", "研究所", "委员会", "办事处", "银行",
    "医院", "学校", "协会", "政府", "部门", "厅", "署", "中心", "实验室", "基金会", "团队",
)  # fmt: skip
#: Single-token phrases that carry no entity on their own (fillers, quantities, generic nouns).
_ZH_STOP = frozenset(
    """
    要求 问题 情况 方面 时候 部分 内容 方式 方法 过程 结果 目标 需要 东西 地方 时间 百分 方米 平方米
    左右 以上 以下
    之间 其中 什么 这个 那个 这些 那些 一些 所有 每个 各个 我们 你们 他们 它们 自己 大家 作用 影响 意义 特点
    原因 条件 程度 水平 效果 基础 关系 状态 数量 类型 步骤 阶段 版本 文档 文件 说明 示例 例子 注意 建议 说明书
    城市 国家 地区 全国 本地 当地 国内 国外 海外 全球 全市 全省
    优先级 日期 编号 名称 描述 备注 参数 选项 功能 问题点 行 处 次 个 种 项 点 者 性 化 率 度 量 值 型
    """.split()
)
_ZH_FUNCTION_CHARS = set("的了着过地得之与和及或而并且也就都把被对从向于以其这那该此每各某")

# --- English and code -----------------------------------------------------------------
_EN_STOP = frozenset(
    """
    a about above after again against all also am an and any are as at be because been before being below
    between both but by can cannot could did do does doing down during each either else etc even ever every
    few for from further get gets got had has have having he her here hers him his how however i if in into
    is it its itself just least less let like may me might more most much must my no nor not now of off on
    once one only or other our ours out over own per perhaps rather same shall she should so some such than
    that the their them then there these they this those though through thus to too under until up upon us
    use used uses using very via was we were what whatever when where whether which while who whom whose why
    will with within without would yes yet you your new many several various another way ways thing things
    make makes made well first second third last next today please see note example examples step steps
    e.g i.e vs
    """.split()
)
#: Code words that are never entities on their own.
_CODE_STOP = frozenset(
    """
    py md js ts json yaml yml txt html css sh def async await import from return self cls none null true
    false class print lambda elif else if for while try except finally raise with as pass yield const let
    var function func fn new str int float bool dict list tuple set bytes object any type args kwargs
    http https get post put patch delete api url id ids ok err error todo fixme main init test tests src
    lib bin tmp var etc usr code value values key keys data item items name names open read write run
    close start stop len range sum min max sorted format join split strip append update
    """.split()
)
_CAP_WORD = r"[A-Z][A-Za-z0-9'’&+.-]*"
_CONNECTOR = r"(?:of|the|and|for|de|von|van|der|&)"
_CAP_PHRASE_RE = re.compile(
    rf"(?<![A-Za-z0-9_-]){_CAP_WORD}(?:[ \t]+(?:{_CONNECTOR}[ \t]+)?{_CAP_WORD}){{0,5}}"
)
_EN_WORD_RE = re.compile(r"(?<![A-Za-z0-9_-])[A-Za-z][A-Za-z0-9]*(?:-[A-Za-z0-9]+)*(?![A-Za-z0-9_])")
_ORG_CUES = frozenset(
    "inc corp corporation ltd llc gmbh company university institute foundation agency association bank "
    "group council committee ministry department bureau laboratory labs society commission authority "
    "federation union team".split()
)
_LOC_CUES = frozenset(
    "city river mountain county street avenue lake island province state republic kingdom valley bay "
    "ocean sea desert park region district village town reservoir".split()
)
_PERSON_TITLES = frozenset("mr mrs ms dr prof president ceo professor sir".split())


@dataclass
class Entity:
    name: str
    type: str
    description: str


@dataclass
class Relation:
    source: str
    target: str
    keywords: str
    description: str


@dataclass
class Extraction:
    entities: list[Entity] = field(default_factory=list)
    relations: list[Relation] = field(default_factory=list)


@dataclass
class _Candidate:
    name: str
    kind: str  # location / organization / person / concept / code
    count: int = 0
    score: float = 0.0
    first: int = 0
    sentences: list[int] = field(default_factory=list)


@dataclass
class _Mention:
    key: str
    start: int  # character offset in the sentence


@dataclass
class _Token:
    word: str
    flag: str
    start: int


# --------------------------------------------------------------------------------------
# jieba, loaded once and quietly
# --------------------------------------------------------------------------------------

_jieba_lock = threading.Lock()
_posseg = None


def load_jieba() -> None:
    """Load jieba's bundled dictionary (≈0.5-1 s, no network); call off the event loop."""
    global _posseg
    if _posseg is not None:
        return
    with _jieba_lock:
        if _posseg is None:
            import jieba
            import jieba.posseg as posseg

            jieba.setLogLevel(logging.WARNING)
            logging.getLogger("jieba").setLevel(logging.WARNING)
            jieba.initialize()
            _posseg = posseg


def _pos_tokens(text: str, offset: int) -> list[_Token]:
    load_jieba()
    tokens: list[_Token] = []
    pos = 0
    for pair in _posseg.lcut(text):  # type: ignore[union-attr]
        word, flag = pair.word, pair.flag
        start = text.find(word, pos)
        if start < 0:
            start = pos
        pos = start + len(word)
        tokens.append(_Token(word, flag, offset + start))
    return tokens


# --------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------


def clean_field(text: str, limit: int = MAX_DESCRIPTION_CHARS) -> str:
    """Make text safe for one field of LightRAG's record format (no delimiters, no newlines)."""
    text = text.replace("<|", "<").replace("|>", ">").replace("<SEP>", " ")
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > limit:
        text = text[:limit].rstrip() + "…"
    return text


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_RE.split(text) if s and s.strip()]


def strip_code_blocks(text: str) -> str:
    """Drop fenced code blocks (their tokens - def, async, md - are noise) and markdown furniture."""
    text = _FENCED_RE.sub("\n", text)
    text = _MERMAID_ARROW_RE.sub(" ", text)
    text = re.sub(r"^[ \t]*(?:#{1,6}|[-*+>]|\d+[.)])[ \t]+", "", text, flags=re.MULTILINE)
    text = re.sub(r"\*\*|__|~~", "", text)
    text = re.sub(r"^[ \t]*\|?[-:| \t]+\|[-:| \t]*$", "", text, flags=re.MULTILINE)  # table rules
    return text


def _is_cjk(text: str) -> bool:
    return bool(_CJK_RE.search(text))


def _code_name(match: re.Match[str]) -> str | None:
    name = match.group("tick") or match.group(0)
    name = name.strip().strip("'\"")
    if not name or len(name) > 60 or _is_cjk(name):
        return None
    if " " in name:  # `pip install foo`: a command, not a name
        return None
    base = name[:-2] if name.endswith("()") else name
    if re.fullmatch(r"[\d.,:%+-]+", base) or base.lower() in _CODE_STOP or len(base) < 2:
        return None
    return name


def _suffix_kind(phrase: str) -> str | None:
    if len(phrase) < 3:
        return None
    if phrase.endswith(_ORG_SUFFIXES):
        return "organization"
    if phrase.endswith(_LOCATION_SUFFIXES):
        return "location"
    return None


# --------------------------------------------------------------------------------------
# Phrase finding
# --------------------------------------------------------------------------------------


class _Collector:
    def __init__(self) -> None:
        self.candidates: dict[str, _Candidate] = {}
        self.order = 0

    def add(self, name: str, kind: str, weight: float, sentence: int) -> str | None:
        name = name.strip()
        if not name or len(name) > MAX_PHRASE_CHARS * (3 if not _is_cjk(name) else 1):
            return None
        key = name.lower()
        cand = self.candidates.get(key)
        if cand is None:
            self.order += 1
            cand = self.candidates[key] = _Candidate(name, kind, first=self.order)
        elif kind != "concept" and cand.kind == "concept":
            cand.kind = kind
        cand.count += 1
        cand.score += weight
        if sentence not in cand.sentences:
            cand.sentences.append(sentence)
        return key


def _chinese_phrases(tokens: list[_Token]) -> list[tuple[str, str, float, int, list[_Token]]]:
    """Noun phrases of a CJK clause: (name, kind, weight, start, tokens)."""
    out: list[tuple[str, str, float, int, list[_Token]]] = []
    run: list[_Token] = []

    def flush() -> None:
        nonlocal run
        toks = run
        run = []
        # Trim fillers, verbal nouns and function words at both edges.
        while toks and (toks[0].word in _ZH_STOP or toks[0].flag in {"vn", "an"} and len(toks) > 1):
            toks = toks[1:]
        while toks and toks[-1].word in _ZH_STOP:
            toks = toks[:-1]
        if not toks:
            return
        name = "".join(
            t.word if i == 0 or not (toks[i - 1].flag == "eng" and t.flag == "eng") else " " + t.word
            for i, t in enumerate(toks)
        )
        if len(name) > MAX_PHRASE_CHARS or re.fullmatch(r"[\W\d_]+", name) or len(name) < 2:
            return  # a lone character (中, 表) is a fragment, never an entity
        flags = {t.flag for t in toks}
        kind = "concept"
        weight = 1.0
        for t in toks:
            if t.flag in _PROPER_TAGS and (_PROPER_TAGS[t.flag] != "person" or len(toks) == 1):
                kind = _PROPER_TAGS[t.flag]
        if suffix := _suffix_kind(name):
            kind = suffix
        if kind != "concept":
            weight = 3.0  # proper names count even when mentioned once
        elif len(toks) >= 2 and len(name) >= 3:
            weight = 1.5  # a compound noun (防洪能力) says more than a bare 系统
        elif flags <= {"vn", "an"} or (len(name) < 2 and "eng" not in flags):
            return
        if "code" in flags and len(toks) == 1:
            kind = "code"
            weight = 2.5
        elif "eng" in flags and len(toks) == 1:
            word = toks[0].word
            if word.lower() in _EN_STOP or word.lower() in _CODE_STOP or len(word) < 2:
                return
            weight = 2.0 if word[:1].isupper() else 0.8
        out.append((name, kind, weight, toks[0].start, toks))

    for token in tokens:
        word, flag = token.word, token.flag
        if flag == "x" and word == " " and run and run[-1].flag == "eng":
            continue  # "Redis Stream": English words separated by a space stay one phrase
        noun_like = flag in _NOUN_TAGS or (flag == "eng" and word.lower() not in _EN_STOP)
        if flag in {"m", "q", "mq"} or re.search(r"\d", word) or word in _ZH_FUNCTION_CHARS:
            noun_like = False
        if not noun_like:
            flush()
            continue
        if run and (flag in _PROPER_TAGS or flag == "code") and run[-1].flag not in _PROPER_TAGS:
            flush()  # a proper name or identifier starts a new phrase (规划局|浙江大学)
        if run and len(run) >= 4:
            flush()
        elif (
            run
            and len(run[-1].word) >= 2
            and _suffix_kind("".join(t.word for t in run))
            and not (len(word) >= 2 and _suffix_kind(word))
        ):
            flush()  # 规划局|委托: a name ends at its suffix unless another name part follows (杭州市规划局)
        run.append(token)
    flush()
    return out


def _english_phrases(clause: str, offset: int) -> list[tuple[str, str, float, int]]:
    """Capitalised names, acronyms and CamelCase words of an English clause."""
    out: list[tuple[str, str, float, int]] = []
    for match in _CAP_PHRASE_RE.finditer(clause):
        words = match.group().split()
        words[-1] = re.sub(r"['’]s$", "", words[-1].rstrip(".,;:'’-"))
        while words and words[0].lower().strip(".") in _EN_STOP:
            words = words[1:]
        while words and words[-1].lower().strip(".") in _EN_STOP:
            words = words[:-1]
        if not words:
            continue
        phrase = " ".join(words)
        if len(phrase) < 2 or phrase.isdigit() or phrase.lower() in _CODE_STOP:
            continue
        start = clause.find(words[0], match.start())
        at_start = clause[:start].strip(" \t\"'“(") == ""
        low = [w.lower().strip(".") for w in words]
        before = clause[: match.start()].lower().split()[-1:]
        kind = "concept"
        if any(w in _ORG_CUES for w in low):
            kind = "organization"
        elif any(w in _LOC_CUES for w in low) or (before and before[0] in {"in", "at", "near"}):
            kind = "location"
        elif before and before[0].strip(".") in _PERSON_TITLES:
            kind = "person"
        acronym = len(words) == 1 and (phrase.isupper() or any(c.isupper() for c in phrase[1:]))
        if len(words) == 1 and at_start and not acronym:
            weight = 0.5  # a capitalised first word is usually just grammar
        else:
            weight = 3.0 + len(words) if not acronym else 3.0
        out.append((phrase, kind, weight, offset + start))
    return out


# --------------------------------------------------------------------------------------
# Extraction
# --------------------------------------------------------------------------------------


def extract(text: str) -> Extraction:
    """Entities and relations of one chunk (synchronous, CPU: call it via ``asyncio.to_thread``)."""
    sentences = split_sentences(strip_code_blocks(text))
    collector = _Collector()
    # sentence index -> list of (clause index, mention)
    mentions: list[list[tuple[int, _Mention]]] = [[] for _ in sentences]
    clause_spans: list[list[tuple[int, int]]] = [[] for _ in sentences]
    verbs: list[list[_Token]] = [[] for _ in sentences]
    en_words: Counter[str] = Counter()
    en_bigrams: Counter[str] = Counter()

    for s_index, sentence in enumerate(sentences):
        # 1. code tokens, kept whole and masked out of the prose
        prose = list(sentence)
        for match in _CODE_RE.finditer(sentence):
            name = _code_name(match)
            if name:
                key = collector.add(name, "code", 2.5, s_index)
                if key:
                    mentions[s_index].append((0, _Mention(key, match.start())))
            for i in range(match.start(), match.end()):
                prose[i] = " "
        masked = "".join(prose)
        # clause spans
        start = 0
        for m in _CLAUSE_RE.finditer(masked):
            clause_spans[s_index].append((start, m.start()))
            start = m.end()
        clause_spans[s_index].append((start, len(masked)))

        if _is_cjk(masked):
            tokens = _pos_tokens(masked, 0)
            verbs[s_index] = [
                t for t in tokens if len(t.word) >= 2 and t.word not in _ZH_STOP and t.flag[:1] in {"v", "n"}
            ]
            # phrases never cross clause punctuation
            for c_start, c_end in clause_spans[s_index]:
                clause_tokens = [t for t in tokens if c_start <= t.start < c_end]
                for name, kind, weight, pos, _toks in _chinese_phrases(clause_tokens):
                    key = collector.add(name, kind, weight, s_index)
                    if key:
                        mentions[s_index].append((0, _Mention(key, pos)))
        else:
            for name, kind, weight, pos in _english_phrases(masked, 0):
                key = collector.add(name, kind, weight, s_index)
                if key:
                    mentions[s_index].append((0, _Mention(key, pos)))
            words = [
                (m.group().lower(), m.start())
                for m in _EN_WORD_RE.finditer(masked)
                if m.group().islower() and len(m.group()) >= 4
            ]
            previous: tuple[str, int] | None = None
            for word, pos in words:
                if word in _EN_STOP or word in _CODE_STOP:
                    previous = None
                    continue
                en_words[word] += 1
                if previous and masked[previous[1] + len(previous[0]) : pos].strip() == "":
                    en_bigrams[f"{previous[0]} {word}"] += 1
                previous = (word, pos)

    # Repeated English terms (words, word pairs) become concepts, as in the former extractor.
    for phrase, count in list(en_bigrams.items()) + list(en_words.items()):
        if count < 2 or phrase in collector.candidates:
            continue
        if " " not in phrase and any(phrase in bg.split() and c >= count for bg, c in en_bigrams.items()):
            continue
        for s_index, sentence in enumerate(sentences):
            if _is_cjk(sentence):
                continue
            for m in re.finditer(rf"(?<![A-Za-z0-9_-]){re.escape(phrase)}(?![A-Za-z0-9_])", sentence.lower()):
                key = collector.add(phrase, "concept", 1.0 + 0.5 * phrase.count(" "), s_index)
                if key:
                    mentions[s_index].append((0, _Mention(key, m.start())))

    # Single weak mentions (a bare common noun once, a sentence-initial capital) are dropped.
    chosen = [c for c in collector.candidates.values() if c.score >= 1.5 or c.count >= 2]
    chosen.sort(key=lambda c: (-c.score, c.first))
    chosen = chosen[:MAX_ENTITIES]
    keep = {c.name.lower() for c in chosen}
    result = Extraction()
    for cand in chosen:
        described = " ".join(sentences[i] for i in cand.sentences[:2])
        result.entities.append(Entity(cand.name, cand.kind, described))

    # Relations: phrases in the same clause, verbs between them as keywords.
    seen: set[frozenset[str]] = set()
    for s_index, sentence in enumerate(sentences):
        found = sorted(
            {m.key: m for _, m in mentions[s_index] if m.key in keep}.values(), key=lambda m: m.start
        )
        spans = clause_spans[s_index]

        def clause_of(pos: int, spans: list[tuple[int, int]] = spans) -> int:
            for i, (a, b) in enumerate(spans):
                if a <= pos < b or (i == len(spans) - 1 and pos >= a):
                    return i
            return 0

        for i, a in enumerate(found):
            for b in found[i + 1 : i + 3]:
                pair = frozenset((a.key, b.key))
                if len(pair) < 2 or pair in seen or a.key in b.key or b.key in a.key:
                    continue
                if clause_of(a.start) != clause_of(b.start):
                    continue
                a_end = a.start + len(collector.candidates[a.key].name)
                between = [t for t in verbs[s_index] if a_end <= t.start and t.start + len(t.word) <= b.start]
                # the verbs between the two phrases; else a word jieba tagged as noun (委托 is "n")
                between_verbs = [t.word for t in between if t.flag in _VERB_TAGS - {"vn"}] or [
                    t.word for t in between
                ][:2]
                if not between_verbs and not _is_cjk(sentence):
                    between_verbs = [
                        w.lower()
                        for w in _EN_WORD_RE.findall(sentence[a.start + len(a.key) : b.start])
                        if w.islower() and w not in _EN_STOP and len(w) >= 3
                    ][:3]
                if not between_verbs:
                    clause_verbs = [
                        t.word
                        for t in verbs[s_index]
                        if clause_of(t.start) == clause_of(a.start) and t.flag in _VERB_TAGS - {"vn"}
                    ]
                    between_verbs = clause_verbs[:1]
                keywords = ",".join(dict.fromkeys(between_verbs)) or "related"
                seen.add(pair)
                src = collector.candidates[a.key].name
                tgt = collector.candidates[b.key].name
                result.relations.append(Relation(src, tgt, keywords, sentence))
                if len(result.relations) >= MAX_RELATIONS:
                    break
            if len(result.relations) >= MAX_RELATIONS:
                break
        if len(result.relations) >= MAX_RELATIONS:
            break
    return result


def _entity_type(kind: str, allowed: dict[str, str]) -> str:
    wanted = {
        "person": ("person",),
        "location": ("location",),
        "organization": ("organization",),
        "code": ("artifact", "method", "concept"),
        "concept": ("concept",),
    }.get(kind, ("concept",))
    for w in (*wanted, "concept", "other"):
        if w in allowed:
            return allowed[w]
    return next(iter(allowed.values()), "concept")


def extract_graph_records(text: str, entity_types: list[str] | None = None) -> str:
    """Entities/relations of ``text`` in LightRAG's extraction output format."""
    allowed = {
        t.strip().lower().replace(" ", ""): t.strip().lower().replace(" ", "") for t in entity_types or []
    }
    allowed = {k: v for k, v in allowed.items() if k and not re.search(r"['()<>|/\\]", k)}
    if not allowed:
        allowed = {k: k for k in ("person", "organization", "location", "concept", "artifact", "other")}
    result = extract(text)
    lines = [
        TUPLE_DELIMITER.join(
            ("entity", clean_field(e.name, 120), _entity_type(e.type, allowed), clean_field(e.description))
        )
        for e in result.entities
    ]
    lines.extend(
        TUPLE_DELIMITER.join(
            (
                "relation",
                clean_field(r.source, 120),
                clean_field(r.target, 120),
                clean_field(r.keywords, 80),
                clean_field(r.description),
            )
        )
        for r in result.relations
    )
    lines.append(COMPLETION_DELIMITER)
    return "\n".join(lines)


_QUESTION_WORDS = frozenset(
    """
    什么 哪个 哪些 哪里 哪儿 如何 怎么 怎样 怎么样 为什么 为何 是否 多少 几个 多久 请问 吗 呢 谁
    what which who whom whose why how when where does do did is are was were can could should
    """.split()
)


def extract_keywords_json(query: str) -> str:
    """LightRAG's query keywords JSON from the query's own phrases (no model).

    low-level (matched against entities): noun phrases, names and identifiers of the query;
    high-level (matched against relation keywords): its verbs and content words.
    """
    import json

    low: list[str] = []
    high: list[str] = []
    text = query.strip()
    masked = list(text)
    for match in _CODE_RE.finditer(text):
        if name := _code_name(match):
            low.append(name)
        for i in range(match.start(), match.end()):
            masked[i] = " "
    prose = "".join(masked)
    if _is_cjk(prose):
        tokens = [t for t in _pos_tokens(prose, 0) if t.word not in _QUESTION_WORDS]
        spans = [0] + [m.end() for m in _CLAUSE_RE.finditer(prose)] + [len(prose) + 1]
        for a, b in zip(spans, spans[1:], strict=False):
            for name, _kind, _w, _pos, toks in _chinese_phrases([t for t in tokens if a <= t.start < b]):
                low.append(name)
                if len(toks) > 1:
                    low.extend(t.word for t in toks if len(t.word) >= 2 and t.word not in _ZH_STOP)
        high.extend(
            t.word for t in tokens if len(t.word) >= 2 and t.flag[:1] in {"v", "n"} and t.word not in _ZH_STOP
        )
    else:
        low.extend(name for name, *_ in _english_phrases(prose, 0))
        words = [w for w in _EN_WORD_RE.findall(prose) if w.lower() not in _EN_STOP | _QUESTION_WORDS]
        low.extend(w for w in words if len(w) > 2)
        high.extend(w.lower() for w in words if len(w) > 3)
    low = list(dict.fromkeys(k for k in low if k.lower() not in _QUESTION_WORDS))[:10]
    high = list(dict.fromkeys(high))[:10] or low[:3]
    return json.dumps({"high_level_keywords": high, "low_level_keywords": low}, ensure_ascii=False)
