"""Reranking service settings (``NIMRAG_RERANK_*``, plus the NIM names in :mod:`nimrag.services.common.settings`)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nimrag.services.common.settings import ServiceSettings
from nimrag.services.common.triton import TritonSettings


class RerankSettings(ServiceSettings, TritonSettings):
    model_config = SettingsConfigDict(env_prefix="NIMRAG_RERANK_", extra="ignore")

    port: int = Field(8002, ge=1, le=65535)
    model: str | None = Field(None, description="A cross-encoder folder (sentence-transformers CrossEncoder or a "
                                                "HF sequence-classification model with one label), or an encoder "
                                                "folder scored as `scorer` says; default: the bundled "
                                                "all-MiniLM-L6-v2, scored by late interaction.")
    scorer: Literal["late-interaction", "bi-encoder"] = Field(
        "late-interaction", description="How an encoder (non-cross-encoder) model scores: MaxSim over token "
                                        "embeddings, or cosine of pooled embeddings (measured: bench/rerank_quality.py).")
    max_passages: int = Field(512, ge=1, description="Most passages in one request.")
    max_chars: int = Field(65536, ge=1, description="Most characters in the query or in one passage.")
    max_tokens: int | None = Field(None, ge=8, description="Most tokens per scored sequence (default and ceiling: "
                                                           "the model's).")
    triton_model: str = Field("rerank", description="The reranking model in Triton, for the Triton profile: a "
                                                    "cross-encoder's logits, or an encoder's embeddings as the "
                                                    "scorer needs (deploy/triton/README.md).")
