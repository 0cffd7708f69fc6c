"""Mock server state: counters, per-call records, fault injection decisions (seeded)."""

from __future__ import annotations

import asyncio
import json
import math
import random
import time
from collections import deque
from typing import Any

from fastapi.responses import Response

from src.rag.prompts import (
    KINDS,
)

from .config import MockConfig

ENDPOINTS = ("chat", "embeddings", "models", "rerank")

# ----------------------------------------------------------------------------------------------
# state
# ----------------------------------------------------------------------------------------------


def _json_response(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(
        content=json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8"),
        status_code=status,
        media_type="application/json",
        headers=headers,
    )


def _error_payload(message: str, etype: str, code: str | None, param: str | None = None) -> dict:
    return {"error": {"message": message, "type": etype, "param": param, "code": code}}


_TRANSIENT = {
    429: (
        "Rate limit reached for requests (mock injected error). Please try again later.",
        "requests",
        "rate_limit_exceeded",
    ),
    500: (
        "The server had an error while processing your request (mock injected error).",
        "server_error",
        "internal_error",
    ),
    502: ("Bad gateway (mock injected error).", "server_error", "bad_gateway"),
    503: (
        "The engine is currently overloaded, please try again later (mock injected error).",
        "server_error",
        "service_unavailable",
    ),
    504: ("Gateway timeout (mock injected error).", "server_error", "gateway_timeout"),
}

_PERMANENT = {
    400: (
        "Invalid request: the mock server is in permanent_error mode and rejects every request.",
        "invalid_request_error",
        "invalid_request",
    ),
    401: (
        "Incorrect API key provided: the mock server is in permanent_error mode (rejects every request).",
        "invalid_request_error",
        "invalid_api_key",
    ),
    403: ("Permission denied (mock permanent_error mode).", "permission_error", "permission_denied"),
    404: (
        "The model does not exist (mock permanent_error mode).",
        "invalid_request_error",
        "model_not_found",
    ),
}


def _percentile(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return 0.0
    k = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[k]


class MockState:
    """Mutable state of one mock app (config, seeded RNGs, counters). Lives in ``app.state.mock``."""

    def __init__(self, config: MockConfig):
        self.initial_config = config.model_copy(deep=True)
        self.config = config.model_copy(deep=True)
        #: Kinds of call (``KINDS``, or ``"embeddings"``) that wait at the gate until released.
        self.hold_kinds: frozenset[str] = frozenset()
        #: One gate per held kind, so that one kind can be released while another stays held.
        self._gates: dict[str, asyncio.Event] = {}
        self.reset()

    # --- lifecycle ----------------------------------------------------------------------------
    def reseed(self) -> None:
        seed = self.config.seed
        self.error_rng = random.Random(seed)
        self.hang_rng = random.Random(seed + 1)
        self.jitter_rng = random.Random(seed + 2)
        self.eligible_calls = 0  # counter behind fail_first

    def reset(self, restore_config: bool = False) -> None:
        self.release()
        if restore_config:
            self.config = self.initial_config.model_copy(deep=True)
        self.reseed()
        self.started = time.time()
        self.calls = dict.fromkeys(ENDPOINTS, 0)
        self.kinds = dict.fromkeys(KINDS, 0)
        #: The usage the chat answers reported, summed (what a client's token accounting must match).
        self.tokens = {"prompt": 0, "completion": 0, "embedding": 0}
        self.streams = 0
        self.errors_by_status: dict[str, int] = {}
        self.errors_total = 0
        self.permanent_errors = 0
        self.auth_failures = 0
        self.bad_requests = 0
        self.hangs = 0
        self.embedding_inputs = 0
        self.in_flight = 0
        self.max_in_flight = 0
        self.held = 0  # calls waiting at the gate now
        self.held_by_kind: dict[str, int] = {}  # the same, per kind
        self.held_total = 0
        self.records: deque[dict[str, Any]] = deque(maxlen=self.config.max_recorded_calls)
        #: Chat requests that carried images (benchmarks/mock_llm/vision.py).
        self.vision_requests: list[dict[str, Any]] = []
        #: The last chat requests' kind and messages (GET /_mock/chats), newest last.
        self.chat_requests: deque[dict[str, Any]] = deque(maxlen=100)

    def update_config(self, changes: dict[str, Any]) -> MockConfig:
        new = MockConfig.model_validate({**self.config.model_dump(), **changes})
        self.config = new
        if "seed" in changes:
            self.reseed()
        if "max_recorded_calls" in changes:
            self.records = deque(self.records, maxlen=new.max_recorded_calls)
        return new

    # --- hold and release ----------------------------------------------------------------------
    def hold(self, kinds: frozenset[str]) -> None:
        """From now on, calls of these kinds wait (answering nothing) until :meth:`release`: a test
        keeps a task busy for exactly as long as it needs instead of waiting out a latency. Calls of
        a kind held before and not named now keep waiting; new ones of that kind pass."""
        for kind in kinds:
            if kind not in self._gates:
                self._gates[kind] = asyncio.Event()
        self.hold_kinds = kinds

    def release(self, kinds: frozenset[str] | None = None) -> int:
        """Let the held calls of ``kinds`` (default: every kind) go on and hold those kinds no more;
        returns how many calls were let go. Releasing one kind while another stays held moves a
        task from one held step to the next (e.g. past its extraction into a held merge)."""
        names = set(self._gates) if kinds is None else set(kinds)
        released = sum(self.held_by_kind.get(kind, 0) for kind in names)
        for kind in names:
            gate = self._gates.pop(kind, None)
            if gate is not None:
                gate.set()
        self.hold_kinds = frozenset() if kinds is None else self.hold_kinds - names
        return released

    async def wait_if_held(self, kind: str) -> None:
        if kind not in self.hold_kinds:
            return
        gate = self._gates[kind]
        self.held += 1
        self.held_by_kind[kind] = self.held_by_kind.get(kind, 0) + 1
        self.held_total += 1
        try:
            await gate.wait()
        finally:
            self.held -= 1
            self.held_by_kind[kind] = max(0, self.held_by_kind.get(kind, 0) - 1)  # 0 after a reset

    # --- per call -----------------------------------------------------------------------------
    def enter(self) -> None:
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)

    def leave(self) -> None:
        self.in_flight -= 1

    def record(
        self, endpoint: str, status: int, started: float, kind: str | None = None, **extra: Any
    ) -> None:
        self.records.append(
            {
                "endpoint": endpoint,
                "kind": kind,
                "status": status,
                "latency_s": round(time.perf_counter() - started, 6),
                "at": round(time.time() - self.started, 6),
                **extra,
            }
        )

    def draw_fault(self, endpoint: str, cfg: MockConfig) -> tuple[str | None, bool]:
        """-> (fault, hang). fault in {None, "permanent", "transient"}. Synchronous, so draws
        happen in request-arrival order (deterministic for serial runs with a fixed seed)."""
        if endpoint not in cfg.error_endpoints:
            return None, False
        self.eligible_calls += 1
        r_err = self.error_rng.random()
        r_hang = self.hang_rng.random()
        if cfg.permanent_error:
            return "permanent", False
        if self.eligible_calls <= cfg.fail_first or r_err < cfg.error_rate:
            return "transient", False
        return None, r_hang < cfg.hang_rate

    def call_latency(self, endpoint: str, cfg: MockConfig) -> float:
        base = cfg.latency
        if endpoint == "embeddings" and cfg.embedding_latency is not None:
            base = cfg.embedding_latency
        if endpoint == "vision" and cfg.vision_latency is not None:
            base = cfg.vision_latency
        if cfg.latency_jitter > 0:
            base += self.jitter_rng.uniform(0.0, cfg.latency_jitter)
        return base

    def error_response(self, status: int, permanent: bool, cfg: MockConfig) -> Response:
        table = _PERMANENT if permanent else _TRANSIENT
        message, etype, code = table.get(
            status,
            (
                f"Mock {'permanent' if permanent else 'injected'} error (HTTP {status}).",
                "invalid_request_error" if status < 500 else "server_error",
                f"mock_error_{status}",
            ),
        )
        if permanent and cfg.permanent_error_message:
            message = cfg.permanent_error_message
        headers = {}
        if status == 429 and not permanent:
            headers["Retry-After"] = str(math.ceil(cfg.retry_after))
            headers["retry-after-ms"] = str(round(cfg.retry_after * 1000))
        key = str(status)
        self.errors_by_status[key] = self.errors_by_status.get(key, 0) + 1
        self.errors_total += 1
        if permanent:
            self.permanent_errors += 1
        return _json_response(_error_payload(message, etype, code), status, headers)

    # --- stats --------------------------------------------------------------------------------
    def snapshot(self, include_calls: bool = False) -> dict[str, Any]:
        by_endpoint: dict[str, list[float]] = {}
        for r in self.records:
            by_endpoint.setdefault(r["endpoint"], []).append(r["latency_s"])
        latency = {}
        for ep, vals in by_endpoint.items():
            vals.sort()
            latency[ep] = {
                "count": len(vals),
                "mean_s": round(sum(vals) / len(vals), 6),
                "p50_s": _percentile(vals, 0.5),
                "p95_s": _percentile(vals, 0.95),
                "max_s": vals[-1],
            }
        out: dict[str, Any] = {
            "calls": dict(self.calls),
            "kinds": dict(self.kinds),
            "tokens": dict(self.tokens),
            "streams": self.streams,
            "errors_injected": {
                "total": self.errors_total,
                "by_status": dict(self.errors_by_status),
                "permanent": self.permanent_errors,
            },
            "auth_failures": self.auth_failures,
            "bad_requests": self.bad_requests,
            "hangs": self.hangs,
            "embedding_inputs": self.embedding_inputs,
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "held": self.held,
            "held_by_kind": {kind: n for kind, n in self.held_by_kind.items() if n},
            "held_total": self.held_total,
            "hold_kinds": sorted(self.hold_kinds),
            "latency": latency,
            "uptime_s": round(time.time() - self.started, 3),
            "config": self.config.model_dump(),
        }
        if include_calls:
            out["calls_detail"] = list(self.records)
        return out
