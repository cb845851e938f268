"""The transformers engine on real models: a 1M-parameter random GGUF for speed, SmolLM2 for a real chat model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.llm.engines.base import Constraint, Finished, SamplingParams, TextDelta
from nimrag.services.llm.engines.transformers import TransformersEngine
from nimrag.services.llm.model import LLMModelInfo, default_model_path
from nimrag.services.llm.profiles import LLM_PROFILES
from tests.services.llm.conftest import tiny_gguf

CPU_PROFILE = "transformers-fp32-tp1-latency"


def make_engine(path: Path, fmt: str = "gguf", profile: str = CPU_PROFILE, **kwargs) -> TransformersEngine:
    chosen = next(p for p in LLM_PROFILES if p.id == profile)
    model = LLMModelInfo(path=path, name=path.stem, format=fmt, parameters=0, quantization="")
    return TransformersEngine(model, chosen, **{"slots": 4, "context_length": None, "threads": 2, **kwargs})


@pytest.fixture(scope="module")
def tiny():
    engine = make_engine(tiny_gguf())
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def smol():
    engine = make_engine(default_model_path())
    engine.load()
    yield engine
    engine.close()


def run(engine, prompt: list[int], stop_after: int | None = None, **params) -> tuple[str, Finished, list[TextDelta]]:
    """Generate; with ``stop_after``, cancel (emit returns True) once that many pieces came."""
    deltas: list[TextDelta] = []

    def emit(delta: TextDelta) -> bool:
        deltas.append(delta)
        return stop_after is not None and len(deltas) >= stop_after

    finished = engine.generate(prompt, SamplingParams(**params), emit)
    return "".join(d.text for d in deltas), finished, deltas


def reference(engine, prompt: list[int], max_tokens: int, **kwargs) -> str:
    """What transformers' own generate() answers, greedy."""
    ids = torch.tensor([prompt])
    out = engine.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                do_sample=False, **kwargs)
    return engine.tokenizer.decode(out[0, len(prompt):], skip_special_tokens=True)


def test_load_reports_context_vocab_and_slots(tiny, smol):
    assert (tiny.info.context_length, tiny.info.vocab_size, tiny.info.slots) == (2048, 32000, 4)  # model max < cap
    assert (smol.info.context_length, smol.info.vocab_size) == (4096, 49152)  # 8192 trained, capped


def test_chat_template_and_tokenize(tiny, smol):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    text = smol.apply_chat_template(messages)
    assert "What is the capital of France?" in text and text.endswith("<|im_start|>assistant\n")
    assert smol.tokenizer.decode(smol.tokenize(text)) == text
    fallback = tiny.apply_chat_template(messages)  # no template in the file: ChatML
    assert fallback.endswith("<|im_start|>assistant\n") and "What is the capital of France?" in fallback
    bos = tiny.tokenizer.bos_token_id
    assert tiny.tokenize("Hello")[0] == bos
    with_bos = tiny.tokenize("<s>Hello")  # a BOS the text already has is not doubled
    assert with_bos[0] == bos and with_bos.count(bos) == 1


def test_real_model_answers(smol):
    prompt = smol.tokenize(smol.apply_chat_template([{"role": "user", "content": "What is the capital of France?"}]))
    text = run(smol, prompt, max_tokens=12, temperature=0)[0]
    assert "Paris" in text and text == reference(smol, prompt, 12)


def test_greedy_is_deterministic_and_matches_transformers_generate(tiny):
    prompt = tiny.tokenize("Hello, my name is")
    text, finished, deltas = run(tiny, prompt, max_tokens=24, temperature=0)
    assert text == reference(tiny, prompt, 24)
    assert run(tiny, prompt, max_tokens=24, temperature=0)[0] == text
    assert finished.completion_tokens == sum(d.tokens for d in deltas) == 24


def test_repetition_penalty_matches_transformers_generate(tiny):
    prompt = tiny.tokenize("the the the the")
    text = run(tiny, prompt, max_tokens=16, temperature=0, repetition_penalty=1.3)[0]
    assert text == reference(tiny, prompt, 16, repetition_penalty=1.3)


def test_seeded_sampling_is_reproducible(tiny):
    prompt = tiny.tokenize("Once upon a time")
    first = run(tiny, prompt, max_tokens=16, temperature=1.0, seed=7)[0]
    assert run(tiny, prompt, max_tokens=16, temperature=1.0, seed=7)[0] == first
    assert run(tiny, prompt, max_tokens=16, temperature=1.0, seed=8)[0] != first


@pytest.mark.parametrize("narrowing", [{"top_k": 1}, {"top_p": 1e-9}, {"min_p": 1.0}])
def test_filters_that_keep_one_token_sample_the_greedy_answer(tiny, narrowing):
    prompt = tiny.tokenize("Once upon a time")
    greedy = run(tiny, prompt, max_tokens=12, temperature=0)[0]
    assert run(tiny, prompt, max_tokens=12, temperature=1.0, seed=1, **narrowing)[0] == greedy


def test_stop_string_ends_the_output_without_it(tiny):
    prompt = tiny.tokenize("Hello, my name is")
    full = run(tiny, prompt, max_tokens=24, temperature=0)[0]
    stop = full[10:15]
    text, finished, _ = run(tiny, prompt, max_tokens=24, temperature=0, stop=["never-there", stop])
    assert text == full[:full.find(stop)] and finished.reason == "stop"
    assert run(tiny, prompt, max_tokens=24, temperature=0, stop=[full[-3:] + "\x00"])[0] == full  # held, then out


def test_max_tokens_ends_with_length(tiny):
    _, finished, deltas = run(tiny, tiny.tokenize("Hello"), max_tokens=5, temperature=0.8, ignore_eos=True)
    assert (finished.reason, finished.completion_tokens, sum(d.tokens for d in deltas)) == ("length", 5, 5)


def test_cancel_returns_promptly(tiny):
    prompt = tiny.tokenize("Hello")
    started = time.monotonic()
    _, finished, deltas = run(tiny, prompt, stop_after=2, max_tokens=1500, temperature=0, ignore_eos=True)
    assert time.monotonic() - started < 10 and len(deltas) == 2 and finished.completion_tokens <= 3
    assert run(tiny, prompt, max_tokens=8, temperature=0)[0] == reference(tiny, prompt, 8)  # the engine goes on


def test_logprobs_of_the_raw_distribution(tiny):
    prompt = tiny.tokenize("Hello")
    _, finished, deltas = run(tiny, prompt, max_tokens=6, temperature=0, logprobs=3, ignore_eos=True)
    entries = [e for d in deltas for e in d.logprobs]
    assert len(entries) == finished.completion_tokens == 6
    for entry in entries:  # greedy: the chosen token is the most likely one
        assert len(entry.top) == 3 and entry.top[0].token == entry.token
        assert entry.logprob == pytest.approx(entry.top[0].logprob) and entry.logprob <= 0
        assert [t.logprob for t in entry.top] == sorted((t.logprob for t in entry.top), reverse=True)
    _, _, deltas = run(tiny, prompt, max_tokens=6, temperature=1.0, top_k=3, seed=3, logprobs=5, ignore_eos=True)
    assert all(e.token in [t.token for t in e.top] for d in deltas for e in d.logprobs)


@pytest.mark.parametrize(("penalty", "expected"), [
    ({}, 6),  # the bias alone: always the favoured token
    ({"frequency_penalty": 40.0}, 3),  # OpenAI: 100 - 40 * count stays ahead of the rest for three tokens
    ({"presence_penalty": 40.0}, 6),  # 100 - 40 once it appeared: still ahead
    ({"presence_penalty": 150.0}, 1),
])
def test_logit_bias_with_presence_and_frequency_penalties(tiny, penalty, expected):
    favoured = tiny.tokenize("Paris")[-1]
    _, _, deltas = run(tiny, tiny.tokenize("Hello"), max_tokens=6, temperature=0, logprobs=0, ignore_eos=True,
                       logit_bias={favoured: 100.0}, **penalty)
    tokens = [e.token for d in deltas for e in d.logprobs]
    assert len(tokens) == 6 and tokens[:expected] == [tiny.piece(favoured)[0]] * expected
    assert tokens.count(tiny.piece(favoured)[0]) == expected


def test_guided_choice(tiny, smol):
    choices = ["alpha", "beta gamma", "be"]
    for seed in range(3):  # a random model, forced into the choices
        text, finished, _ = run(tiny, tiny.tokenize("Pick:"), max_tokens=20, temperature=1.0, seed=seed,
                                constraint=Constraint("choice", choices))
        assert text in choices and finished.reason == "stop"
    question = [{"role": "user", "content": "Is Paris in France? Answer yes or no."}]
    text, finished, _ = run(smol, smol.tokenize(smol.apply_chat_template(question)), max_tokens=10, temperature=0,
                            constraint=Constraint("choice", ["yes", "no"]))
    assert text in ("yes", "no") and finished.reason == "stop"


def test_concurrent_requests_batch_and_match_their_solo_answers(tiny, monkeypatch):
    prompts = [tiny.tokenize("Hello, my name is"), tiny.tokenize("A much longer prompt, so that rows get padded")]
    alone = [run(tiny, p, max_tokens=200, temperature=0, ignore_eos=True)[0] for p in prompts]
    rows: list[int] = []
    forward = tiny.forward
    monkeypatch.setattr(tiny, "forward", lambda ids, cache, **kw: rows.append(len(ids)) or forward(ids, cache, **kw))
    together: dict[int, str] = {}
    start = threading.Barrier(3)

    def ask(i: int) -> None:
        start.wait()
        if i < 2:
            together[i] = run(tiny, prompts[i], max_tokens=200, temperature=0, ignore_eos=True)[0]
        else:  # a third one leaves midway
            run(tiny, prompts[0], stop_after=3, max_tokens=500, temperature=0, ignore_eos=True)

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert [together.get(0), together.get(1)] == alone
    assert max(rows) >= 2  # they were decoded together


def test_bad_prompt_fails_alone(tiny):
    with pytest.raises(InvalidRequestError):
        tiny.generate([1, 10**6], SamplingParams(max_tokens=4), lambda _: False)
    prompt = tiny.tokenize("Hello")
    assert run(tiny, prompt, max_tokens=4, temperature=0)[0] == reference(tiny, prompt, 4)


def test_hugging_face_folder_and_a_configured_context(tiny, tmp_path):
    tiny.model.save_pretrained(tmp_path)
    tiny.tokenizer.save_pretrained(tmp_path)
    engine = make_engine(tmp_path, fmt="hf", context_length=16)
    try:
        assert engine.load().context_length == 16
        prompt = tiny.tokenize("Hello, my name is")
        assert engine.tokenize("Hello, my name is") == prompt and len(prompt) == 6
        greedy = run(tiny, prompt, max_tokens=10, temperature=0, ignore_eos=True)[0]
        text, finished, _ = run(engine, prompt, max_tokens=100, temperature=0, ignore_eos=True)
        assert (text, finished.reason, finished.completion_tokens) == (greedy, "length", 10)  # the context is full
    finally:
        engine.close()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs an NVIDIA GPU with CUDA")
def test_cuda_bf16_greedy_and_batching():
    engine = make_engine(tiny_gguf(), profile="transformers-bf16-tp1-throughput")
    try:
        engine.load()
        assert next(engine.model.parameters()).device.type == "cuda"
        prompt = engine.tokenize("Hello, my name is")
        text, finished, _ = run(engine, prompt, max_tokens=16, temperature=0, ignore_eos=True)
        assert finished.completion_tokens == 16 and text == run(engine, prompt, max_tokens=16, temperature=0,
                                                                ignore_eos=True)[0]
        results: list[Finished] = []
        threads = [threading.Thread(target=lambda: results.append(
            run(engine, prompt, max_tokens=16, temperature=0.7, seed=1, ignore_eos=True)[1])) for _ in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
        assert [r.completion_tokens for r in results] == [16] * 4
    finally:
        engine.close()
