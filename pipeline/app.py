"""Build the pipeline app (``nimrag serve pipeline``; ``uvicorn --factory pipeline.app:create_app``)."""

from __future__ import annotations

import contextlib
import logging

from fastapi import FastAPI

from pipeline.router import router
from pipeline.service import PipelineService
from pipeline.settings import PipelineSettings
from services.common.app import package_version, probe_router
from services.common.errors import install_error_handlers
from services.common.metrics import ServiceMetrics
from services.common.middleware import RequestContextMiddleware
from services.common.tracing import make_tracer


def create_app(settings: PipelineSettings | None = None) -> FastAPI:
    settings = settings or PipelineSettings()
    metrics = ServiceMetrics("pipeline")
    service = PipelineService(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="nimrag RAG pipeline", version=package_version(), lifespan=lifespan)
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.logger = logging.getLogger("nimrag.pipeline")
    install_error_handlers(app)
    app.include_router(probe_router())  # ready once up: the pipeline loads no model
    app.include_router(router)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, api_keys=settings.api_key_list,
                       max_body_bytes=settings.max_body_bytes, tracer=make_tracer("pipeline"))
    return app
