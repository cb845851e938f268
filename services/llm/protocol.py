"""Request bodies of the LLM service: OpenAI's chat and completions, with NIM's ``nvext`` extensions.

NIM's extensions are accepted inside ``nvext`` and at the top level (as vLLM accepts them). Fields OpenAI, NIM or
vLLM define that nimrag does not implement are listed in each request's ``unsupported_fields`` (a 400 naming the
field, unless its value asks for nothing); any other unknown field is ignored and named back
(:mod:`nimrag.services.common.fields`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

from pydantic import ConfigDict, Field, field_validator, model_validator

from nimrag.services.common.fields import INT32_MAX, RequestModel, Unsupported
from nimrag.services.common.openapi import served_rule, setting_limit

MAX_LOGPROBS = 20
CHAT_TEMPLATE_RULES = ("The conversation, as the model's chat template takes it: an engine may refuse one that "
                       "ends with two assistant messages (llama.cpp: a 400).")
TokenCount = Annotated[int, Field(ge=1, le=INT32_MAX, description="Tokens to generate at most: the prompt and "
                                  "these must fit the model's context (max_model_len in GET /v1/models).")]
# As the validators and the serving layer check them (their own messages name the item): the schema states them.
NonEmptyText = Annotated[str, served_rule(minLength=1)]
TokenIds = Annotated[list[Annotated[int, served_rule(minimum=0)]], served_rule(minItems=1)]
_P = TypeVar("_P")
Prompts = Annotated[list[_P], served_rule(minItems=1), setting_limit(maxItems="max_prompts")]
StopInput = NonEmptyText | Annotated[list[NonEmptyText], setting_limit(maxItems="max_stop_sequences")] | None


def _absent_or(name: str, then: dict) -> dict:
    """A cross-field rule as a schema: ``name`` is absent or null, or ``then`` holds."""
    return {"anyOf": [{"properties": {name: {"type": "null"}}}, then]}


_STREAM_OPTIONS_NEED_STREAM = _absent_or("stream_options", {"required": ["stream"],
                                                            "properties": {"stream": {"const": True}}})
_TOP_LOGPROBS_NEED_LOGPROBS = _absent_or("top_logprobs", {"required": ["logprobs"],
                                                          "properties": {"logprobs": {"const": True}}})
_ECHO_NEEDS_TEXT = {"anyOf": [{"properties": {"echo": {"const": False}}},
                              {"properties": {"prompt": {"anyOf": [{"type": "string"},
                                                                   {"type": "array", "items": {"type": "string"}}]}}}]}


# --- known but unsupported fields ------------------------------------------------------------------------------
# What OpenAI's chat/completions and completions, NIM for LLMs and vLLM (NIM's engine) define beyond the fields
# declared below. Each is a 400 naming it, unless its value asks for nothing (None, or a listed harmless value).
_TOOLS = "tool and function calling are not implemented"

# vLLM's sampling and serving extensions, which NIM accepts at the top level and inside nvext.
_EXTENSIONS = {
    "guided_grammar": Unsupported("context-free grammars are not implemented; use guided_json, guided_choice "
                                  "or response_format"),
    "guided_decoding_backend": Unsupported("the grammar backend is the engine's own (llama.cpp: llguidance)"),
    "guided_whitespace_pattern": Unsupported("the JSON grammar's whitespace is the engine's own"),
    "structural_tag": Unsupported("structural tags are not implemented"),
    "min_tokens": Unsupported("a minimum completion length is not implemented (llama.cpp has none)",
                              harmless=(0,)),
    "stop_token_ids": Unsupported("stop token ids are not implemented; use stop strings", harmless=([],)),
    "bad_words": Unsupported("banned words are not implemented; use logit_bias", harmless=([],)),
    "allowed_token_ids": Unsupported("restricting the vocabulary is not implemented; use logit_bias or "
                                     "guided_choice"),
    "include_stop_str_in_output": Unsupported("the stop string is always left out", harmless=(False,)),
    "skip_special_tokens": Unsupported("special tokens are always left out of the text", harmless=(True,)),
    "spaces_between_special_tokens": Unsupported("special tokens are always left out of the text",
                                                 harmless=(True,)),
    "truncate_prompt_tokens": Unsupported("prompts are never truncated: one that does not fit is a 400"),
    "prompt_logprobs": Unsupported("logprobs of prompt tokens are not implemented"),
    "use_beam_search": Unsupported("beam search is not implemented", harmless=(False,)),
    "length_penalty": Unsupported("beam search is not implemented", harmless=(1,)),
    "logits_processors": Unsupported("custom logits processors are not loaded"),
    "return_tokens_as_token_ids": Unsupported("logprobs name tokens by their text", harmless=(False,)),
    "return_token_ids": Unsupported("answers carry text, not token ids", harmless=(False,)),
    "priority": Unsupported("requests are served first come, first served", harmless=(0,)),
    "cache_salt": Unsupported("the prompt cache is not salted per request"),
    "kv_transfer_params": Unsupported("disaggregated serving is not implemented"),
    "vllm_xargs": Unsupported("vLLM's custom extension arguments are not read"),
    "mm_processor_kwargs": Unsupported("this service serves text-only models"),
}

# Fields both OpenAI APIs define.
_SHARED = {
    **_EXTENSIONS,
    **{f"nvext.{name}": unsupported for name, unsupported in _EXTENSIONS.items()},
    "service_tier": Unsupported("there is one service tier", harmless=("auto", "default")),
    "store": Unsupported("completions are not stored", harmless=(False,)),
    "metadata": Unsupported("completions are not stored, so there is nothing to tag", harmless=({},)),
    "stream_options.include_obfuscation": Unsupported("stream events are not padded", harmless=(False,)),
    "stream_options.continuous_usage_stats": Unsupported("usage comes in the last chunk only", harmless=(False,)),
}

CHAT_UNSUPPORTED: dict[str, Unsupported] = {
    **_SHARED,
    "tools": Unsupported(_TOOLS, harmless=([],)),
    "tool_choice": Unsupported(_TOOLS, harmless=("none",)),
    # Only meaningful with tools, and a request that has tools is refused for them.
    "parallel_tool_calls": Unsupported(_TOOLS, harmless=(True, False)),
    "functions": Unsupported(_TOOLS, harmless=([],)),
    "function_call": Unsupported(_TOOLS, harmless=("none",)),
    "messages[].tool_calls": Unsupported(_TOOLS, harmless=([],)),
    "messages[].tool_call_id": Unsupported(_TOOLS),
    "messages[].function_call": Unsupported(_TOOLS),
    "messages[].audio": Unsupported("audio is not implemented"),
    "messages[].refusal": Unsupported("refusal messages are not implemented"),
    "messages[].annotations": Unsupported("annotations (citations) are not implemented", harmless=([],)),
    "audio": Unsupported("audio output is not implemented"),
    "modalities": Unsupported("only text is generated", harmless=(["text"],)),
    "prediction": Unsupported("predicted outputs are not implemented"),
    "reasoning_effort": Unsupported("the model does not reason"),
    "verbosity": Unsupported("answer length is set by max_tokens", harmless=("medium",)),
    "web_search_options": Unsupported("web search is not implemented"),
    "best_of": Unsupported("best_of is a completions field", harmless=(1,)),
    "echo": Unsupported("echoing the last message is not implemented", harmless=(False,)),
    "add_generation_prompt": Unsupported("the assistant's turn is always opened", harmless=(True,)),
    "continue_final_message": Unsupported("continuing the last message is not implemented", harmless=(False,)),
    "add_special_tokens": Unsupported("the chat template places the special tokens", harmless=(False,)),
    "documents": Unsupported("chat-template documents are not implemented; put them in a message"),
    "chat_template": Unsupported("the model's own chat template is always used"),
    "chat_template_kwargs": Unsupported("the chat template takes no arguments here", harmless=({},)),
}

COMPLETION_UNSUPPORTED: dict[str, Unsupported] = {
    **_SHARED,
    "suffix": Unsupported("fill-in-the-middle is not implemented", harmless=("",)),
    "prompt_embeds": Unsupported("prompts are text or token ids"),
    "add_special_tokens": Unsupported("special tokens (BOS) are added as the model expects", harmless=(True,)),
}

TOKENIZE_UNSUPPORTED: dict[str, Unsupported] = {
    "add_special_tokens": Unsupported("special tokens (BOS) are added as the model expects", harmless=(True,)),
    "add_generation_prompt": Unsupported("the assistant's turn is always opened", harmless=(True,)),
    "continue_final_message": Unsupported("continuing the last message is not implemented", harmless=(False,)),
    "chat_template": Unsupported("the model's own chat template is always used"),
    "chat_template_kwargs": Unsupported("the chat template takes no arguments here", harmless=({},)),
    "tools": Unsupported(_TOOLS, harmless=([],)),
    "return_token_strs": Unsupported("token strings are not returned", harmless=(False,)),
    "mm_processor_kwargs": Unsupported("this service serves text-only models"),
}


# The smallest positive float32: engines take the penalty as one, and a smaller one is 0 there (llama.cpp's 400).
_FLOAT32_TINIEST = 2.0**-149


class NvExt(RequestModel):
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    repetition_penalty: Annotated[float, served_rule(minimum=_FLOAT32_TINIEST)] | None = Field(None, gt=0, le=10)
    min_p: float | None = Field(None, ge=0, le=1)
    ignore_eos: bool | None = None
    guided_json: dict | str | None = Field(None, description="A JSON schema the answer follows: an object, or the "
                                           "same as a JSON string; a 400 when it is not a valid JSON schema.")
    guided_choice: list[NonEmptyText] | None = Field(None, min_length=1, max_length=1024)
    guided_regex: Annotated[str, served_rule(format="regex")] | None = Field(
        None, description="A regular expression the answer matches, where the engine constrains output by regex "
        "(llama.cpp does not: a 400).")

    @field_validator("guided_choice")
    @classmethod
    def _non_empty_choices(cls, v):
        if v is not None and any(not c for c in v):
            raise ValueError("choices must be non-empty strings")
        return v


class JsonSchemaFormat(RequestModel):
    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict = Field(default_factory=dict, alias="schema", description="A JSON schema (a 400 when it is not "
                          "a valid one).")
    strict: bool | None = None


class ResponseFormat(RequestModel):
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"type": {"enum": ["text", "json_object"]}}},
        {"required": ["json_schema"], "properties": {"json_schema": {"type": "object"}}}]})

    type: Literal["text", "json_object", "json_schema"] = Field(..., description="'json_schema' needs "
                                                                "json_schema.")
    json_schema: JsonSchemaFormat | None = None

    @model_validator(mode="after")
    def _schema_given(self):
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError("type 'json_schema' needs a 'json_schema' object with a 'schema'")
        return self


class StreamOptions(RequestModel):
    include_usage: bool = False


class SamplingRequest(NvExt):
    """Fields chat and completions share (OpenAI's, then NIM's extensions at the top level)."""

    model_config = ConfigDict(json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM]})

    model: str | None = None
    max_tokens: TokenCount | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    n: Annotated[int, setting_limit(maximum="max_n")] = Field(1, ge=1, le=128)
    stream: bool = False
    stream_options: StreamOptions | None = Field(None, description="Only with stream: true.")
    stop: list[str] = Field(default_factory=list, description="A string or a list of strings.")
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    presence_penalty: float = Field(0.0, ge=-2, le=2)
    frequency_penalty: float = Field(0.0, ge=-2, le=2)
    logit_bias: dict[str, Annotated[float, Field(ge=-100, le=100)]] | None = Field(
        None, description="Token id (below the model's vocabulary size) -> bias.",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]{1,10}$"}})
    response_format: ResponseFormat | None = None
    user: str | None = Field(None, max_length=256)
    nvext: NvExt | None = None

    @field_validator("stop", mode="before", json_schema_input_type=StopInput)
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


class TextPart(RequestModel):
    type: Literal["text"]
    text: str


class ChatMessage(RequestModel):
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"properties": {"role": {"const": "assistant"}}},
        {"required": ["content"], "properties": {"content": {"type": ["string", "array"]}}}]})

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = Field(None, description="Needed, except in an assistant's message.")
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
    unsupported_fields = CHAT_UNSUPPORTED
    model_config = ConfigDict(json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _TOP_LOGPROBS_NEED_LOGPROBS]})

    messages: list[ChatMessage] = Field(..., min_length=1, description=CHAT_TEMPLATE_RULES)
    max_completion_tokens: TokenCount | None = None
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS, description="Needs logprobs: true.")

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
    unsupported_fields = COMPLETION_UNSUPPORTED
    model_config = ConfigDict(json_schema_extra={"allOf": [_STREAM_OPTIONS_NEED_STREAM, _ECHO_NEEDS_TEXT]})

    # Token ids are checked against the model's vocabulary in the serving layer, which names the wrong one.
    prompt: NonEmptyText | Prompts[NonEmptyText] | TokenIds | Prompts[TokenIds] = Field(
        ..., description="A text, texts, token ids (each below the model's vocabulary size), or lists of them.")
    echo: bool = Field(False, description="Needs text prompts.")
    logprobs: int | None = Field(None, ge=0, le=MAX_LOGPROBS)
    best_of: int | None = Field(None, ge=1, le=128, description="Only n (every sample is returned).")

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


class TokenizeRequest(RequestModel):
    """vLLM's ``/tokenize``: a prompt, or chat messages with the model's template applied."""

    unsupported_fields = TOKENIZE_UNSUPPORTED
    model_config = ConfigDict(json_schema_extra={"anyOf": [
        {"required": ["prompt"], "properties": {"prompt": {"type": "string"}, "messages": {"type": "null"}}},
        {"required": ["messages"], "properties": {"messages": {"type": "array"}, "prompt": {"type": "null"}}}]})

    model: str | None = None
    prompt: str | None = Field(None, description="Either prompt or messages.")
    messages: list[ChatMessage] | None = Field(None, min_length=1, description=CHAT_TEMPLATE_RULES)

    @model_validator(mode="after")
    def _one_input(self):
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give either 'prompt' or 'messages'")
        return self
