"""From an OpenAI/NIM request to the engine's :class:`SamplingParams`, with every limit checked first."""

from __future__ import annotations

import json

from services.common.errors import InvalidRequestError
from services.llm.engines.base import Constraint, EngineInfo, SamplingParams
from services.llm.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
)
from services.llm.settings import LLMSettings

# OpenAI's default for legacy completions; chat may use the rest of the context.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16


class ContextLengthError(InvalidRequestError):
    def __init__(self, message: str):
        super().__init__(message, param="messages", code="context_length_exceeded")


def completion_budget(request: SamplingRequest, prompt_tokens: int, context: int) -> int:
    """max_tokens for this prompt; a 400 stating the numbers when prompt (+ max_tokens) does not fit."""
    requested = request.token_limit()
    if prompt_tokens >= context:
        raise ContextLengthError(f"This model's maximum context length is {context} tokens. However, your "
                                 f"prompt has {prompt_tokens} tokens, leaving none for the completion. "
                                 "Please reduce the length of the prompt.")
    if requested is None:
        room = context - prompt_tokens
        return min(room, COMPLETIONS_DEFAULT_MAX_TOKENS) if isinstance(request, CompletionRequest) else room
    if prompt_tokens + requested > context:
        raise ContextLengthError(f"This model's maximum context length is {context} tokens. However, you "
                                 f"requested {prompt_tokens + requested} tokens ({prompt_tokens} in the prompt, "
                                 f"{requested} for the completion). Please reduce the length of the prompt or "
                                 "max_tokens.")
    return requested


def check_request_limits(request: SamplingRequest, settings: LLMSettings) -> None:
    if request.stream_options is not None and not request.stream:  # a 400, as OpenAI answers it
        raise InvalidRequestError("stream_options is only allowed when stream is true.", param="stream_options")
    if request.n > settings.max_n:
        raise InvalidRequestError(f"n is {request.n}; this service allows at most {settings.max_n}.", param="n")
    if len(request.stop) > settings.max_stop_sequences:
        raise InvalidRequestError(f"{len(request.stop)} stop sequences given; at most "
                                  f"{settings.max_stop_sequences} are allowed.", param="stop")
    if isinstance(request, CompletionRequest):
        if request.best_of not in (None, request.n):
            raise InvalidRequestError("best_of other than n is not supported.", param="best_of")
        if request.suffix:
            raise InvalidRequestError("suffix (fill-in-the-middle) is not supported by this model.",
                                      param="suffix", code="unsupported_parameter")


def _parse_schema(value: dict | str, param: str) -> dict:
    import jsonschema

    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise InvalidRequestError(f"{param} is not valid JSON: {exc}", param=param,
                                      code="invalid_json_schema") from None
    if not isinstance(value, dict):
        raise InvalidRequestError(f"{param} must be a JSON schema object.", param=param, code="invalid_json_schema")
    try:
        jsonschema.validators.validator_for(value).check_schema(value)
    except jsonschema.SchemaError as exc:
        raise InvalidRequestError(f"{param} is not a valid JSON schema: {exc.message}", param=param,
                                  code="invalid_json_schema") from None
    return value


def constraint_of(request: SamplingRequest) -> Constraint | None:
    """The output constraint asked for: response_format, or NIM's guided_json / guided_choice / guided_regex."""
    fmt = request.response_format
    if fmt and fmt.type == "json_object":
        return Constraint("json_schema", {"type": "object"})
    if fmt and fmt.type == "json_schema":
        return Constraint("json_schema", _parse_schema(fmt.json_schema.schema_, "response_format.json_schema"))
    if (schema := request.extension("guided_json")) is not None:
        return Constraint("json_schema", _parse_schema(schema, "guided_json"))
    if (choices := request.extension("guided_choice")) is not None:
        return Constraint("choice", choices)
    if (regex := request.extension("guided_regex")) is not None:
        return Constraint("regex", regex)
    return None


def _logit_bias(request: SamplingRequest, vocab_size: int) -> dict[int, float]:
    bias = {}
    for key, value in (request.logit_bias or {}).items():
        if not key.lstrip("-").isdigit() or not 0 <= int(key) < vocab_size:
            raise InvalidRequestError(f"logit_bias key '{key}' is not a token id of this model (0 to "
                                      f"{vocab_size - 1}).", param="logit_bias")
        bias[int(key)] = value
    return bias


def sampling_params(request: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                    info: EngineInfo) -> SamplingParams:
    top_k = request.extension("top_k")
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=max(top_k or 0, 0),
        min_p=request.extension("min_p") or 0.0,
        seed=None if request.seed is None else request.seed % 2**32,
        stop=list(request.stop),
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        repetition_penalty=request.extension("repetition_penalty") or 1.0,
        logit_bias=_logit_bias(request, info.vocab_size),
        logprobs=request.logprobs_count(),
        ignore_eos=bool(request.extension("ignore_eos")),
        constraint=constraint_of(request),
    )
