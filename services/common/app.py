"""App factory every service uses: middleware, error handlers, the common endpoints and model loading."""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import platform
from collections.abc import Sequence

from fastapi import APIRouter, FastAPI, Request
from starlette.responses import PlainTextResponse, Response

from nimrag.services.common.docs import install_offline_docs
from nimrag.services.common.errors import install_error_handlers
from nimrag.services.common.hardware import HardwareInfo, probe
from nimrag.services.common.memory import MemoryBound
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.middleware import RequestContextMiddleware
from nimrag.services.common.openapi import install_openapi
from nimrag.services.common.profiles import Profile, select_profile
from nimrag.services.common.serving import ModelServing
from nimrag.services.common.settings import ServiceSettings
from nimrag.services.common.tracing import make_tracer

API_VERSION = "1.0.0"


def package_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("nimrag")
    except PackageNotFoundError:
        return "0.0.0+local"


def fastapi_options() -> dict:
    """What every app passes to FastAPI(): its own request tracing off where it has one (0.165 and later trace
    once an SDK provider is set). RequestContextMiddleware makes each request's one SERVER span, the caller's
    child, on every FastAPI version; FastAPI's would be a second one beside it."""
    native = "telemetry" in inspect.signature(FastAPI.__init__).parameters
    return {"telemetry": {"tracing": False}} if native else {}


def get_serving(request: Request) -> ModelServing:
    return request.app.state.serving


def probe_router(check_ready=None) -> APIRouter:
    """What every service answers, model or not: liveness, readiness (``check_ready(request)`` raises while not
    ready), version and metrics (at /v1/metrics and /metrics)."""
    router = APIRouter()

    @router.get("/v1/health/live")
    async def live() -> dict:
        return {"object": "health.response", "message": "Service is live.", "status": "live"}

    @router.get("/v1/health/ready")
    async def ready(request: Request) -> dict:
        if check_ready:
            check_ready(request)  # 503 in the error shape, as NIM, while loading or after a failure
        return {"object": "health.response", "message": "Service is ready.", "status": "ready"}

    @router.get("/v1/version")
    async def version() -> dict:
        return {"release": package_version(), "api": API_VERSION}

    async def metrics(request: Request) -> Response:
        body = request.app.state.metrics.render()
        return Response(body, media_type="text/plain; version=0.0.4; charset=utf-8")

    # NIM's path, and the one Prometheus scrapes unless told otherwise: the same exposition.
    for path in ("/v1/metrics", "/metrics"):
        router.add_api_route(path, metrics, methods=["GET"], response_class=PlainTextResponse)

    return router


def common_router() -> APIRouter:
    router = probe_router(lambda request: get_serving(request).ensure_ready())

    @router.get("/v1/models")
    async def models(request: Request) -> dict:
        return {"object": "list", "data": get_serving(request).model_cards()}

    @router.get("/v1/metadata")
    async def metadata(request: Request) -> dict:
        serving = get_serving(request)
        return {
            "version": package_version(),
            "service": serving.service,
            "modelInfo": [{"shortName": serving.served_model_name, "modelUrl": ""}],
            "selectedModelProfileId": serving.profile.id,
            "profile": serving.profile.as_dict(),
            "profilePinned": serving.choice.pinned,
            "compatibleProfiles": [p.id for p in serving.choice.compatible],
            "hardware": serving.hardware.as_dict(),
            "python": platform.python_version(),
            "state": serving.state.value,
            **serving.metadata(),
        }

    return router


def model_endpoint_errors(model_paths: set[str]):
    """The errors a model service's endpoints answer beyond the shared ones (nimrag.services.common.openapi): the model
    endpoints 404 (unknown model), 429 (queue full) and 503 (still loading); readiness 503."""

    def extra(path: str, method: str, operation: dict) -> set[int]:
        if path in model_paths:
            return {404, 429, 503}
        return {503} if path == "/v1/health/ready" else set()

    return extra


def create_service_app(*, title: str, settings: ServiceSettings, serving: ModelServing, metrics: ServiceMetrics,
                       routers: Sequence[APIRouter]) -> FastAPI:
    """Build a service: the model starts loading when the server starts; /v1/health/ready says when it is done."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        memory = MemoryBound.from_settings(settings)
        memory.start()  # before the engine's threads make their malloc arenas
        loader = asyncio.create_task(serving.load(), name="model-load")
        try:
            yield
        finally:
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await serving.stop()
            await memory.stop()

    app = FastAPI(title=title, version=package_version(), lifespan=lifespan, **fastapi_options())
    app.state.settings = settings
    app.state.serving = serving
    app.state.metrics = metrics
    app.state.logger = logging.getLogger(f"nimrag.{serving.service}")
    install_error_handlers(app)
    app.include_router(common_router())
    for router in routers:
        app.include_router(router)
    install_openapi(app, model_endpoint_errors({route.path for router in routers for route in router.routes}))
    install_offline_docs(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, api_keys=settings.api_key_list,
                       max_body_bytes=settings.max_body_bytes, tracer=make_tracer(serving.service))
    return app


def create_model_app(*, title: str, settings: ServiceSettings, hardware: HardwareInfo | None,
                     profiles: list[Profile], load_model, serving_cls: type[ModelServing],
                     routers: Sequence[APIRouter]) -> FastAPI:
    """Probe the hardware, choose the profile (or honour the pin), read the model folder, and build the app.
    Raises StartupError when the pin or the model folder cannot work, before anything is loaded."""
    hardware = hardware or probe()
    model = load_model(settings)
    choice = select_profile(profiles, hardware, settings.profile, getattr(model, "profile_reasons", None))
    service = serving_cls.service
    logging.getLogger(f"nimrag.{service}").info(
        "selected profile", extra={"profile": choice.profile.id, "pinned": choice.pinned, "model": model.name,
                                   "threads": choice.profile.resolved_threads(hardware)})
    metrics = ServiceMetrics(service)
    serving = serving_cls(settings=settings, model=model, choice=choice, hardware=hardware, metrics=metrics)
    return create_service_app(title=title, settings=settings, serving=serving, metrics=metrics, routers=routers)
