"""Logging: one JSON object per line (LOG_FORMAT=json, the default) or plain text, with the
task id (and later the tenant) of the asyncio task that logged it on every line."""

from __future__ import annotations

import contextvars
import json
import logging
import re
from datetime import UTC, datetime

current_task_id: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_task_id", default=None)
current_tenant: contextvars.ContextVar[str | None] = contextvars.ContextVar("current_tenant", default=None)


class _ContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.task_id = current_task_id.get()
        record.tenant = current_tenant.get()
        return True


#: Query parameters whose values are secrets (API keys in an EventSource URL, tokens pasted by hand).
_SECRET_QUERY_RE = re.compile(
    r"([?&](?:access_token|api_key|apikey|key|token|admin_token)=)[^&\s\"']*", re.IGNORECASE
)
REDACTED = "[redacted]"


def redact_secrets(text: str) -> str:
    """``text`` with the values of secret-bearing query parameters replaced."""
    return _SECRET_QUERY_RE.sub(lambda m: m.group(1) + REDACTED, text) if "=" in text else text


class RedactSecretsFilter(logging.Filter):
    """Never log secrets: uvicorn's access log writes the full request target (query string
    included), and `?access_token=` is how a browser's EventSource authenticates. The record's
    arguments are redacted before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple) and record.args:
            record.args = tuple(redact_secrets(a) if isinstance(a, str) else a for a in record.args)
        elif isinstance(record.msg, str) and not record.args:
            record.msg = redact_secrets(record.msg)
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
    and sets propagate=False, on import) would print multi-line tracebacks into a JSON log stream:
    send everything through the root handler. Runs when logging is configured, so configure it
    once the application is imported (main.py does)."""
    for logger in list(logging.root.manager.loggerDict.values()):
        if isinstance(logger, logging.Logger) and (logger.handlers or not logger.propagate):
            logger.handlers.clear()
            logger.propagate = True


def configure_logging(level: str, fmt: str = "json") -> None:
    handler = logging.StreamHandler()
    handler.addFilter(_ContextFilter())
    handler.addFilter(RedactSecretsFilter())  # every logger: a URL with a key may be logged anywhere
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
    access = logging.getLogger("uvicorn.access")
    if not any(isinstance(f, RedactSecretsFilter) for f in access.filters):
        access.addFilter(RedactSecretsFilter())  # also when uvicorn's own handlers are in use
    # LightRAG is chatty at INFO (one line per chunk and per entity): keep it to warnings.
    for noisy in ("lightrag", "nano-vectordb", "raganything", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
