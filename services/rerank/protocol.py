"""Request and response shapes: NIM's ``/v1/ranking`` and the Cohere/Jina/TEI/vLLM-style ``/v1/rerank``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Lenient(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers (vLLM, NIM) do, so newer clients keep working.
    model_config = ConfigDict(extra="ignore")


class TextItem(_Lenient):
    text: str


class RankingRequest(_Lenient):
    model: str | None = None
    query: TextItem
    passages: list[TextItem]
    truncate: Literal["NONE", "END"] = "NONE"


class RerankRequest(_Lenient):
    model: str | None = None
    query: str
    documents: list[str | TextItem]
    top_n: int | None = Field(None, ge=1)
    return_documents: bool = False
    truncate: Literal["NONE", "END"] = "END"  # Cohere-style clients expect long documents to be cut, not refused
