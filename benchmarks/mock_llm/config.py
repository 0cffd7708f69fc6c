"""MockConfig: every behaviour of the mock, changeable at run time (POST /_mock/config)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

# ----------------------------------------------------------------------------------------------
# configuration
# ----------------------------------------------------------------------------------------------


class MockConfig(BaseModel):
    """Behaviour of the mock. Every field can be changed at run time via ``POST /_mock/config``."""

    model_config = ConfigDict(extra="forbid")

    # --- latency ------------------------------------------------------------------------------
    #: Seconds every served chat (and, unless embedding_latency is set, embedding) call waits.
    #: asyncio.sleep, so concurrent calls overlap instead of queueing.
    latency: float = Field(default=0.0, ge=0)
    #: Extra uniform random latency in [0, latency_jitter] seconds (seeded).
    latency_jitter: float = Field(default=0.0, ge=0)
    #: Latency of embedding calls; None -> same as ``latency``.
    embedding_latency: float | None = Field(default=None, ge=0)
    #: Latency of chat calls that carry images (vision); None -> same as ``latency``.
    vision_latency: float | None = Field(default=None, ge=0)
    #: Seconds an injected (transient or permanent) error waits before it is returned.
    error_latency: float = Field(default=0.0, ge=0)

    # --- fault injection ----------------------------------------------------------------------
    #: Probability that an eligible call fails with ``error_status``.
    error_rate: float = Field(default=0.0, ge=0, le=1)
    #: Status of injected transient errors (429 adds Retry-After; 500, 503, ...).
    error_status: int = 429
    #: Value advertised by 429 responses: ``Retry-After`` (whole seconds, rounded up, as the
    #: header only allows integers) plus ``retry-after-ms`` (exact; honoured by the openai client).
    retry_after: float = Field(default=1.0, ge=0)
    #: The first N eligible calls (after start/reset) fail with ``error_status`` deterministically.
    fail_first: int = Field(default=0, ge=0)
    #: Every eligible call fails with ``permanent_error_status`` (400/401 ...).
    permanent_error: bool = False
    permanent_error_status: int = 401
    #: Overrides the default message of permanent errors.
    permanent_error_message: str | None = None
    #: Probability that an eligible call first sleeps ``hang_seconds`` (to provoke client timeouts).
    hang_rate: float = Field(default=0.0, ge=0, le=1)
    hang_seconds: float = Field(default=30.0, ge=0)
    #: Which endpoints faults apply to.
    error_endpoints: list[Literal["chat", "embeddings"]] = Field(
        default_factory=lambda: ["chat", "embeddings"]
    )
    #: If set, requests must carry ``Authorization: Bearer <api_key>`` (else 401).
    api_key: str | None = None
    seed: int = 0

    # --- answers ------------------------------------------------------------------------------
    model: str = "mock-gpt"
    embedding_model: str = "mock-embedding"
    embedding_dim: int = Field(default=384, ge=1, le=65536)
    #: Max entities emitted per extraction call (relations: consecutive pairs -> max-1).
    max_entities: int = Field(default=8, ge=1, le=200)
    #: Words per streamed chunk and optional delay between chunks.
    stream_chunk_words: int = Field(default=8, ge=1)
    stream_chunk_delay: float = Field(default=0.0, ge=0)

    # --- bookkeeping --------------------------------------------------------------------------
    #: Per-call records kept for ``/_mock/stats`` (oldest dropped first).
    max_recorded_calls: int = Field(default=10_000, ge=0)

    @field_validator("error_status")
    @classmethod
    def _check_error_status(cls, v: int) -> int:
        if not 400 <= v <= 599:
            raise ValueError("error_status must be a 4xx/5xx status")
        return v

    @field_validator("permanent_error_status")
    @classmethod
    def _check_permanent_status(cls, v: int) -> int:
        if not 400 <= v <= 499:
            raise ValueError("permanent_error_status must be a 4xx status")
        return v
