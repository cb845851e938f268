"""From an OpenAI/NIM request to the engine's :class:`SamplingParams`, with every limit checked first."""

from __future__ import annotations

import json
import re

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.llm.engines.base import Constraint, EngineInfo, SamplingParams
from nimrag.services.llm.protocol import (
    ChatCompletionRequest,
    CompletionRequest,
    SamplingRequest,
)
from nimrag.services.llm.settings import LLMSettings

# OpenAI's default for legacy completions; chat may use the rest of the context.
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
_TOKEN_ID = re.compile(r"[0-9]{1,10}")


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
    if isinstance(request, CompletionRequest) and request.best_of not in (None, request.n):
        raise InvalidRequestError("best_of other than n is not supported: every sample is returned.",
                                  param="best_of", code="unsupported_parameter")


def _parse_schema(value: dict | str, param: str) -> dict:
    import jsonschema

    def invalid(why: str) -> InvalidRequestError:
        return InvalidRequestError(f"{param} {why}", param=param, code="invalid_json_schema")

    try:
        if isinstance(value, str):
            value = json.loads(value)
        if not isinstance(value, dict):
            raise invalid("must be a JSON schema object.")
        jsonschema.validators.validator_for(value).check_schema(value)
    except json.JSONDecodeError as exc:
        raise invalid(f"is not valid JSON: {exc}") from None
    except jsonschema.SchemaError as exc:
        raise invalid(f"is not a valid JSON schema: {exc.message}") from None
    except RecursionError:
        raise invalid("is nested too deeply.") from None
    return value


def constraint_of(request: SamplingRequest) -> Constraint | None:
    """The output constraint asked for: response_format, or NIM's guided_json / guided_choice / guided_regex."""
    fmt = request.response_format
    if fmt and fmt.type == "json_object":
        return Constraint("json_schema", {"type": "object"}, "response_format")
    if fmt and fmt.type == "json_schema":
        param = "response_format.json_schema.schema"
        return Constraint("json_schema", _parse_schema(fmt.json_schema.schema_, param), param)
    if (schema := request.extension("guided_json")) is not None:
        param = _extension_param(request, "guided_json")
        return Constraint("json_schema", _parse_schema(schema, param), param)
    if (choices := request.extension("guided_choice")) is not None:
        return Constraint("choice", choices, _extension_param(request, "guided_choice"))
    if (regex := request.extension("guided_regex")) is not None:
        return Constraint("regex", regex, _extension_param(request, "guided_regex"))
    return None


def _extension_param(request: SamplingRequest, name: str) -> str:
    """Where the request gave a NIM extension: inside nvext (which wins) or at the top level."""
    return f"nvext.{name}" if request.nvext and getattr(request.nvext, name) is not None else name


def _logit_bias(request: SamplingRequest, vocab_size: int) -> dict[int, float]:
    bias = {}
    for key, value in (request.logit_bias or {}).items():
        # ASCII digits only, and few of them: int() refuses other Unicode digits and very long numbers
        if not _TOKEN_ID.fullmatch(key) or int(key) >= vocab_size:
            raise InvalidRequestError(f"logit_bias key '{key}' is not a token id of this model (0 to "
                                      f"{vocab_size - 1}).", param="logit_bias")
        bias[int(key)] = value
    return bias


def _top_k(request: SamplingRequest, vocab_size: int) -> int:
    """0 (off) for -1, 0 and any k that keeps the whole vocabulary: the same distribution, and llama.cpp then
    skips sorting the vocabulary on every token. A vocab_size of 0 (the engine did not say) keeps k as given."""
    k = request.extension("top_k") or 0
    return 0 if k <= 0 or 0 < vocab_size <= k else k


def sampling_params(request: ChatCompletionRequest | CompletionRequest, max_tokens: int,
                    info: EngineInfo) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=1.0 if request.temperature is None else request.temperature,
        top_p=1.0 if request.top_p is None else request.top_p,
        top_k=_top_k(request, info.vocab_size),
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
