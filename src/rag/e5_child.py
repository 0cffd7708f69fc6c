"""The bulk e5 child: ``python -I -c <boot> ROOT niceness`` (src/rag/e5_bulk_lane.py starts it).

It embeds a big document's chunks with its own copy of the e5 model, at a low CPU priority, so the
kernel gives the service's process (its event loop, and the other documents' and the queries'
embeddings) the cores first and the big document what is left. The model mapped a second time
costs ~100 MB; e5's OpenMP workers are process-wide, so a niced thread in the service could not
do this (its calls then waited at low priority for everyone).

Protocol on stdin/stdout, one request at a time: a request is one JSON line
``{"query": bool, "texts": [...]}``; the answer one JSON line ``{"rows": n}`` followed by
``n x 384`` little-endian float32 values, or ``{"error": "..."}`` (the child goes on serving).
It exits when its stdin ends: the service closed it or is gone.
"""

from __future__ import annotations

import json
import os
import sys


def main(argv: list[str]) -> int:
    os.nice(int(argv[0]))
    import numpy as np

    from src.rag.embedding_e5 import E5Embedder

    embedder = E5Embedder()
    source, sink = sys.stdin.buffer, sys.stdout.buffer
    while line := source.readline():
        try:
            request = json.loads(line)
            rows = embedder.embed([str(t) for t in request["texts"]], bool(request["query"]))
            payload = np.ascontiguousarray(rows, dtype="<f4").tobytes()
            header = {"rows": int(rows.shape[0])}
        except Exception as exc:  # reported to the caller; the next request is served as usual
            payload, header = b"", {"error": f"{type(exc).__name__}: {exc}"[:2000]}
        try:
            sink.write(json.dumps(header).encode("ascii") + b"\n")
            sink.write(payload)
            sink.flush()
        except BrokenPipeError:
            return 0  # the service is gone
    return 0
