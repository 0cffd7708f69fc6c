"""Decode uploaded plain-text bytes: UTF-8 / UTF-16 with BOM, UTF-8, then GB18030 (GBK's superset).

Why: Chinese Windows tools still save .txt as GBK. Decoding it as UTF-8 with ``errors="replace"``
would store mojibake in the knowledge base, so a text that is none of these encodings is
refused with a clear error instead of being guessed at.
"""

from __future__ import annotations

import codecs

#: At most this share of the non-ASCII characters of a GB18030 decoding may be implausible
#: (private use, rare CJK extensions, control characters) before it is treated as a misread.
MAX_IMPLAUSIBLE_SHARE = 0.02


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
    controls = sum(1 for c in text if ord(c) < 0x20 and c not in "\t\n\r\f\v")
    return controls == 0 and bad <= MAX_IMPLAUSIBLE_SHARE * len(non_ascii)


def decode_text_bytes(data: bytes) -> str:
    """Text of an uploaded file, never mojibake: a BOM decides, else UTF-8, else GB18030.

    Raises ``TextDecodingError`` (a ``ValueError``; the API answers 4xx) for anything else.
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
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as utf8_error:
        try:
            text = data.decode("gb18030")
        except UnicodeDecodeError:
            text = None
        if text is not None and _looks_like_chinese_text(text):
            return text
        raise TextDecodingError(
            "text file is neither UTF-8 (invalid byte at offset "
            f"{utf8_error.start}), UTF-16 with a BOM, nor GBK/GB18030 Chinese text; "
            "save it as UTF-8 and upload again"
        ) from utf8_error
