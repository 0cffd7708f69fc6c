"""``python -m benchmarks.mock_llm``: serve the mock on 127.0.0.1."""

from benchmarks.mock_llm.server import main

main()
