"""Local OpenAI-compatible mock LLM + embedding server (package: config, answers, state, app, server).

Used by the test suite (fault injection) and by the benchmarks (a cheap, latency-controlled
stand-in for a real provider). Nothing here touches the network beyond 127.0.0.1.

Endpoints
---------
* ``POST /v1/chat/completions`` - non-streaming and ``stream: true`` (SSE, OpenAI chunk format,
  terminated by ``data: [DONE]``). Answers are shaped so that LightRAG 1.4.16 really builds a
  graph: entity-extraction prompts get ``entity<|#|>...`` / ``relation<|#|>...`` records ending
  with ``<|COMPLETE|>``, gleaning prompts get ``<|COMPLETE|>``, keyword prompts get the JSON
  object LightRAG expects, description-summary prompts get a short merge, anything else gets a
  short answer quoting a line of the provided context.
* ``POST /v1/embeddings`` - deterministic feature-hashing vectors (L2-normalised), ``float`` or
  ``base64`` encoding (the ``openai`` client asks for base64 by default).
* ``GET /v1/models``
* ``GET /_mock/stats``, ``GET|POST /_mock/config``, ``POST /_mock/reset``, ``GET /_mock/health``.
* ``POST /_mock/hold`` ``{"kinds": ["extract", ...]}`` (of ``KINDS``, ``"vision"``, ``"embeddings"``):
  from then on such calls wait, answering nothing, until ``POST /_mock/release`` (or a reset); the stats'
  ``held`` counts the calls waiting. Tests hold the mock to keep a task busy for exactly as long as
  they need, instead of giving it a latency to wait out (tests/helpers.py: ``hold``/``release``).

Faults (chat + embeddings, see ``MockConfig.error_endpoints``): ``fail_first`` deterministic
failures, random transient errors with probability ``error_rate`` (429 with ``Retry-After`` /
500 / 503 ...), random hangs, and ``permanent_error`` mode (always 400/401). All randomness comes
from ``random.Random(seed)`` instances drawn in request-arrival order, so a serial run with a
given seed is fully reproducible.

Run standalone::

    python -m benchmarks.mock_llm --port 8999 --latency 0.5 --error-rate 0.3 --error-status 429

(``--port 0``: any free port, printed on stderr; ``--fd N``: serve on an inherited listening socket,
as tests/procs.py's ``start_mock_llm`` does.)

or in-process on a real socket (e.g. for code that builds its own ``AsyncOpenAI`` client)::

    with MockServer(MockConfig(latency=0.1)) as srv:
        client = AsyncOpenAI(base_url=srv.base_url, api_key="x")
"""

from __future__ import annotations

from src.rag.prompts import COMPLETION_DELIMITER, KINDS, TUPLE_DELIMITER

from .answers import classify_request, embed_text, embed_tokens, embed_vector, extraction_records
from .app import create_mock_app
from .config import MockConfig
from .server import MockServer, build_parser, config_from_args, main
from .state import ENDPOINTS, MockState

__all__ = [
    "COMPLETION_DELIMITER",
    "ENDPOINTS",
    "KINDS",
    "TUPLE_DELIMITER",
    "MockConfig",
    "MockServer",
    "MockState",
    "build_parser",
    "classify_request",
    "config_from_args",
    "create_mock_app",
    "embed_text",
    "embed_vector",
    "embed_tokens",
    "extraction_records",
    "main",
]
