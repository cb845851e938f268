"""Request bodies of the LLM service: OpenAI's chat and completions, with NIM's ``nvext`` extensions.

NIM's extensions are accepted inside ``nvext`` and at the top level (as vLLM accepts them); unknown fields are
ignored, as OpenAI-compatible servers do, so newer clients keep working.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

MAX_LOGPROBS = 20


class NvExt(BaseModel):
    model_config = ConfigDict(extra="ignore")

    top_k: int | None = Field(None, ge=-1)
    repetition_penalty: float | None = Field(None, gt=0, le=10)
    min_p: float | None = Field(None, ge=0, le=1)
    ignore_eos: bool | None = None
    guided_json: dict | str | None = None
    guided_choice: list[str] | None = Field(None, min_length=1, max_length=1024)
    guided_regex: str | None = None

    @field_validator("guided_choice")
    @classmethod
    def _non_empty_choices(cls, v):
        if v is not None and any(not c for c in v):
            raise ValueError("choices must be non-empty strings")
        return v


class JsonSchemaFormat(BaseModel):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self


class StreamOptions(BaseModel):
    include_usage: bool = False


class SamplingRequest(NvExt):
    """Fields chat and completions share (OpenAI's, then NIM's extensions at the top level)."""

    model: str | None = None
    max_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: int = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: list[str] = Field(default_factory=list, description="A string or a list of strings.")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = None
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=256)
    nvext: NvExt | None = None

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_list(cls, v):
        stops = [v] if isinstance(v, str) else v if v is not None else []
        if isinstance(stops, list) and any(s == "" for s in stops):
            raise ValueError("stop sequences must be non-empty strings")
        return stops

    def extension(self, name: str) -> Any:
        """A NIM extension from ``nvext`` (wins) or the top level."""
        inner = getattr(self.nvext, name, None) if self.nvext else None
        return inner if inner is not None else getattr(self, name)


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = Field(None, max_length=64)

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""

    @model_validator(mode="after")
    def _content_given(self):
        if self.content is None and self.role != "assistant":
            raise ValueError(f"a '{self.role}' message needs content")
        return self


class ChatCompletionRequest(SamplingRequest):
    model_config = ConfigDict(extra="ignore")

    messages: list[ChatMessage] = Field(..., min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)

    @model_validator(mode="after")
    def _top_logprobs_need_logprobs(self):
        if self.top_logprobs is not None and not self.logprobs:
            raise ValueError("top_logprobs needs logprobs set to true")
        return self

    def token_limit(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    def logprobs_count(self) -> int | None:
        return (self.top_logprobs or 0) if self.logprobs else None


class CompletionRequest(SamplingRequest):
    model_config = ConfigDict(extra="ignore")

    prompt: str | list[str] | list[int] | list[list[int]]
    echo: bool = False
    suffix: str | None = None
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1)

    @field_validator("prompt")
    @classmethod
    def _non_empty(cls, v):
        if isinstance(v, list) and (not v or any(isinstance(p, list) and not p for p in v)):
            raise ValueError("prompt must not be empty")
        return v

    def token_limit(self) -> int | None:
        return self.max_tokens

    def logprobs_count(self) -> int | None:
        return self.logprobs


class TokenizeRequest(BaseModel):
    """vLLM's ``/tokenize``: a prompt, or chat messages with the model's template applied."""

    model_config = ConfigDict(extra="ignore")

    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = Field(None, min_length=1)

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' or 'messages'")
        return self
