"""Request and response shapes of ``POST /v1/embeddings`` (OpenAI's, with NIM's ``input_type`` and ``truncate``)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

InputType = Literal["query", "passage"]
Truncate = Literal["NONE", "START", "END"]


class EmbeddingRequest(BaseModel):
    # Unknown fields are ignored, as OpenAI-compatible servers (vLLM, NIM) do, so newer clients keep working.
    model_config = ConfigDict(extra="ignore")

    # Checked item by item in the serving layer, which can say exactly which item is wrong and why.
    input: str | list[Any] = Field(..., description="A text or a list of texts.")
    model: str | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1)
    input_type: InputType | None = None
    truncate: Truncate = "NONE"
    user: str | None = None
