"""Cut a big text into LightRAG's chunks in a child process (src/rag/engine/chunk_child.py).

A text of ``CHILD_CHUNKING_MIN_CHARS`` or more, chunked by LightRAG's default
``chunking_by_token_size`` with this service's tokenizer and no split character, is streamed to a
spawned child (the text in 1 M-character slices through its stdin; its chunks come back one JSON
line each through its stdout). The event loop only moves bytes: tokenizing a 99 MB text in a worker
thread held the GIL, and so the loop, for up to half a second at a time, and kept its 16 M tokens
(~600 MB) in the service. The child runs under the parse child's address-space limit
(``PARSE_MEMORY_BYTES``) and niceness, and is killed when its task is cancelled: a cancelled big
document stops chunking at once and leaves nothing behind. Smaller texts, or another chunking
configuration, are chunked in a worker thread as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from typing import Any

from src.rag.child_process import child_command, child_env
from src.rag.engine.chunk_child import EXIT_MEMORY

#: Texts at least this long are chunked in a child: below it the child's start (~0.3 s) costs more
#: than the tokenizer's stalls it saves.
CHILD_CHUNKING_MIN_CHARS = 1 << 20
#: Characters written to the child per write (encoded to UTF-8 one slice at a time).
_SLICE_CHARS = 1 << 20
#: Chunks decoded per turn of the event loop.
_LINES_PER_TURN = 64
#: Longest line the child may write: one chunk's JSON (a 1,200-token chunk is a few KB).
_LINE_LIMIT = 64 * 1024 * 1024


class ChunkingFailed(Exception):
    """The chunking child failed (the message says why, in the operator's terms)."""


def _child_env() -> dict[str, str]:
    env = child_env(OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    if "TIKTOKEN_CACHE_DIR" in os.environ:  # seeded by src/rag/tokenizer.py: the child never downloads
        env["TIKTOKEN_CACHE_DIR"] = os.environ["TIKTOKEN_CACHE_DIR"]
    return env


async def chunk_in_child(
    content: str, encoding: str, chunk_tokens: int, overlap_tokens: int, memory_bytes: int
) -> list[dict[str, Any]]:
    """LightRAG's ``chunking_by_token_size(tokenizer, content, None, False, overlap_tokens,
    chunk_tokens)`` for a tokenizer on tiktoken ``encoding``, computed in a child process."""
    proc = await asyncio.create_subprocess_exec(
        *child_command(
            "src.rag.engine.chunk_child",
            encoding,
            str(int(chunk_tokens)),
            str(int(overlap_tokens)),
            str(int(memory_bytes)),
        ),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_child_env(),
        limit=_LINE_LIMIT,
    )
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr

    async def feed() -> None:
        try:
            for start in range(0, len(content), _SLICE_CHARS):
                stdin.write(content[start : start + _SLICE_CHARS].encode("utf-8", "surrogatepass"))
                await stdin.drain()
        except (BrokenPipeError, ConnectionResetError):
            return  # the child died; its exit status says why
        finally:
            stdin.close()

    async def collect() -> list[dict[str, Any]]:
        pieces: list[dict[str, Any]] = []
        while line := await stdout.readline():
            tokens, text = json.loads(line)
            pieces.append({"tokens": tokens, "content": text, "chunk_order_index": len(pieces)})
            if len(pieces) % _LINES_PER_TURN == 0:
                await asyncio.sleep(0)  # buffered lines return without yielding: let others run
        return pieces

    writer = asyncio.ensure_future(feed())
    errors = asyncio.ensure_future(stderr.read())
    try:
        pieces = await collect()
        await writer
        message = (await errors).decode("utf-8", "replace").strip()[-2000:]
        code = await proc.wait()
    finally:
        if proc.returncode is None:  # cancelled (or failed) mid-way: the child goes with it
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            await asyncio.shield(proc.wait())
        for task in (writer, errors):
            task.cancel()
    if code == EXIT_MEMORY:
        raise ChunkingFailed(f"chunking the text needs more than PARSE_MEMORY_BYTES ({memory_bytes:,})")
    if code != 0:
        raise ChunkingFailed(f"the chunking process failed (exit {code}): {message}")
    return pieces
