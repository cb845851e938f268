"""Build the reranking service app (``nimrag serve rerank``)."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import create_model_app
from services.common.hardware import HardwareInfo
from services.rerank.model import load_model_info
from services.rerank.profiles import RERANK_PROFILES
from services.rerank.router import router
from services.rerank.serving import RerankServing
from services.rerank.settings import RerankSettings


def create_app(settings: RerankSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag reranking", settings=settings or RerankSettings(), hardware=hardware,
                            profiles=RERANK_PROFILES, load_model=load_model_info, serving_cls=RerankServing,
                            routers=[router])
