"""From request to sampling parameters: budgets, constraints, limits."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.llm.engines.base import EngineInfo
from nimrag.services.llm.engines.llamacpp import LlamaCppEngine, choice_grammar
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.protocol import ChatCompletionRequest, CompletionRequest
from nimrag.services.llm.sampling import completion_budget, constraint_of, sampling_params

INFO = EngineInfo(context_length=100, vocab_size=1000, slots=1)
MSG = [{"role": "user", "content": "hi"}]


def chat(**kw) -> ChatCompletionRequest:
    return ChatCompletionRequest(messages=MSG, **kw)


def test_budget_defaults_to_the_rest_of_the_context_for_chat_and_16_for_completions():
    assert completion_budget(chat(), 30, 100) == 70
    assert completion_budget(CompletionRequest(prompt="x"), 30, 100) == 16
    assert completion_budget(CompletionRequest(prompt="x"), 95, 100) == 5
    assert completion_budget(chat(max_completion_tokens=10, max_tokens=50), 30, 100) == 10


def test_budget_errors_state_the_numbers():
    with pytest.raises(InvalidRequestError, match="maximum context length is 100 tokens.*prompt has 100 tokens"):
        completion_budget(chat(), 100, 100)
    with pytest.raises(InvalidRequestError, match="requested 110 tokens \\(30 in the prompt, 80 for"):
        completion_budget(chat(max_tokens=80), 30, 100)


def test_nvext_wins_over_top_level_and_defaults_are_openai():
    params = sampling_params(chat(top_k=5, nvext={"top_k": 7, "min_p": 0.1}), 10, INFO)
    assert (params.top_k, params.min_p, params.temperature, params.top_p) == (7, 0.1, 1.0, 1.0)
    assert sampling_params(chat(top_k=-1), 10, INFO).top_k == 0  # -1 means off, as in vLLM
    assert sampling_params(chat(seed=-1), 10, INFO).seed == 2**32 - 1


def test_top_k_that_keeps_the_whole_vocabulary_goes_to_llama_cpp_as_off():
    # top_k >= vocab keeps every token, as 0 (off) does; llama.cpp sorts the whole vocabulary for it each token
    engine = LlamaCppEngine(LLMModelInfo(Path("unused.gguf"), "m", "gguf", 0, "q4_1"), slots=1,
                            context_length=None, threads=1, batch_tokens=8)
    for asked, passed in ((999, 999), (1000, 0), (1001, 0), (2**31 - 1, 0), (1, 1), (0, 0), (-1, 0)):
        params = sampling_params(chat(nvext={"top_k": asked}), 10, INFO)
        assert (params.top_k, engine._request([1], params)["top_k"]) == (passed, passed), asked
    unknown_vocab = EngineInfo(context_length=100, vocab_size=0, slots=1)
    assert sampling_params(chat(top_k=5000), 10, unknown_vocab).top_k == 5000


def test_constraints():
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    assert constraint_of(chat(response_format={"type": "json_object"})).value == {"type": "object"}
    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": schema}}
    assert constraint_of(chat(response_format=fmt)).value == schema
    assert constraint_of(chat(nvext={"guided_json": '{"type": "string"}'})).value == {"type": "string"}
    assert constraint_of(chat(guided_choice=["a", "b"])).kind == "choice"
    assert constraint_of(chat(guided_regex="[0-9]+")).kind == "regex"
    assert constraint_of(chat()) is None
    with pytest.raises(InvalidRequestError, match="not a valid JSON schema"):
        constraint_of(chat(guided_json={"type": 5}))


def test_logit_bias_keys_must_be_token_ids():
    assert sampling_params(chat(logit_bias={"5": -100}), 10, INFO).logit_bias == {5: -100}
    for key in ("abc", "1000", "-1"):
        with pytest.raises(InvalidRequestError, match="logit_bias"):
            sampling_params(chat(logit_bias={key: 1}), 10, INFO)


def test_choice_grammar_escapes_quotes_and_control_characters():
    assert choice_grammar(['say "hi"', "a\nb", "a\x00\bb"]) == \
        '%llguidance {}\nstart: "say \\"hi\\"" | "a\\nb" | "a\\u0000\\bb"'
