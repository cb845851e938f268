"""Build the LLM service app (``nimrag serve llm``; ``uvicorn --factory services.llm.app:create_app``)."""

from __future__ import annotations

from fastapi import FastAPI

from services.common.app import create_model_app
from services.common.hardware import HardwareInfo
from services.llm.model import load_model_info
from services.llm.profiles import LLM_PROFILES
from services.llm.router import router
from services.llm.serving import LLMServing
from services.llm.settings import LLMSettings


def create_app(settings: LLMSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag LLM", settings=settings or LLMSettings(), hardware=hardware,
                            profiles=LLM_PROFILES, load_model=load_model_info, serving_cls=LLMServing,
                            routers=[router])
