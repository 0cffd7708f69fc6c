"""Application factory and uvicorn entry point.

python main.py            # serve on HOST:PORT (default 127.0.0.1:8000)
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import uvicorn
from fastapi import FastAPI

from api import (
    routes_admin,
    routes_documents,
    routes_events,
    routes_health,
    routes_ingest,
    routes_query,
    routes_tasks,
)
from api.errors import install_error_handlers
from api.routes_ui import router as ui_router
from api.views import task_view
from src.config import Settings, get_settings
from src.logs import configure_logging
from src.service import start_services, stop_services


def create_app(settings: Settings | None = None, *, redis_prefix: str | None = None) -> FastAPI:
    """Build the app; services start in the lifespan so a test can build many apps in one process."""
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        prefix = redis_prefix or settings.redis_prefix
        app.state.services = await start_services(
            settings, redis_prefix=prefix, task_view=lambda record: task_view(record).model_dump()
        )
        try:
            yield
        finally:
            await stop_services(app.state.services)

    app = FastAPI(
        title="RAG ingestion service",
        version="0.1.0",
        description="Asynchronous (202) document ingestion and querying over LightRAG / RAG-Anything.",
        lifespan=lifespan,
    )
    install_error_handlers(app)
    routers = (
        routes_ingest,
        routes_tasks,
        routes_events,
        routes_query,
        routes_documents,
        routes_health,
        routes_admin,
    )
    for module in routers:
        app.include_router(module.router)
    app.include_router(ui_router)
    return app


def main() -> None:
    settings = get_settings()
    configure_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        log_config=None,  # uvicorn logs through our handler (JSON lines by default)
        timeout_graceful_shutdown=int(settings.shutdown_grace_seconds) + 5,
    )


if __name__ == "__main__":
    main()
