"""Bounds on what a client can make the HTTP server hold before the app sees a request, whatever
launched the server.

uvicorn's parsers accept header blocks of any size (httptools) and wait for them forever: a 32 MB
header line was answered 200, 50 connections each holding an unterminated 16 MB header cost
~880 MB before any authentication could run, and 20,000 idle sockets took every file descriptor
(every route answered 503, the embedded-Redis supervisor could not open a socket). Here:

- the request line plus headers may total at most MAX_HEADER_BYTES (431) and MAX_HEADER_COUNT
  fields (431), and must arrive within HEADER_TIMEOUT_SECONDS (408); a connection that sends
  nothing at all is closed after that time too;
- at most MAX_CONNECTIONS connections are open at once (default: from the open-files limit, which
  is raised to its hard limit at start-up, keeping room for Redis, files and parse processes), and
  at most MAX_CONNECTIONS_PER_CLIENT (512) from one address (0 = no per-client cap, for a service
  behind a proxy, where every connection has the proxy's address). A connection beyond either is
  answered 503 and closed at once, so it costs a descriptor for an instant, not for as long as the
  client likes.
- a connection closed while its request's body is still arriving (a body refused unread: 401,
  413, 408) is closed the way nginx's ``lingering_close`` does it: the answer is sent, then FIN,
  and what the client still sends is read and dropped for at most LINGER_SECONDS. Closing at once
  with unread bytes in the socket makes the kernel send a reset, which can destroy the answer in
  the client's receive buffer before the client reads it: a client sending a body it was allowed
  to start saw a dead connection instead of the JSON error. A refused header block (431, 408) is
  still cut off at once: it is no request any client could have meant, and draining it would only
  let a hostile one keep the connection busy.

`install()` makes every uvicorn HTTP/1.1 protocol object of this process a bounded one (the
protocol classes get a ``__new__`` that builds the bounded subclass), so the bounds hold whether
uvicorn was started by `python main.py`, `uvicorn main:app`, gunicorn's `UvicornWorker` or the
Docker image: uvicorn resolves its protocol class before it imports the app, so passing a class
(`uvicorn.run(http=...)`) only covered the first launcher. `main` installs at import, before any
server accepts a connection; an uvicorn whose protocols lack what is wrapped here refuses to start.
Bodies are bounded where they are read (the upload path, and the JSON routes' `api/body_limits.py`).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import weakref
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
from uvicorn.protocols.http.h11_impl import H11Protocol
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

if TYPE_CHECKING:  # pragma: no cover - typing only
    from src.core.config import Settings

log = logging.getLogger(__name__)

_REASONS = {
    408: b"Request Timeout",
    431: b"Request Header Fields Too Large",
    503: b"Service Unavailable",
}
#: Descriptors kept free for what the service itself opens (Redis pool, uploads, SQLite, parse
#: processes, webhooks) when MAX_CONNECTIONS is derived from the open-files limit.
_RESERVED_FDS = 256
#: The derived MAX_CONNECTIONS never exceeds this (each idle connection also costs memory).
_AUTO_MAX_CONNECTIONS = 10_000
#: How long a connection closed mid-request keeps draining its client's bytes (see the docstring).
LINGER_SECONDS = 2.0


@dataclass(frozen=True)
class HttpLimits:
    max_header_bytes: int = 64 * 1024
    max_header_count: int = 100
    header_timeout_seconds: float = 30.0
    #: 0: derived from the open-files limit (see `connection_cap`).
    max_connections: int = 0
    #: 0: no cap per client address.
    max_connections_per_client: int = 512

    @classmethod
    def of(cls, settings: Settings) -> HttpLimits:
        return cls(
            settings.max_header_bytes,
            settings.max_header_count,
            settings.header_timeout_seconds,
            settings.max_connections,
            settings.max_connections_per_client,
        )


class _Active:
    """The limits in force in this process and the connection counts per server."""

    limits = HttpLimits()
    max_connections = _AUTO_MAX_CONNECTIONS
    installed = False
    per_client: weakref.WeakKeyDictionary[Any, Counter[str]] = weakref.WeakKeyDictionary()


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the soft limit in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:  # a hard limit above the kernel's nr_open
            log.warning("could not raise the open-files limit from %d to %d: %s", soft, wanted, exc)
    return soft


def connection_cap(limits: HttpLimits, open_files: int) -> int:
    """MAX_CONNECTIONS, or what the open-files limit allows with room for the service's own files."""
    if limits.max_connections:
        return limits.max_connections
    room = open_files - max(_RESERVED_FDS, open_files // 4)
    return max(16, min(_AUTO_MAX_CONNECTIONS, room))


def install(limits: HttpLimits) -> None:
    """Bound every uvicorn HTTP/1.1 connection this process serves (see the module docstring)."""
    for base in (HttpToolsProtocol, H11Protocol):
        missing = [name for name in _WRAPPED[base] if not callable(getattr(base, name, None))]
        if missing:
            raise RuntimeError(
                f"this uvicorn's {base.__name__} lacks {missing}: the HTTP header and connection bounds "
                "(src/core/http_limits.py) cannot be applied; refusing to serve unprotected"
            )
    _Active.limits = limits
    _Active.max_connections = connection_cap(limits, raise_open_files_limit())
    HttpToolsProtocol.__new__ = _building(HttpToolsProtocol, BoundedHttpToolsProtocol)  # type: ignore[method-assign]
    H11Protocol.__new__ = _building(H11Protocol, BoundedH11Protocol)  # type: ignore[method-assign]
    _Active.installed = True


def installed() -> bool:
    return _Active.installed


def active_connection_cap() -> int:
    return _Active.max_connections


def _building(base: type, bounded: type) -> Any:
    def __new__(cls: type, *args: Any, **kwargs: Any) -> Any:  # noqa: N807 - replaces the class's __new__
        return object.__new__(bounded if cls is base else cls)

    return staticmethod(__new__)


def _response(status: int, code: str, message: str, extra_headers: bytes = b"") -> bytes:
    body = json.dumps({"detail": message, "code": code}).encode()
    head = (
        b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s"
        b"connection: close\r\n\r\n" % (status, _REASONS[status], len(body), extra_headers)
    )
    return head + body


class _LingeringTransport:
    """The protocol's view of its transport: ``close()`` lingers when the request is still
    arriving (see the module docstring); everything else is the transport's own."""

    def __init__(self, transport: asyncio.Transport, protocol: _ConnectionBounds) -> None:
        self._transport = transport
        self._protocol = protocol
        self.lingering = False

    def __getattr__(self, name: str) -> Any:
        return getattr(self._transport, name)

    def is_closing(self) -> bool:
        return self.lingering or self._transport.is_closing()

    def close(self) -> None:
        transport = self._transport
        if self.lingering or transport.is_closing():
            return
        if not (self._protocol._input_pending() and transport.can_write_eof()):
            transport.close()
            return
        self.lingering = True
        transport.write_eof()  # FIN once the answer is written; our side sends nothing more
        transport.resume_reading()  # flow control may have paused it: keep draining
        self._protocol.loop.call_later(LINGER_SECONDS, transport.close)


class _ConnectionBounds:
    """What both protocols share: the connection caps, the header-block timer, the lingering close."""

    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    server_state: Any
    client: tuple[str, int] | None

    _head_timer: asyncio.TimerHandle | None = None
    _head_bytes = 0
    _client_key: str | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        self._lingering = _LingeringTransport(transport, self)
        super().connection_made(self._lingering)  # type: ignore[misc]
        self._head_bytes = 0
        limits = _Active.limits
        if len(self.connections) > _Active.max_connections:
            self._refuse_connection("the server has too many open connections")
            return
        if limits.max_connections_per_client and self.client:
            counts = _Active.per_client.setdefault(self.server_state, Counter())
            self._client_key = self.client[0]
            counts[self._client_key] += 1
            if counts[self._client_key] > limits.max_connections_per_client:
                self._refuse_connection("this client has too many open connections")
                return
        self._arm_head_timer()  # a connection that never sends a byte is closed too

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        if self._client_key is not None:
            counts = _Active.per_client.get(self.server_state)
            if counts is not None:
                counts[self._client_key] -= 1
                if counts[self._client_key] <= 0:
                    del counts[self._client_key]
            self._client_key = None
        super().connection_lost(exc)  # type: ignore[misc]

    def _input_pending(self) -> bool:
        """The client may still be sending the body of a request whose head was accepted."""
        raise NotImplementedError

    def _draining(self) -> bool:
        """Closed mid-request and lingering: what arrives now is dropped unread."""
        return self._lingering.lingering

    def _refuse_connection(self, message: str) -> None:
        self.transport.write(_response(503, "too_many_connections", message, b"retry-after: 1\r\n"))
        self.transport.close()

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self.loop.call_later(
                _Active.limits.header_timeout_seconds, self._head_timed_out
            )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self._awaiting_head():
            return
        if self._head_bytes:
            self._reject(408)
        else:
            self.transport.close()  # connected and said nothing: no request to answer

    def _awaiting_head(self) -> bool:
        raise NotImplementedError

    def _reject(self, status: int) -> None:
        self._cancel_head_timer()
        limits = _Active.limits
        if status == 431:
            code = "headers_too_large"
            message = (
                f"request headers exceed {limits.max_header_bytes} bytes or {limits.max_header_count} fields"
            )
        else:
            code = "header_timeout"
            message = f"request headers not received within {limits.header_timeout_seconds:g} s"
        self.transport.write(_response(status, code, message))
        self.transport.close()


class BoundedHttpToolsProtocol(_ConnectionBounds, HttpToolsProtocol):
    """uvicorn's fast (httptools) protocol with the bounds: size and count counted while parsing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._in_head = True
        self._head_fields = 0
        self._head_error: int | None = None

    def _awaiting_head(self) -> bool:
        return self._in_head

    def _input_pending(self) -> bool:
        return not self._in_head and self.cycle is not None and self.cycle.more_body

    def data_received(self, data: bytes) -> None:
        if self._draining():
            return
        if self._in_head:
            self._head_bytes += len(data)
            self._arm_head_timer()
        super().data_received(data)
        limits = _Active.limits
        if self._head_error is None and self._in_head and self._head_bytes > limits.max_header_bytes:
            self._head_error = 431
        if self._head_error is not None and not self.transport.is_closing():
            self._reject(self._head_error)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_fields = 0

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_fields += 1
        if self._head_fields > _Active.limits.max_header_count:
            self._head_error = 431
            return
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        head_size = len(self.url) + sum(len(n) + len(v) + 4 for n, v in self.headers)
        if self._head_error is not None or head_size > _Active.limits.max_header_bytes:
            self._head_error = 431
            return  # the app never sees this request; data_received answers and closes
        self._in_head = False
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_body(self, body: bytes) -> None:
        if self._head_error is None:
            super().on_body(body)

    def on_message_complete(self) -> None:
        if self._head_error is not None:
            return
        super().on_message_complete()
        self._in_head = True
        self._head_bytes = 0


class _FieldCountingConnection:
    """An h11 connection whose request events carry at most ``max_fields`` header fields."""

    def __init__(self, conn: h11.Connection, max_fields: int) -> None:
        self._conn = conn
        self._max_fields = max_fields

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def next_event(self) -> Any:
        event = self._conn.next_event()
        if isinstance(event, h11.Request) and len(event.headers) > self._max_fields:
            raise h11.RemoteProtocolError("too many header fields", error_status_hint=431)
        return event


class BoundedH11Protocol(_ConnectionBounds, H11Protocol):
    """uvicorn's pure-Python protocol (`--http h11`) with the bounds: h11's own incomplete-event
    size bound set to MAX_HEADER_BYTES, the field count checked on each request event (both refused
    with uvicorn's 400 before the app runs), and the timer."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        limits = _Active.limits
        self.conn = _FieldCountingConnection(  # type: ignore[assignment]
            h11.Connection(h11.SERVER, max_incomplete_event_size=limits.max_header_bytes),
            limits.max_header_count,
        )

    def _awaiting_head(self) -> bool:
        return self.conn.their_state is h11.IDLE

    def _input_pending(self) -> bool:
        return self.conn.their_state is h11.SEND_BODY

    def data_received(self, data: bytes) -> None:
        if self._draining():
            return
        waiting = self._awaiting_head()
        if waiting:
            self._head_bytes += len(data)
            self._arm_head_timer()
        super().data_received(data)
        if waiting and not self._awaiting_head():
            self._cancel_head_timer()
            self._head_bytes = 0


#: The methods of each uvicorn protocol the bounded subclasses extend (checked by `install`).
_WRAPPED: dict[type, tuple[str, ...]] = {
    HttpToolsProtocol: (
        "connection_made",
        "connection_lost",
        "data_received",
        "on_message_begin",
        "on_header",
        "on_headers_complete",
        "on_body",
        "on_message_complete",
    ),
    H11Protocol: ("connection_made", "connection_lost", "data_received"),
}
