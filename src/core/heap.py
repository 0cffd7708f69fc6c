"""Keep the garbage collector's full passes short: long-lived objects are frozen out of its sight.

Why: CPython's oldest-generation collection walks every tracked object, and it runs on the
event loop in the middle of whatever request allocated last. After start-up this process holds
~450,000 long-lived objects (FastAPI, LightRAG, RAG-Anything, the OpenAI client...), and each
full pass stalled the loop for 100-150 ms: the p99 of GET /task under load. Once the service is
up, everything that exists is moved to the permanent generation (`gc.freeze()`, O(1)); the
collector then walks only what was allocated since. Objects are still freed by reference
counting as usual; cyclic garbage among the frozen ones waits for `gc.unfreeze()` at shutdown,
so an app started and stopped many times in one process (the tests) leaks nothing.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Iterator

log = logging.getLogger(__name__)


@contextlib.contextmanager
def long_lived_objects_frozen() -> Iterator[int]:
    """Freeze every object tracked now for the duration; yield how many are frozen."""
    gc.freeze()
    frozen = gc.get_freeze_count()
    log.info("garbage collector: %d long-lived objects frozen out of full collections", frozen)
    try:
        yield frozen
    finally:
        gc.unfreeze()
