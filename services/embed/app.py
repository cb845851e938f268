"""Build the embedding service app (``nimrag serve embed``;
``uvicorn --factory nimrag.services.embed.app:create_app``)."""

from __future__ import annotations

from fastapi import FastAPI

from nimrag.services.common.app import create_model_app
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.embed.model import load_model_info
from nimrag.services.embed.profiles import EMBED_PROFILES
from nimrag.services.embed.router import router
from nimrag.services.embed.serving import EmbeddingServing
from nimrag.services.embed.settings import EmbedSettings


def create_app(settings: EmbedSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag embeddings", settings=settings or EmbedSettings(), hardware=hardware,
                            profiles=EMBED_PROFILES, load_model=load_model_info, serving_cls=EmbeddingServing,
                            routers=[router])
