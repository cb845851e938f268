"""Build the embedding service app (``nimrag serve embed``; ``uvicorn --factory services.embed.app:create_app``)."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import create_model_app
from services.common.hardware import HardwareInfo
from services.embed.model import load_model_info
from services.embed.profiles import EMBED_PROFILES
from services.embed.router import router
from services.embed.serving import EmbeddingServing
from services.embed.settings import EmbedSettings


def create_app(settings: EmbedSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag embeddings", settings=settings or EmbedSettings(), hardware=hardware,
                            profiles=EMBED_PROFILES, load_model=load_model_info, serving_cls=EmbeddingServing,
                            routers=[router])
