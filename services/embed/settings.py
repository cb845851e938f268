"""Embedding service settings (``NIMRAG_EMBED_*``, plus the NIM names in :mod:`nimrag.services.common.settings`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nimrag.services.common.settings import ServiceSettings
from nimrag.services.common.triton import TritonSettings


class EmbedSettings(ServiceSettings, TritonSettings):
    model_config = SettingsConfigDict(env_prefix="NIMRAG_EMBED_", extra="ignore")

    port: int = Field(8001, ge=1, le=65535)
    model: str | None = Field(None, description="A sentence-transformers folder; default: bundled all-MiniLM-L6-v2.")
    max_inputs: int = Field(2048, ge=1, description="Most texts in one request.")
    max_chars: int = Field(65536, ge=1, description="Most characters in one text.")
    max_tokens: int | None = Field(None, ge=2, description="Most tokens per text (default and ceiling: the model's).")
    matryoshka_dims: str = Field("", description="Comma-separated output sizes the model was trained for.")
    query_prefix: str | None = Field(None, description="Override the model's query prompt.")
    passage_prefix: str | None = Field(None, description="Override the model's passage/document prompt.")
    triton_model: str = Field("embed", description="The embedding model in Triton, for the Triton profile "
                                                   "(interface: deploy/triton/README.md).")
