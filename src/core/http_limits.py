"""Bounds on what a client can make the HTTP server hold before the app sees a request.

uvicorn's fast parser (httptools) accepts header blocks of any size and waits for them forever:
a 32 MB header line was accepted, and 50 connections each holding an unterminated 16 MB header
cost ~880 MB before any authentication could run. This protocol keeps httptools' speed and adds:

- the request line plus headers may total at most MAX_HEADER_BYTES (431 otherwise), and at most
  MAX_HEADER_COUNT header fields (431);
- the header block must arrive within HEADER_TIMEOUT_SECONDS of its first byte (408), so a
  client cannot park a connection half-way through its headers (slowloris).

Bodies are bounded where they are read (upload limits and body idle timeout in the upload path).
`python main.py` serves with this protocol. The uvicorn CLI only takes protocol names, so with
`uvicorn main:app` use `--http h11 --h11-max-incomplete-event-size 65536` (a size bound, no header
timeout) or a proxy in front; docs/security.md says so.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

_REASONS = {408: b"Request Timeout", 431: b"Request Header Fields Too Large"}


class BoundedHttpToolsProtocol(HttpToolsProtocol):
    """HttpToolsProtocol with a size, count and time bound on each request's header block."""

    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_seconds: float = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._awaiting_head = True
        self._head_bytes = 0
        self._head_fields = 0
        self._head_error: int | None = None
        self._head_timer: asyncio.TimerHandle | None = None

    def data_received(self, data: bytes) -> None:
        if self._awaiting_head:
            self._head_bytes += len(data)
            if self._head_timer is None:
                self._head_timer = self.loop.call_later(self.header_timeout_seconds, self._head_timed_out)
        super().data_received(data)
        if self._head_error is None and self._awaiting_head and self._head_bytes > self.max_header_bytes:
            self._head_error = 431
        if self._head_error is not None and not self.transport.is_closing():
            self._reject(self._head_error)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > self.max_header_count:
            self._head_error = 431
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        head_size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._head_error is not None or head_size > self.max_header_bytes:
            self._head_error = 431
            return  # the app never sees this request; data_received answers and closes
        self._awaiting_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._head_error is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_error is not None:
            return
        super().on_message_complete()
        self._awaiting_head = True
        self._head_bytes = 0

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        super().connection_lost(exc)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self._awaiting_head and self._head_bytes and not self.transport.is_closing():
            self._reject(408)

    def _reject(self, status: int) -> None:
        self._cancel_head_timer()
        code = "headers_too_large" if status == 431 else "header_timeout"
        message = (
            f"request headers exceed {self.max_header_bytes} bytes or {self.max_header_count} fields"
            if status == 431
            else f"request headers not received within {self.header_timeout_seconds:g} s"
        )
        body = json.dumps({"detail": message, "code": code}).encode()
        head = (
            b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n"
            b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body))
        )
        self.transport.write(head + body)
        self.transport.close()


def bounded_protocol(max_header_bytes: int, max_header_count: int, header_timeout_seconds: float) -> type:
    """A protocol class carrying the configured limits (uvicorn instantiates it per connection)."""
    return type(
        "ConfiguredBoundedHttpToolsProtocol",
        (BoundedHttpToolsProtocol,),
        {
            "max_header_bytes": max_header_bytes,
            "max_header_count": max_header_count,
            "header_timeout_seconds": header_timeout_seconds,
        },
    )
