"""Build the LLM service app (``nimrag serve llm``; ``uvicorn --factory nimrag.services.llm.app:create_app``)."""

from __future__ import annotations

from fastapi import FastAPI

from nimrag.services.common.app import create_model_app
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.llm.model import load_model_info
from nimrag.services.llm.profiles import LLM_PROFILES
from nimrag.services.llm.router import router
from nimrag.services.llm.serving import LLMServing
from nimrag.services.llm.settings import LLMSettings


def create_app(settings: LLMSettings | None = None, hardware: HardwareInfo | None = None) -> FastAPI:
    return create_model_app(title="nimrag LLM", settings=settings or LLMSettings(), hardware=hardware,
                            profiles=LLM_PROFILES, load_model=load_model_info, serving_cls=LLMServing,
                            routers=[router])
