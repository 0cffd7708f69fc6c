"""Application factory and entry points.

python main.py                                        # HOST:PORT from the settings (127.0.0.1:8000)
uvicorn main:app                                      # the FastAPI convention (also `fastapi run`)
gunicorn -k uvicorn.workers.UvicornWorker main:app    # several worker processes

`app` is built at import time from the environment; tests call `create_app(settings)` instead.
Building the app is cheap: every service starts in the lifespan. Importing this module also bounds
uvicorn's HTTP protocols (headers, idle connections, connection counts: src/core/http_limits.py),
so every launcher above serves with the same bounds.
"""

from __future__ import annotations

import logging
import socket
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import APIRouter, FastAPI

from api import lightrag
from api.errors import install_error_handlers
from api.routes import admin, api_docs, batch, documents, events, health, ingest, query, tasks, usage
from api.routes.ui import router as ui_router
from api.routes.webui import router as webui_router
from api.task_poll import TaskPollMiddleware
from api.views import task_view
from src.core.config import Settings, get_settings
from src.core.heap import long_lived_objects_frozen
from src.core.http_limits import HttpLimits, active_connection_cap
from src.core.http_limits import install as install_http_limits
from src.core.logs import configure_logging
from src.core.metrics_listener import MetricsListener
from src.core.shutdown_watch import reported_if_slow
from src.wiring import start_services, stop_services


def create_app(settings: Settings | None = None, *, redis_prefix: str | None = None) -> FastAPI:
    """Build the app; services start in the lifespan so a test can build many apps in one process."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prefix = redis_prefix or settings.redis_prefix
        services = await start_services(
            settings, redis_prefix=prefix, task_view=lambda record: task_view(record).model_dump()
        )
        app.state.services = services
        listener = None
        try:
            if settings.metrics_port is not None:
                listener = MetricsListener(
                    settings.metrics_host, settings.metrics_port, lambda: health.render_metrics(services)
                )
                await listener.start()
            with long_lived_objects_frozen():
                yield
        finally:
            async with reported_if_slow("shutdown", settings.shutdown_grace_seconds + 20):
                if listener is not None:
                    await listener.stop()
                await stop_services(services)

    worker = settings.role == "worker"
    app = FastAPI(
        title="RAG ingestion service",
        version="0.1.0",
        description="Asynchronous (202) document ingestion and querying over LightRAG / RAG-Anything.",
        lifespan=lifespan,
        # /docs is ours (api/routes/api_docs.py: Swagger UI without a CDN).
        docs_url=None,
        # A worker runs tasks and answers only its probes: every other path is a 404 (JSON).
        **({"openapi_url": None, "redoc_url": None} if worker else {}),
    )
    install_error_handlers(app)
    if worker:
        probes = APIRouter()
        probes.routes.extend(r for r in health.router.routes if getattr(r, "path", None) in WORKER_PATHS)
        app.include_router(probes)
        return app
    app.add_middleware(TaskPollMiddleware, handlers=app.exception_handlers)  # GET /task/{id}
    routers = (ingest, batch, tasks, events, query, documents, health, usage, admin, api_docs)
    for module in routers:
        app.include_router(module.router)
    app.include_router(ui_router)
    app.include_router(lightrag.router)  # LightRAG Server's API under /lightrag
    app.include_router(lightrag.ollama_root_router)  # its Ollama API also at /api, as LightRAG Server
    app.include_router(webui_router)  # LightRAG's WebUI at /webui/, talking to /lightrag
    return app


#: The only paths a ROLE=worker instance serves.
WORKER_PATHS = frozenset({"/health", "/metrics"})


settings = get_settings()
configure_logging(settings.log_level, settings.log_format)
install_http_limits(HttpLimits.of(settings))
logging.getLogger(__name__).info(
    "HTTP bounds: headers %d bytes / %d fields / %g s, %d connections (%s per client)",
    settings.max_header_bytes,
    settings.max_header_count,
    settings.header_timeout_seconds,
    active_connection_cap(),
    settings.max_connections_per_client or "no cap",
)
app = create_app(settings)


def listening_socket(settings: Settings) -> socket.socket:
    """The socket to serve on: the inherited LISTEN_FD, else HOST:PORT bound here (PORT=0: any free
    port). Bound before the app starts, so the address is known (and logged) at once and a busy
    port fails here with a clear error."""
    if settings.listen_fd is not None:
        sock = socket.socket(fileno=settings.listen_fd)  # family and type are read from the descriptor
        if sock.type != socket.SOCK_STREAM or not sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
            raise SystemExit(f"LISTEN_FD={settings.listen_fd} is not a listening stream socket")
        sock.set_inheritable(False)  # children of the service (redis-server, parsers) must not hold it
        return sock
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((settings.host, settings.port))
    except OSError as exc:
        sock.close()
        raise SystemExit(f"cannot listen on {settings.host}:{settings.port}: {exc}") from None
    sock.listen(2048)  # uvicorn's default backlog
    return sock


def main() -> None:
    sock = listening_socket(settings)
    host, port = sock.getsockname()[:2]
    logging.getLogger("main").info("listening on http://%s:%d", f"[{host}]" if ":" in host else host, port)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,  # the bound port, so uvicorn's own start-up line names it too
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn logs through our handler (JSON lines by default)
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )
    server = uvicorn.Server(config)
    server.run(sockets=[sock])
    if not server.started:
        sys.exit(3)  # uvicorn's STARTUP_FAILURE, as uvicorn.run exits


if __name__ == "__main__":
    main()
