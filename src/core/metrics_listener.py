"""A second HTTP listener that serves only GET /metrics, for Prometheus (METRICS_PORT).

Why: metrics carry tenant names (`tenant="alpha"` labels), so on the public port /metrics needs
the admin token; a scraper that cannot send one gets its own listener, bound to METRICS_HOST
(loopback by default). It runs as a second uvicorn Server in the service's event loop, started
and stopped by the app's lifespan; the socket is bound here so a busy port fails start-up with a
clear error (uvicorn would call sys.exit inside a task).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import Awaitable, Callable, Generator

import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

log = logging.getLogger(__name__)


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the main server owns SIGINT/SIGTERM; this one is stopped by the lifespan


class MetricsListener:
    def __init__(self, host: str, port: int, render: Callable[[], Awaitable[bytes]]) -> None:
        self.host, self.port, self.render = host, port, render
        self._server: _Server | None = None
        self._task: asyncio.Task | None = None

    async def start(self) -> None:
        async def metrics(request: Request) -> Response:
            return Response(await self.render(), media_type=CONTENT_TYPE_LATEST)

        app = Starlette(routes=[Route("/metrics", metrics, methods=["GET"])])
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host, self.port))
        except OSError as exc:
            sock.close()
            raise RuntimeError(f"METRICS_PORT {self.port} on {self.host} is not available: {exc}") from exc
        sock.listen(128)
        sock.setblocking(False)
        self.port = sock.getsockname()[1]  # METRICS_PORT=0: the one the kernel chose
        log.info("metrics listening on http://%s:%d", self.host, self.port)
        # access_log=False would detach the process-wide "uvicorn.access" logger (the main server's too).
        config = uvicorn.Config(app, lifespan="off", log_config=None)
        self._server = _Server(config)
        self._task = asyncio.create_task(self._server.serve(sockets=[sock]), name="metrics-listener")

    async def stop(self) -> None:
        if self._server is None or self._task is None:
            return
        self._server.should_exit = True
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await asyncio.wait_for(self._task, 5.0)
