"""What both httpx shells share: one place that maps httpx's failures and timeouts to the client's
terms, so that sync.py and aio.py hold only the lines that differ by colour (``await``)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

import httpx

from .core import Call, RagConnectionError, Settings, is_content_type
from .operations import Operations

#: Idle pooled connections are dropped after this long: well before uvicorn's 5 s keep-alive closes
#: them on the server's side. httpx's own default is 5 s too, so a request sent on a pooled connection
#: just as the server closed it failed with ReadError (seen in a benchmark's upload waves).
KEEPALIVE_EXPIRY_SECONDS = 2.0

Out = TypeVar("Out")
Pieces = TypeVar("Pieces")


class HttpShell(Operations[Out, Pieces]):
    """Connection settings of both shells; each builds its own httpx client in `_open`."""

    def __init__(
        self,
        base_url: str | None = None,
        api_key: str | None = None,
        timeout: float | httpx.Timeout | None = 60.0,
        *,
        admin_token: str | None = None,
        transport: Any = None,
    ) -> None:
        """``base_url`` defaults to $RAGSVC_URL or http://127.0.0.1:8000, ``api_key`` to $RAGSVC_API_KEY
        (sent as ``Authorization: Bearer``), ``admin_token`` (admin calls only) to $RAGSVC_ADMIN_TOKEN;
        ``timeout`` applies per request (seconds); ``transport`` is httpx's (e.g. ``MockTransport``,
        or ``ASGITransport(app)`` for the asyncio client)."""
        self.settings = Settings.resolve(base_url, api_key, admin_token)
        self.timeout = timeout if isinstance(timeout, httpx.Timeout) else httpx.Timeout(timeout)
        options = {
            "headers": self.settings.headers(),
            "timeout": self.timeout,
            "transport": transport,
            "limits": httpx.Limits(keepalive_expiry=KEEPALIVE_EXPIRY_SECONDS),
        }
        self._http = self._open(base_url=self.base_url, **options)

    def _open(self, **options: Any) -> Any:
        raise NotImplementedError


def request_options(call: Call, base: httpx.Timeout) -> dict[str, Any]:
    """Arguments of ``request`` / ``stream``: the call's, with its read timeout if it has one."""
    options = call.httpx_kwargs()
    if call.read_timeout is not None:
        read = call.read_timeout
        options["timeout"] = httpx.Timeout(base.connect, read=read, write=base.write, pool=base.pool)
    return options


@contextlib.contextmanager
def transport_errors(base_url: str) -> Iterator[None]:
    """httpx's network failures as `RagConnectionError` (``refused`` when nothing connected)."""
    try:
        yield
    except httpx.TransportError as exc:
        refused = isinstance(exc, httpx.ConnectError)
        message = f"cannot reach {base_url}: {type(exc).__name__}: {exc}"
        raise RagConnectionError(message, refused=refused) from exc


def stream_ok(call: Call, status: int, headers: Mapping[str, str]) -> bool:
    """May this streamed answer be read? An event stream must say ``text/event-stream``: anything
    else (a 404/405 from an older server, a proxy's page) is an error, so waiting falls back to
    polling. Otherwise the shell reads the body and raises `decode_error`."""
    wanted = call.headers.get("Accept", "*/*")
    return 200 <= status < 300 and (wanted == "*/*" or is_content_type(headers, wanted))
