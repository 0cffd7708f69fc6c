"""Running the mock: in a background thread (MockServer) or from the command line."""

from __future__ import annotations

import argparse
import socket
import sys
import threading
import time
from typing import Self

from pydantic import ValidationError

from .app import create_mock_app
from .config import MockConfig
from .state import MockState

# ----------------------------------------------------------------------------------------------
# running it
# ----------------------------------------------------------------------------------------------


class MockServer:
    """Serve a mock app on 127.0.0.1 from a background thread (own event loop).

    For code that opens its own HTTP connections (e.g. LightRAG's OpenAI helpers). ``port=0``
    picks a free port; read it from ``.port`` / ``.base_url`` after ``start()``. Query state over
    HTTP (``/_mock/stats``) rather than touching ``.state`` from another thread while busy.
    """

    def __init__(self, config: MockConfig | None = None, port: int = 0, log_level: str = "warning"):
        import uvicorn

        self.app = create_mock_app(config)
        self.state: MockState = self.app.state.mock
        self._server = uvicorn.Server(
            uvicorn.Config(
                self.app,
                host="127.0.0.1",
                port=port,
                log_level=log_level,
                access_log=False,
                lifespan="off",
                timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
            )
        )
        self._thread: threading.Thread | None = None
        self.port = port

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def root_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> MockServer:
        self._thread = threading.Thread(target=self._server.run, name="mock-llm", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("mock LLM server failed to start")
            time.sleep(0.01)
        sockets = [s for srv in self._server.servers for s in srv.sockets]
        if sockets:
            self.port = sockets[0].getsockname()[1]
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.mock_llm",
        description="OpenAI-compatible mock LLM + embedding server (binds 127.0.0.1 only).",
    )
    p.add_argument(
        "--port", type=int, default=8999, help="TCP port on 127.0.0.1 (default 8999; 0 = any free port)"
    )
    p.add_argument(
        "--fd",
        type=int,
        default=None,
        help="serve on this inherited listening socket instead of --port (the parent bound it)",
    )
    p.add_argument("--latency", type=float, default=0.0, help="seconds per chat call")
    p.add_argument("--latency-jitter", type=float, default=0.0, help="extra uniform [0, J] seconds")
    p.add_argument("--embedding-latency", type=float, default=None, help="seconds per embedding call")
    p.add_argument("--error-latency", type=float, default=0.0, help="seconds before an injected error")
    p.add_argument("--error-rate", type=float, default=0.0, help="probability of a transient error")
    p.add_argument("--error-status", type=int, default=429, help="status of transient errors")
    p.add_argument("--retry-after", type=float, default=1.0, help="seconds advertised by 429s")
    p.add_argument("--fail-first", type=int, default=0, help="first N eligible calls fail")
    p.add_argument("--permanent-error", action="store_true", help="every call fails (400/401)")
    p.add_argument("--permanent-error-status", type=int, default=401)
    p.add_argument("--permanent-error-message", default=None)
    p.add_argument("--hang-rate", type=float, default=0.0, help="probability of a hang")
    p.add_argument("--hang-seconds", type=float, default=30.0)
    p.add_argument(
        "--error-endpoints",
        default="chat,embeddings",
        help="comma list of endpoints faults apply to (chat,embeddings)",
    )
    p.add_argument("--api-key", default=None, help="require this bearer token")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--model", default="mock-gpt")
    p.add_argument("--embedding-model", default="mock-embedding")
    p.add_argument("--embedding-dim", type=int, default=384)
    p.add_argument("--max-entities", type=int, default=8)
    p.add_argument("--stream-chunk-words", type=int, default=8)
    p.add_argument("--stream-chunk-delay", type=float, default=0.0)
    p.add_argument("--log-level", default="warning", help="uvicorn log level")
    return p


def config_from_args(args: argparse.Namespace) -> MockConfig:
    return MockConfig(
        latency=args.latency,
        latency_jitter=args.latency_jitter,
        embedding_latency=args.embedding_latency,
        error_latency=args.error_latency,
        error_rate=args.error_rate,
        error_status=args.error_status,
        retry_after=args.retry_after,
        fail_first=args.fail_first,
        permanent_error=args.permanent_error,
        permanent_error_status=args.permanent_error_status,
        permanent_error_message=args.permanent_error_message,
        hang_rate=args.hang_rate,
        hang_seconds=args.hang_seconds,
        error_endpoints=[e.strip() for e in args.error_endpoints.split(",") if e.strip()],
        api_key=args.api_key,
        seed=args.seed,
        model=args.model,
        embedding_model=args.embedding_model,
        embedding_dim=args.embedding_dim,
        max_entities=args.max_entities,
        stream_chunk_words=args.stream_chunk_words,
        stream_chunk_delay=args.stream_chunk_delay,
    )


#: A held call (``/_mock/hold``) is never answered: on SIGTERM the mock must not wait for it the way
#: uvicorn waits for in-flight requests by default (a test stopping a mock with held calls waited out
#: its 30 s SIGKILL timeout).
GRACEFUL_SHUTDOWN_SECONDS = 1.0


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ValidationError as exc:
        parser.error(str(exc))
    if args.fd is not None:
        sock = socket.socket(fileno=args.fd)
    else:
        sock = socket.create_server(("127.0.0.1", args.port))  # bound here: --port 0 is reported
    port = sock.getsockname()[1]
    print(f"mock LLM: http://127.0.0.1:{port}/v1 config={cfg.model_dump_json()}", file=sys.stderr, flush=True)
    config = uvicorn.Config(
        create_mock_app(cfg),
        host="127.0.0.1",
        port=port,
        log_level=args.log_level,
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
    )
    uvicorn.Server(config).run(sockets=[sock])
