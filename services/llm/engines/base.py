"""The one small interface every LLM engine implements; the serving layer speaks only this.

An engine turns token ids into text, one decoded piece at a time. Everything OpenAI-shaped (chat, completions,
SSE chunks, usage) lives in the serving layer, so every engine answers in exactly the same shape.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

from nimrag.services.common.errors import InvalidRequestError

FinishReason = Literal["stop", "length"]

# Without a configured limit, serve at most this much context per sequence (KV memory grows with it); also the
# model's training context where the model does not say.
DEFAULT_CONTEXT_CAP = 4096


def context_length(requested: int | None, trained: int | None) -> int:
    """Tokens per sequence: the configured limit (``requested``), else the model's training context capped at
    :data:`DEFAULT_CONTEXT_CAP`; never more than the model was trained for (``None``: unknown)."""
    trained = trained or DEFAULT_CONTEXT_CAP
    return min(requested or min(trained, DEFAULT_CONTEXT_CAP), trained)


@dataclass(frozen=True)
class Constraint:
    """Output constrained by a grammar the engine enforces while sampling (not merely asked for in the prompt)."""

    kind: Literal["json_schema", "choice", "regex"]
    value: dict | list[str] | str  # a JSON schema, the allowed strings, or a regular expression
    param: str = "response_format"  # the request field it came from, named by errors


@dataclass
class SamplingParams:
    """What a request asks of the sampler; defaults are OpenAI's (no top-k, no min-p, no penalties)."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0: off
    min_p: float = 0.0
    seed: int | None = None  # None: random
    stop: list[str] = field(default_factory=list)
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    logprobs: int | None = None  # None: no logprobs; N: the sampled token's plus the N most likely
    ignore_eos: bool = False
    constraint: Constraint | None = None


@dataclass(frozen=True)
class TopLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None


@dataclass(frozen=True)
class TokenLogprob:
    token: str
    logprob: float
    bytes: list[int] | None = None
    top: tuple[TopLogprob, ...] = ()
    token_id: int | None = None  # where the engine says (llama.cpp): what ``nimrag triton serve`` streams


@dataclass(frozen=True)
class TextDelta:
    """Newly decoded text (possibly several tokens, or none while a UTF-8 character is incomplete)."""

    text: str
    tokens: int  # how many generated tokens this piece covers
    logprobs: tuple[TokenLogprob, ...] = ()


@dataclass(frozen=True)
class Finished:
    reason: FinishReason
    completion_tokens: int
    cached_prompt_tokens: int = 0


# The engine calls this for each piece; a True return asks it to stop (the client went away).
Emit = Callable[[TextDelta], bool]


@dataclass(frozen=True)
class EngineInfo:
    context_length: int  # tokens per sequence: prompt + completion
    vocab_size: int
    slots: int  # sequences the engine decodes together
    quantization: str = ""  # e.g. "Q4_1" for a GGUF file


class UnsupportedByEngine(InvalidRequestError):
    """The request uses a feature this engine does not have (400)."""

    def __init__(self, feature: str, engine: str, param: str | None = None, hint: str = ""):
        super().__init__(f"{feature} is not supported by the '{engine}' engine.{' ' + hint if hint else ''}",
                         param=param, code="unsupported_parameter")


class LLMEngine(ABC):
    """Blocking engine calls; the serving layer runs every one of them in a worker thread."""

    name: str = "engine"
    upstream = None  # the server it forwards to (nimrag.services.common.triton.TritonModel), whose readiness is ours
    # What this engine can enforce: "json_schema", "choice", "regex", "logprobs", "logit_bias".
    features: frozenset[str] = frozenset()

    @abstractmethod
    def load(self) -> EngineInfo:
        """Load the weights and make the engine ready to generate."""

    @abstractmethod
    def apply_chat_template(self, messages: list[dict]) -> str:
        """The model's own chat template applied to OpenAI-style messages, ending with the assistant's turn."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of a prompt, special tokens parsed and BOS added as the model expects."""

    def check(self, params: SamplingParams) -> None:
        """Raise :class:`UnsupportedByEngine` for what this engine cannot honour (before anything streams)."""
        if params.constraint and params.constraint.kind not in self.features:
            raise UnsupportedByEngine(f"Constrained output ({params.constraint.kind})", self.name,
                                      params.constraint.param)
        if params.logprobs is not None and "logprobs" not in self.features:
            raise UnsupportedByEngine("logprobs", self.name, "logprobs")
        if params.logit_bias and "logit_bias" not in self.features:
            raise UnsupportedByEngine("logit_bias", self.name, "logit_bias")

    @abstractmethod
    def generate(self, prompt: list[int], params: SamplingParams, emit: Emit) -> Finished:
        """Decode until a stop condition, calling ``emit`` for each new piece of text; blocks until done.
        Must honour a True from ``emit`` promptly and free the sequence's resources."""

    def close(self) -> None:
        """Free the engine's resources."""
