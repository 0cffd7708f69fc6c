"""How the service starts its Python children (parse, chunking, bulk e5): one command line and one
base environment, so a fix to either reaches all three.

A child runs ``python -I -c <boot>``: isolated from the caller's PYTHONPATH and user site, with
this checkout put first on ``sys.path`` so it imports our ``src`` and nothing else of the service.
Its environment is built from nothing (no secret of the service's environment reaches it).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])


def child_command(module: str, *args: str) -> list[str]:
    """``python -I -c`` running ``module.main(args)`` and exiting with its return value."""
    boot = (
        "import sys; sys.path.insert(0, sys.argv[1]); "
        f"from {module} import main; sys.exit(main(sys.argv[2:]))"
    )
    return [sys.executable, "-I", "-c", boot, ROOT, *args]


def child_env(**extra: str) -> dict[str, str]:
    """The environment every child gets, plus ``extra``."""
    return {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "LC_ALL": "C.UTF-8",
        "PYTHONIOENCODING": "utf-8",
        # glibc reserves an arena per thread: onnxruntime's threads alone reserved ~0.3 GiB of the
        # address space a child's memory limit counts.
        "MALLOC_ARENA_MAX": "2",
        **extra,
    }
