"""Build the reranking service app (``nimrag serve rerank``)."""

from __future__ import annotations

from fastapi import FastAPI

from nimrag.services.common.app import create_model_app
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.rerank.model import load_model_info
from nimrag.services.rerank.profiles import RERANK_PROFILES
from nimrag.services.rerank.router import router
from nimrag.services.rerank.serving import RerankServing
from nimrag.services.rerank.settings import RerankSettings


def create_app(settings: RerankSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag reranking", settings=settings or RerankSettings(), hardware=hardware,
                            profiles=RERANK_PROFILES, load_model=load_model_info, serving_cls=RerankServing,
                            routers=[router])
