"""The chunking child: ``python -I -c <boot> ROOT encoding chunk_tokens overlap_tokens memory_bytes``
(src/rag/engine/chunking.py starts it). Cuts one document's text, read from stdin as UTF-8, into
the chunks of LightRAG's ``chunking_by_token_size`` (no split character) and writes one JSON line
``[tokens, content]`` per chunk, in order, to stdout.

Why a process: tiktoken encodes a 99 MB text into 16 M tokens in about 3 s while holding the GIL
for up to half a second at a time, so in a worker thread it stalled the service's event loop; and
those tokens as Python ints took ~600 MB of the service's memory. Here they are a numpy array
(4 bytes each) in a process that ends with the document's chunking (or is killed with its task).

Imports only tiktoken and numpy (no LightRAG), so the child starts in well under a second; the
chunks are LightRAG's to the character (tests/test_chunking_child.py compares them).
Exit 0 = done; 3 = the memory limit was hit; anything else is a failure (stderr says why).
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator, Sequence

EXIT_MEMORY = 3
#: Niceness of the child, as the parse child's: the event loop's process goes first.
NICENESS = 10


def token_chunks(
    tokens: Sequence[int],
    decode: Callable[[list[int]], str],
    chunk_tokens: int,
    overlap_tokens: int,
) -> Iterator[tuple[int, str]]:
    """(token count, content) of each chunk, as ``lightrag.operate.chunking_by_token_size`` makes
    them without a split character: windows of ``chunk_tokens`` tokens every
    ``chunk_tokens - overlap_tokens`` tokens, decoded and stripped."""
    total = len(tokens)
    for start in range(0, total, chunk_tokens - overlap_tokens):
        window = tokens[start : start + chunk_tokens]
        ids = window.tolist() if hasattr(window, "tolist") else list(window)
        yield min(chunk_tokens, total - start), decode(ids).strip()


def _limit_resources(memory_bytes: int) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    os.nice(NICENESS)


def main(argv: list[str]) -> int:
    encoding_name = argv[0]
    chunk_tokens, overlap_tokens, memory_bytes = (int(v) for v in argv[1:4])
    if not os.environ.get("TIKTOKEN_CACHE_DIR"):
        sys.stderr.write("no TIKTOKEN_CACHE_DIR: the encoding would be downloaded")
        return 1
    try:
        _limit_resources(memory_bytes)
        import tiktoken  # TIKTOKEN_CACHE_DIR (seeded by the service) holds the encoding: no download

        encoding = tiktoken.get_encoding(encoding_name)
        text = sys.stdin.buffer.read().decode("utf-8", "surrogatepass")
        # The service's tokenizer (src/rag/tokenizer.py) encodes special-token text as plain text.
        tokens = encoding.encode_to_numpy(text, disallowed_special=())
        del text
        out = sys.stdout.buffer
        for count, content in token_chunks(tokens, encoding.decode, chunk_tokens, overlap_tokens):
            out.write(json.dumps([count, content], ensure_ascii=False).encode("utf-8"))
            out.write(b"\n")
        out.flush()
        return 0
    except Exception as exc:  # tiktoken wraps a MemoryError in its own errors
        if _out_of_memory(exc):
            sys.stderr.write("chunking needs more memory than PARSE_MEMORY_BYTES allows")
            return EXIT_MEMORY
        raise


def _out_of_memory(exc: BaseException | None) -> bool:
    while exc is not None:
        if isinstance(exc, MemoryError) or "memory" in str(exc).lower():
            return True
        exc = exc.__cause__ or exc.__context__
    return False
