"""Build the pipeline app (``nimrag serve pipeline``; ``uvicorn --factory nimrag.pipeline.app:create_app``).

The composition root: ``build_service`` makes every collaborator (store, clients, retriever, answerer,
ingestor, guardrails, task store) from the settings and hands them to PipelineService; nothing else builds them.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from functools import partial

from fastapi import FastAPI

from nimrag.guardrails.runtime import Endpoints, Guardrails
from nimrag.guardrails.service import PolicyService
from nimrag.guardrails.store import PolicyStore
from nimrag.pipeline.answer import SYSTEM_PROMPT, Answerer
from nimrag.pipeline.clients import CLIENT_FAULTS, ServiceClients
from nimrag.pipeline.errors import STORE_ERRORS, install_store_error_handler
from nimrag.pipeline.ingest import Ingestor
from nimrag.pipeline.metrics import PipelineMetrics
from nimrag.pipeline.policy_router import install_policy_error_handler
from nimrag.pipeline.policy_router import router as policy_router
from nimrag.pipeline.retrieval import Retriever
from nimrag.pipeline.router import router
from nimrag.pipeline.service import PipelineService
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.tasks import open_task_store
from nimrag.pipeline.vectorstore import VectorStore, open_vector_store
from nimrag.services.common.app import fastapi_options, package_version, probe_router
from nimrag.services.common.docs import install_offline_docs
from nimrag.services.common.errors import install_error_handlers
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.middleware import RequestContextMiddleware
from nimrag.services.common.openapi import install_openapi
from nimrag.services.common.tracing import make_tracer

# The errors each endpoint answers beyond those every endpoint shares (nimrag.services.common.openapi.shared_errors):
# 400 a bad name or option, 403 no admin key or policies served read-only, 404 no such collection/task/policy,
# 409 a conflict, 422 an invalid policy, 503 the vector store or the task store busy or down (nimrag.pipeline.errors).
# An endpoint that calls the model services also passes on what they refuse (400, 413, 422) and answers 502 (they
# failed), 503 (down or busy) and 504 (too slow): nimrag.pipeline.clients.
CALLS_SERVICES = {502, 503, 504, *CLIENT_FAULTS}
ENDPOINT_ERRORS = {
    ("get", "/v1/collections"): STORE_ERRORS,
    ("post", "/v1/collections"): {*STORE_ERRORS, *CALLS_SERVICES},
    ("delete", "/v1/collections"): STORE_ERRORS,
    ("post", "/v1/documents"): {*STORE_ERRORS, *CALLS_SERVICES},
    ("get", "/v1/documents"): STORE_ERRORS,
    ("delete", "/v1/documents"): STORE_ERRORS,
    ("get", "/v1/status"): {404, 503},
    ("post", "/v1/search"): {*STORE_ERRORS, *CALLS_SERVICES},
    ("post", "/v1/generate"): {*STORE_ERRORS, *CALLS_SERVICES},
    ("post", "/v1/chat/completions"): {*STORE_ERRORS, *CALLS_SERVICES},
    ("post", "/v1/guardrails/configs/validate"): {422},
    ("post", "/v1/guardrails/configs"): {400, 403, 409},
    ("get", "/v1/guardrails/configs/{policy_id}"): {400, 404},
    ("put", "/v1/guardrails/configs/{policy_id}"): {400, 403, 404, 409},
    ("delete", "/v1/guardrails/configs/{policy_id}"): {400, 403, 404, 409},
    ("get", "/v1/guardrails/configs/{policy_id}/history"): {400, 404},
    ("get", "/v1/guardrails/configs/{policy_id}/diff"): {400, 404},
    ("post", "/v1/guardrails/configs/{policy_id}/rollback"): {400, 403, 404, 409},
}


def endpoint_errors(path: str, method: str, operation: dict) -> set[int]:
    return ENDPOINT_ERRORS.get((method, path), set())


def accepted_keys(settings: PipelineSettings) -> list[str]:
    """The admin key opens every endpoint a normal key opens (one Bearer header carries one key). With no normal
    keys set the API stays open, and the admin key only gates policy changes."""
    keys = settings.api_key_list
    return [*keys, settings.admin_api_key] if keys and settings.admin_api_key else keys


async def guardrails_endpoints(settings: PipelineSettings, clients: ServiceClients) -> Endpoints:
    """Where a policy's own rails reach the models: the services this pipeline uses."""
    return Endpoints(llm_url=settings.llm_url, llm_model=await clients.model("llm"), embed_url=settings.embed_url,
                     embed_model=await clients.model("embed"), api_key=settings.service_api_key)


def build_service(settings: PipelineSettings, metrics: ServiceMetrics | None = None, *,
                  store: VectorStore | None = None, clients: ServiceClients | None = None) -> PipelineService:
    """The pipeline's world, from its settings (the CLI builds one too, without the HTTP app). ``store`` and
    ``clients``, the two collaborators that reach outside the process, may be given instead (tests)."""
    clients = clients or ServiceClients(settings)
    retriever = Retriever(clients)
    policy_store = PolicyStore(settings.guardrails_folder(), read_only=settings.guardrails_read_only)
    endpoints = partial(guardrails_endpoints, settings, clients)
    guardrails = Guardrails(policy_store, endpoints, lambda texts: clients.embed(texts, "query"),
                            protected_texts=[SYSTEM_PROMPT], allow_python=settings.guardrails_allow_python)
    return PipelineService(
        settings, store=store or open_vector_store(settings), clients=clients, retriever=retriever,
        answerer=Answerer(clients, retriever), ingestor=Ingestor(clients, settings), guardrails=guardrails,
        policy_store=policy_store, guardrails_endpoints=endpoints,
        tasks=open_task_store(settings),
        metrics=PipelineMetrics(metrics or ServiceMetrics("pipeline")))


ServiceFactory = Callable[[PipelineSettings, ServiceMetrics], PipelineService]


def create_app(settings: PipelineSettings | None = None, build: ServiceFactory = build_service) -> FastAPI:
    """The HTTP app over the service ``build`` makes (tests pass one that swaps collaborators for fakes); its
    metrics go to the app's own registry."""
    settings = settings or PipelineSettings()
    metrics = ServiceMetrics("pipeline")
    service = build(settings, metrics)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI):
        try:
            yield
        finally:
            await service.close()

    app = FastAPI(title="nimrag RAG pipeline", version=package_version(), lifespan=lifespan, **fastapi_options())
    app.state.settings = settings
    app.state.service = service
    app.state.metrics = metrics
    app.state.policies = PolicyService(service.policy_store, service.guardrails_endpoints,
                                       settings.guardrails_allow_python, settings.guardrails_max_policy_bytes)
    app.state.logger = logging.getLogger("nimrag.pipeline")
    install_error_handlers(app)
    app.include_router(probe_router())  # ready once up: the pipeline loads no model
    app.include_router(router)
    app.include_router(policy_router)
    install_policy_error_handler(app)
    install_store_error_handler(app)
    install_openapi(app, endpoint_errors)
    install_offline_docs(app)
    app.add_middleware(RequestContextMiddleware, metrics=metrics, api_keys=accepted_keys(settings),
                       max_body_bytes=settings.max_body_bytes, tracer=make_tracer("pipeline"))
    return app
