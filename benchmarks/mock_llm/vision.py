"""The mock's vision side: chat requests that carry ``image_url`` parts.

Each one is recorded with the image bytes it carried (decoded from their data URLs) and the text
around them, so a test can check what a vision model was shown; ``GET /_mock/vision`` lists them
(bytes as base64). The answer is deterministic: RAG-Anything's picture-description prompt (it asks
for ``detailed_description`` and ``entity_info``) gets that JSON; a question gets a sentence naming
how many images it saw and how much context came with them.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any

#: Requests kept (oldest dropped first).
MAX_RECORDED = 500


def image_parts(messages: Any) -> list[bytes]:
    """The decoded bytes of every ``data:`` image part in ``messages``."""
    found: list[bytes] = []
    if not isinstance(messages, list):
        return found
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if not isinstance(content, list):
            continue
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "image_url":
                continue
            url = str((part.get("image_url") or {}).get("url", ""))
            if url.startswith("data:") and "," in url:
                try:
                    found.append(base64.b64decode(url.split(",", 1)[1]))
                except (binascii.Error, ValueError):
                    found.append(b"")
    return found


def all_text(messages: list[Any]) -> str:
    parts: list[str] = []
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            parts.append(content)
        elif isinstance(content, list):
            parts += [
                str(p.get("text", "")) for p in content if isinstance(p, dict) and p.get("type") == "text"
            ]
    return "\n".join(parts)


def vision_answer(text: str, images: list[bytes]) -> str:
    digests = [hashlib.sha256(image).hexdigest()[:12] for image in images]
    size = len(images[0]) if images else 0
    if "detailed_description" in text and "entity_info" in text:
        name = f"mock picture {digests[0] if digests else 'none'}"
        return json.dumps(
            {
                "detailed_description": f"A picture ({size} bytes) seen by the mock vision model.",
                "entity_info": {
                    "entity_name": name,
                    "entity_type": "image",
                    "summary": f"{name}, described by the mock.",
                },
            }
        )
    seen = ", ".join(digests)
    return f"Mock vision answer: saw {len(images)} image(s) ({seen}) and {len(text)} characters of text."


def record(records: list[dict[str, Any]], text: str, images: list[bytes]) -> None:
    records.append({"text": text, "images": images})
    del records[:-MAX_RECORDED]


def as_json(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"text": r["text"], "images": [base64.b64encode(i).decode("ascii") for i in r["images"]]}
        for r in records
    ]
