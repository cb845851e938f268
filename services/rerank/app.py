"""Build the reranking service app (``nimrag serve rerank``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from services.common.app import create_service_app
from services.rerank.profiles import RERANK_PROFILES
from services.common.hardware import HardwareInfo, probe
from services.common.metrics import ServiceMetrics
from services.common.profiles import select_profile
from services.rerank.model import load_model_info
from services.rerank.router import router
from services.rerank.serving import RerankServing
from services.rerank.settings import RerankSettings


def create_app(settings: RerankSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    settings = settings or RerankSettings()
    hardware = hardware or probe()
    choice = select_profile(RERANK_PROFILES, hardware, settings.profile)
    model = load_model_info(settings)
    logging.getLogger("nimrag.rerank").info(
        "selected profile", extra={"profile": choice.profile.id, "pinned": choice.pinned, "model": model.name,
                                   "scorer": model.scorer, "threads": choice.profile.resolved_threads(hardware)})
    metrics = ServiceMetrics("rerank")
    serving = RerankServing(settings=settings, model=model, choice=choice, hardware=hardware, metrics=metrics)
    return create_service_app(title="nimrag reranking", settings=settings, serving=serving, metrics=metrics,
                              routers=[router])
