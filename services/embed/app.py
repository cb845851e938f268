"""Build the embedding service app (``nimrag serve embed``; ``uvicorn --factory services.embed.app:create_app``)."""

from __future__ import annotations

import logging

from fastapi import FastAPI

from services.common.app import create_service_app
from services.common.hardware import HardwareInfo, probe
from services.common.metrics import ServiceMetrics
from services.common.profiles import select_profile
from services.embed.model import load_model_info
from services.common.encoder_profiles import ENCODER_PROFILES
from services.embed.router import router
from services.embed.serving import EmbeddingServing
from services.embed.settings import EmbedSettings


def create_app(settings: EmbedSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    settings = settings or EmbedSettings()
    hardware = hardware or probe()
    choice = select_profile(ENCODER_PROFILES, hardware, settings.profile)
    model = load_model_info(settings)
    logging.getLogger("nimrag.embed").info(
        "selected profile", extra={"profile": choice.profile.id, "pinned": choice.pinned, "model": model.name,
                                   "threads": choice.profile.resolved_threads(hardware)})
    metrics = ServiceMetrics("embed")
    serving = EmbeddingServing(settings=settings, model=model, choice=choice, hardware=hardware, metrics=metrics)
    return create_service_app(title="nimrag embeddings", settings=settings, serving=serving, metrics=metrics,
                              routers=[router])
