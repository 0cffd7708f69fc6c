"""Decode uploaded plain-text bytes: a BOM decides, else UTF-8, else GB18030 (GBK), else Windows-1252.

Why: Chinese Windows tools still save .txt as GBK, and the former fallback (Windows-1252)
"decodes" GBK bytes into mojibake that would be indexed as text. GB18030 is tried first and
kept only when the result looks like Chinese text; Western legacy text still falls through
to Windows-1252; anything else is refused with a clear error instead of being guessed at.
"""

from __future__ import annotations

import codecs
import re

#: At most this share of the non-ASCII characters of a GB18030 decoding may be implausible
#: (private use, rare CJK extensions, control characters) before it is treated as a misread.
MAX_IMPLAUSIBLE_SHARE = 0.02
#: Western text misread as GBK turns "è" + letter into a lone ideograph touching Latin letters
#: ("tr鑣 bien"); in real Chinese most ideographs stand in runs of several.
MAX_WEDGED_SHARE = 0.3
_WEDGED_RE = re.compile(
    r"(?<![\u4e00-\u9fff])(?:(?<=[A-Za-z])[\u4e00-\u9fff](?![\u4e00-\u9fff])"
    r"|[\u4e00-\u9fff](?=[A-Za-z]))"
)
_CJK_RE = re.compile(r"[\u4e00-\u9fff]")
_CONTROL_RE = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")


class TextDecodingError(ValueError):
    """The bytes are not text in a supported encoding (UTF-8, UTF-16, GB18030/GBK)."""


def _plausible(ch: str) -> bool:
    cp = ord(ch)
    return (
        0x4E00 <= cp <= 0x9FFF  # CJK unified ideographs
        or 0x3000 <= cp <= 0x303F  # CJK symbols and punctuation
        or 0xFF00 <= cp <= 0xFFEF  # full-width forms
        or 0x2000 <= cp <= 0x206F  # general punctuation (“ ” … —)
        or 0x2100 <= cp <= 0x27BF  # letterlike, arrows, math, box drawing, shapes, dingbats
        or 0x3040 <= cp <= 0x30FF  # kana (GBK has them)
        or 0x3100 <= cp <= 0x312F  # bopomofo
        or 0x0391 <= cp <= 0x03C9  # Greek
        or 0x0401 <= cp <= 0x0451  # Cyrillic
        or 0x00A0 <= cp <= 0x00FF  # Latin-1 symbols (· × ÷ °)
        or 0x0100 <= cp <= 0x01DC  # pinyin letters with tones
        or 0xF900 <= cp <= 0xFAFF  # CJK compatibility ideographs
        or 0xFE30 <= cp <= 0xFE4F  # CJK compatibility forms
    )


def _looks_like_chinese_text(text: str) -> bool:
    non_ascii = [c for c in text if ord(c) > 0x7F]
    if not non_ascii:
        return True
    bad = sum(1 for c in non_ascii if not _plausible(c))
    if bad > MAX_IMPLAUSIBLE_SHARE * len(non_ascii) or _CONTROL_RE.search(text):
        return False
    cjk = len(_CJK_RE.findall(text))
    return cjk == 0 or len(_WEDGED_RE.findall(text)) <= MAX_WEDGED_SHARE * cjk


def decode_text_bytes(data: bytes) -> str:
    """Text of an uploaded file, never mojibake: a BOM decides, else UTF-8, GB18030, Windows-1252.

    Raises ``TextDecodingError`` (a ``ValueError``; the API answers 4xx) for anything else:
    NUL bytes without a BOM (binary, or UTF-16 without BOM), or too many control characters.
    """
    if data.startswith(codecs.BOM_UTF8):
        try:
            return data[len(codecs.BOM_UTF8) :].decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TextDecodingError(f"file starts with a UTF-8 BOM but is not valid UTF-8: {exc}") from exc
    for bom, codec in (
        (codecs.BOM_UTF32_LE, "utf-32-le"),
        (codecs.BOM_UTF32_BE, "utf-32-be"),
        (codecs.BOM_UTF16_LE, "utf-16-le"),
        (codecs.BOM_UTF16_BE, "utf-16-be"),
    ):
        if data.startswith(bom):
            try:
                return data[len(bom) :].decode(codec)
            except UnicodeDecodeError as exc:
                raise TextDecodingError(f"file starts with a {codec} BOM but does not decode: {exc}") from exc
    if b"\x00" in data:
        raise TextDecodingError("contains NUL bytes; not a text file (UTF-16 needs a BOM)")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        text = None
        for codec, accept in (("gb18030", _looks_like_chinese_text), ("cp1252", lambda _t: True)):
            try:
                candidate = data.decode(codec)
            except UnicodeDecodeError:
                continue
            if accept(candidate):
                text = candidate
                break
        if text is None:
            raise TextDecodingError(
                f"not UTF-8 (invalid byte at offset {utf8_error.start}), UTF-16 with a BOM, "
                "GBK/GB18030 Chinese or Windows-1252 text; save it as UTF-8 and upload again"
            ) from utf8_error
    if text and _control_characters(text) > max(8, len(text) // 100):
        raise TextDecodingError("too many control characters; not a text file")
    return text


#: Characters scanned per regex call: one call over a 100 MB text held the GIL (and so the event
#: loop, though it runs in a worker thread) for half a second.
_SCAN_SLICE = 1 << 20


def _control_characters(text: str) -> int:
    """How many control characters ``text`` has (the pattern is one character: slices count alike)."""
    return sum(len(_CONTROL_RE.findall(text, i, i + _SCAN_SLICE)) for i in range(0, len(text), _SCAN_SLICE))
