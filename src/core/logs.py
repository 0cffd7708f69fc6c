"""Logging: one JSON object per line (LOG_FORMAT=json, the default) or plain text, with the
task id (and later the tenant) of the asyncio task that logged it on every line."""

from __future__ import annotations

import contextlib
import contextvars
import json
import logging
from datetime import UTC, datetime

current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_task_id", default=None)
current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_tenant", default=None)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = current_task_id.get()
        record.tenant = current_tenant.get()
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for field in ("task_id", "tenant"):
            value = getattr(record, field, None)
            if value:
                entry[field] = value
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def _route_library_loggers_to_root() -> None:
    """Libraries that install their own plain-text handlers (LightRAG's `lightrag` logger has one
    and sets propagate=False) would print multi-line tracebacks into a JSON log stream. Import
    them now, so their handlers exist, then send everything through the root handler."""
    with contextlib.suppress(ImportError):
        import lightrag.utils  # noqa: F401  (installs LightRAG's handler on import)
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and (logger.handlers or not logger.propagate):
            logger.handlers.clear()
            logger.propagate = True


def configure_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(tenant)s %(task_id)s]: %(message)s")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    _route_library_loggers_to_root()
    # LightRAG is chatty at INFO (one line per chunk and per entity): keep it to warnings.
    for noisy in ("lightrag", "nano-vectordb", "raganything", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
