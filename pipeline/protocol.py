"""Request bodies of the pipeline, close to the NVIDIA RAG Blueprint's so its users feel at home."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$"


class Filter(BaseModel):
    sources: list[str] | None = Field(None, max_length=1000, description="Only chunks of these documents.")


class RetrievalKnobs(BaseModel):
    model_config = ConfigDict(extra="ignore")

    collection_name: str | None = Field(None, pattern=NAME_PATTERN)
    vdb_top_k: int | None = Field(None, ge=1, le=1000)
    reranker_top_k: int | None = Field(None, ge=1, le=100)
    enable_reranker: bool | None = None
    search_mode: Literal["hybrid", "dense", "lexical"] = "hybrid"
    filter: Filter | None = None


class SearchRequest(RetrievalKnobs):
    query: str = Field(..., min_length=1, max_length=65536)

    @field_validator("query")
    @classmethod
    def _not_blank(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("the query is empty")
        return v


class Message(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "user", "assistant"]
    content: str = Field(..., max_length=65536)


class GuardrailsOptions(BaseModel):
    """Which guardrails policy answers (``config_id``, as NeMo Guardrails' server names it), or none."""

    model_config = ConfigDict(extra="forbid")

    config_id: str | None = Field(None, pattern=r"^[a-z0-9][a-z0-9_-]{0,63}$")
    enabled: bool = True


class GenerateRequest(RetrievalKnobs):
    messages: list[Message] = Field(..., min_length=1, max_length=64)
    use_knowledge_base: bool = True
    stream: bool = True
    max_tokens: int | None = Field(None, ge=1, le=32768)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    model: str | None = None
    guardrails: GuardrailsOptions = Field(default_factory=GuardrailsOptions)

    @field_validator("messages")
    @classmethod
    def _ends_with_a_question(cls, v: list[Message]) -> list[Message]:
        if v[-1].role != "user" or not v[-1].content.strip():
            raise ValueError("the last message must be a non-empty user question")
        return v


class ChatRequest(GenerateRequest):
    """OpenAI's chat completions on the pipeline: non-streaming unless asked, as OpenAI."""

    stream: bool = False


class CreateCollection(BaseModel):
    collection_name: str = Field(..., pattern=NAME_PATTERN)
    index_kind: Literal["flat", "hnsw", "ivf"] = "flat"


class SplitOptions(BaseModel):
    chunk_size: int | None = Field(None, ge=16, le=8192)
    chunk_overlap: int | None = Field(None, ge=0, le=4096)


class UploadOptions(BaseModel):
    """The ``data`` form field of ``POST /v1/documents`` (the Blueprint's ``split_options`` included)."""

    model_config = ConfigDict(extra="ignore")

    collection_name: str | None = Field(None, pattern=NAME_PATTERN)
    blocking: bool = False
    split_options: SplitOptions = Field(default_factory=SplitOptions)
