"""Text helpers the offline LLM stand-in shares: sentence splitting, stop words, token and
capitalised-phrase patterns. (Entity/relation extraction itself is src/rag/zh_extractor.py.)"""

from __future__ import annotations

import re

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

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
_CJK_CHAR_RE = re.compile(f"[{_CJK}]")
_LATIN = "A-Za-z0-9\u00c0-\u024f"
_CAP_WORD = rf"[A-Z][{_LATIN}'’&+.-]*"
_CONNECTOR = r"(?:of|the|and|for|de|du|la|le|von|van|der|&)"
_CAP_PHRASE_RE = re.compile(
    rf"(?<![{_LATIN}_-]){_CAP_WORD}(?:[ \t]+(?:{_CONNECTOR}[ \t]+)?{_CAP_WORD}){{0,5}}"
)
_POSSESSIVE_RE = re.compile(r"['’]s$")
_WORD_RE = re.compile(r"[^\W_]+(?:['’-][^\W_]+)*", re.UNICODE)
_TOKEN_RE = re.compile(rf"[{_CJK}]+|[^\W_{_CJK}]+(?:['’-][^\W_{_CJK}]+)*|[^\w\s]")
_CJK_QUERY_STOP_RE = re.compile(
    "为什么|如何|什么|怎么|怎样|哪些|哪个|是否|请问|吗|呢|请|的|了|是|在|和|与|及|或|有"
)
_SENTENCE_SPLIT_RE = re.compile(r"(?<=[.!?])\s+(?=[\"'(\[]?[A-Z0-9\u00c0-\u024f])|(?<=[。！？；])|\n+")

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


def _is_cjk(text: str) -> bool:
    return bool(_CJK_CHAR_RE.search(text))


def _trim_stop_edges(words: list[str]) -> list[str]:
    while words and words[0].lower().strip(".'’") in _STOPWORDS:
        words = words[1:]
    while words and words[-1].lower().strip(".'’") in _STOPWORDS:
        words = words[:-1]
    return words
