"""Error texts that reach clients name things the client knows, never server paths.

Why: library exceptions embed absolute paths (python-docx: "Package not found at '/srv/…/uploads/
<id>.docx'", redis: "Error 2 connecting to unix socket: /srv/…/redis.sock"); echoing them in a task's
error or in /health disclosed the data directory layout. Known paths are replaced by the name the
client gave (the upload's original filename); any other absolute path by a placeholder.
"""

from __future__ import annotations

import re
from collections.abc import Mapping

PLACEHOLDER = "<server path>"
#: unix:// URLs (Redis sockets) and absolute POSIX paths with at least two components. A path is
#: recognised only where it starts a token, so URLs (http://host/a/b) and routes (/health) survive.
_UNIX_URL_RE = re.compile(r"unix://[^\s'\"]+")
_ABS_PATH_RE = re.compile(r"(?<![\w:/.~-])/(?:[^\s/'\"]+/)+[^\s/'\"]*")


def scrub_paths(text: str, known: Mapping[str, str] | None = None) -> str:
    """``text`` with each known path replaced by its public name and other absolute paths hidden."""
    for path, public in sorted((known or {}).items(), key=lambda item: -len(item[0])):
        if path:
            text = text.replace(path, public)
    text = _UNIX_URL_RE.sub("unix://" + PLACEHOLDER, text)
    return _ABS_PATH_RE.sub(PLACEHOLDER, text)
