"""The TensorRT-LLM engine against a real Triton Inference Server, over gRPC streaming.

TensorRT-LLM itself needs an NVIDIA GPU, so Triton here is ``nimrag triton serve`` (tests/services/conftest.py):
the bundled SmolLM2 GGUF on llama.cpp behind the ``tensorrt_llm`` model's tensor names, types, shapes and
decoupled streaming. What the engine sends is checked by what comes back, against the same llama.cpp engine
in-process: greedy answers token for token, seeded samples, ``max_tokens`` / end id, stops, logprobs. The
tokenizer is SmolLM2's, converted from the GGUF once and kept in the test model cache. The ``ensemble`` (text)
model is checked the same way.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import openai
import pytest

from nimrag.services.common.errors import StartupError
from nimrag.services.common.triton import infer_input
from nimrag.services.llm.engines.base import Constraint, SamplingParams, UnsupportedByEngine
from nimrag.services.llm.engines.llamacpp import LlamaCppEngine
from nimrag.services.llm.engines.text import IncrementalDetokenizer, StopMatcher
from nimrag.services.llm.engines.trtllm import TritonTrtLlmEngine
from nimrag.services.llm.model import DEFAULT_MODEL_NAME, LLMModelInfo, load_model_info
from nimrag.services.llm.settings import LLMSettings
from tests.conftest import free_port
from tests.services.conftest import LLM_SLOTS

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def engine(triton_host, tokenizer_dir):
    settings = LLMSettings(triton_url=triton_host.url, triton_model="tensorrt_llm", tokenizer=str(tokenizer_dir))
    engine = TritonTrtLlmEngine(load_model_info(settings), settings, slots=128, ready_timeout=30)
    engine.load()
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def reference():
    """The engine Triton hosts, in-process: what every answer through Triton must equal."""
    engine = LlamaCppEngine(load_model_info(LLMSettings()), slots=2, context_length=None, threads=2,
                            batch_tokens=512)
    engine.load()
    yield engine
    engine.close()


def run(engine, prompt, params, stop_after: int | None = None):
    deltas = []

    def emit(delta):
        deltas.append(delta)
        return stop_after is not None and len(deltas) >= stop_after

    return engine.generate(prompt, params, emit), deltas


def text_of(deltas) -> str:
    return "".join(d.text for d in deltas)


def chat_prompt(engine, content: str = QUESTION[0]["content"]) -> list[int]:
    return engine.tokenize(engine.apply_chat_template([{"role": "user", "content": content}]))


def test_load_reads_the_model_config(engine):
    assert engine.info.slots == LLM_SLOTS  # the model's max_batch_size caps the configured 128
    assert engine.info.vocab_size == 49152 and engine.info.context_length == 4096
    assert engine.features == {"logprobs"}  # it declares return_log_probs and output_log_probs


def test_greedy_answer_streams_in_pieces_and_equals_llamacpp(engine, reference):
    prompt = chat_prompt(engine)
    assert prompt == chat_prompt(reference)  # the converted tokenizer and template are llama.cpp's own
    params = SamplingParams(max_tokens=40, temperature=0.0)
    finished, deltas = run(engine, prompt, params)
    expected, want = run(reference, prompt, params)
    assert text_of(deltas) == text_of(want) and finished == expected  # greedy is top-k 1 over the wire
    assert len(deltas) > 5 and all("\ufffd" not in d.text for d in deltas)  # no half characters go out
    assert sum(d.tokens for d in deltas) == finished.completion_tokens


def test_max_tokens_ends_with_length_and_the_end_id_with_stop(engine, reference):
    prompt = chat_prompt(engine)
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True))
    assert finished.reason == "length" and finished.completion_tokens == 20  # ignore_eos: end id -1
    short = chat_prompt(engine, "Say hi.")
    params = SamplingParams(max_tokens=200, temperature=0.0)
    finished, deltas = run(engine, short, params)
    expected, want = run(reference, short, params)
    assert finished.reason == "stop" and finished.completion_tokens < 200 and text_of(deltas) == text_of(want)


def test_seeded_sampling_equals_llamacpp_with_the_seed(engine, reference):
    prompt = chat_prompt(engine)
    params = SamplingParams(max_tokens=24, temperature=0.9, top_p=0.95, seed=7, ignore_eos=True)
    _, first = run(engine, prompt, params)
    _, again = run(engine, prompt, params)
    _, local = run(reference, prompt, params)
    assert text_of(first) == text_of(again) == text_of(local)  # seed, temperature and top-p all reached it
    _, other = run(engine, prompt, dataclasses.replace(params, seed=8))
    assert text_of(other) != text_of(first)


def test_stop_string_cuts_the_text(engine, reference):
    prompt = chat_prompt(engine)
    _, full = run(reference, prompt, SamplingParams(max_tokens=40, temperature=0.0))
    text = text_of(full)
    stop = text[len(text) // 2: len(text) // 2 + 4]
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=40, temperature=0.0, stop=[stop, "nowhere"]))
    assert text_of(deltas) == text[: text.index(stop)] and finished.reason == "stop"


def test_logprobs_of_the_sampled_tokens(engine, reference):
    prompt = chat_prompt(engine)
    params = SamplingParams(max_tokens=12, temperature=0.0, logprobs=0, ignore_eos=True)
    finished, deltas = run(engine, prompt, params)
    _, want = run(reference, prompt, params)
    got = [e for d in deltas for e in d.logprobs]
    expected = [e for d in want for e in d.logprobs]
    assert len(got) == finished.completion_tokens == 12
    assert [e.token for e in got] == [e.token for e in expected]
    np.testing.assert_allclose([e.logprob for e in got], [e.logprob for e in expected], atol=1e-4)


def test_cancel_mid_stream_closes_the_stream_and_the_next_request_runs(engine):
    prompt = chat_prompt(engine)
    threads = threading.active_count()
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=200, ignore_eos=True), stop_after=3)
    assert len(deltas) == 3 and finished.completion_tokens < 10
    deadline = time.monotonic() + 5
    while threading.active_count() > threads and time.monotonic() < deadline:
        time.sleep(0.05)
    assert threading.active_count() <= threads  # the cancelled stream's gRPC threads are gone
    # PyTriton does not tell the model about the cancel (a real TensorRT-LLM frees the sequence), so the hosted
    # llama.cpp decodes on in one of its slots; the engine's client and the server take the next request anyway.
    finished, _ = run(engine, engine.tokenize("next"), SamplingParams(max_tokens=5))
    assert finished.completion_tokens > 0


def test_a_stream_silent_past_the_timeout_is_a_503_and_is_cancelled(engine, triton_host, tokenizer_dir):
    from nimrag.services.common.errors import ServiceNotReadyError

    settings = engine.settings.model_copy(update={"triton_timeout_s": 0.001})  # no first token comes that fast
    impatient = TritonTrtLlmEngine(engine.model, settings, slots=1, ready_timeout=30)
    impatient.load()
    try:
        with pytest.raises(ServiceNotReadyError) as late:
            run(impatient, chat_prompt(engine, "Tell me a long story. " * 20), SamplingParams(max_tokens=50))
        assert late.value.code == "triton_timeout" and late.value.status_code == 503
    finally:
        impatient.close()
    finished, _ = run(engine, engine.tokenize("still there"), SamplingParams(max_tokens=3))
    assert finished.completion_tokens > 0


def test_parallel_requests_each_get_their_own_answer(engine, reference):
    prompts = [chat_prompt(engine, f"Count to {i}.") for i in range(1, LLM_SLOTS + 3)]
    params = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True)
    with ThreadPoolExecutor(len(prompts)) as pool:
        results = list(pool.map(lambda p: run(engine, p, params), prompts))
    assert [text_of(d) for _, d in results] == [text_of(run(reference, p, params)[1]) for p in prompts]


def test_unsupported_features_are_400s(engine):
    with pytest.raises(UnsupportedByEngine) as err:
        engine.check(SamplingParams(max_tokens=5, constraint=Constraint("regex", "[a-z]+", "nvext.guided_regex")))
    assert err.value.status_code == 400 and err.value.param == "nvext.guided_regex"
    for params in (SamplingParams(max_tokens=5, logit_bias={1: 2.0}), SamplingParams(max_tokens=5, logprobs=3),
                   SamplingParams(max_tokens=5, min_p=0.1)):
        with pytest.raises(UnsupportedByEngine):
            engine.check(params)
    engine.check(SamplingParams(max_tokens=5, logprobs=0, stop=["x"]))


@pytest.mark.parametrize("ask,param", [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"logprobs": True, "top_logprobs": 2}, "top_logprobs"),
    ({"logit_bias": {"42": 5}}, "logit_bias"),
    ({"extra_body": {"nvext": {"guided_choice": ["a", "b"]}}}, "nvext.guided_choice"),
], ids=["json_object", "top_logprobs", "logit_bias", "guided_choice"])
def test_over_http_what_the_engine_cannot_do_is_a_400_naming_it(triton_llm_service, ask, param):
    client = openai.OpenAI(base_url=triton_llm_service.base_url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, max_tokens=4,
                                       messages=[{"role": "user", "content": "Hi"}], **ask)
    assert err.value.body["code"] == "unsupported_parameter" and err.value.body["param"] == param


def test_chat_template_and_tokenize(engine):
    prompt = engine.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert prompt.endswith("<|im_start|>assistant\n")
    assert engine.tokenize(prompt)[-4:] == engine.tokenizer.encode("<|im_start|>assistant\n")


def test_unreachable_triton_is_a_clear_startup_error(tokenizer_dir):
    port = free_port()  # nothing listens there
    settings = LLMSettings(triton_url=f"127.0.0.1:{port}", triton_model="ensemble", tokenizer=str(tokenizer_dir))
    model = LLMModelInfo(path=tokenizer_dir, name="x", format="hf", parameters=0, quantization="bf16")
    with pytest.raises(StartupError, match=rf"Triton at 127\.0\.0\.1:{port} serving 'ensemble': not reachable"):
        TritonTrtLlmEngine(model, settings, slots=1, ready_timeout=0).load()


def test_unknown_model_is_a_clear_startup_error(engine, triton_host, tokenizer_dir):
    settings = LLMSettings(triton_url=triton_host.url, triton_model="nope", tokenizer=str(tokenizer_dir))
    with pytest.raises(StartupError, match="serving 'nope': model 'nope' is not ready"):
        TritonTrtLlmEngine(engine.model, settings, slots=1, ready_timeout=0).load()


def test_a_model_without_token_ids_is_a_clear_startup_error(engine, triton_host, tokenizer_dir):
    # nimrag's text-level `ensemble` is a Python model, not a Triton ensemble with a token-level step to call
    settings = LLMSettings(triton_url=triton_host.url, triton_model="ensemble", tokenizer=str(tokenizer_dir))
    with pytest.raises(StartupError, match="lacks input_ids, input_lengths, request_output_len, output_ids"):
        TritonTrtLlmEngine(engine.model, settings, slots=1, ready_timeout=0).load()


def test_an_ensemble_resolves_to_its_token_level_step(engine):
    configs = {  # the shape of TensorRT-LLM's standard model repository
        "ensemble": {"platform": "ensemble", "input": [{"name": "text_input"}],
                     "ensemble_scheduling": {"step": [{"model_name": "preprocessing"},
                                                      {"model_name": "tensorrt_llm"},
                                                      {"model_name": "postprocessing"}]}},
        "preprocessing": {"input": [{"name": "QUERY"}]}, "tensorrt_llm": {"input": [{"name": "input_ids"}]},
    }

    class ConfigOnly:
        def config(self, name):
            return configs[name]

    settings = engine.settings.model_copy(update={"triton_model": "ensemble"})
    resolved = TritonTrtLlmEngine(engine.model, settings, slots=1)
    assert resolved._token_model_config(ConfigOnly()) is configs["tensorrt_llm"]
    assert resolved.model_name == "tensorrt_llm"


def _ensemble(url: str, text: str, stream: bool, **extra) -> tuple[list[str], str | None]:
    """The text pieces of one ``ensemble`` request, and the error Triton answered with (if any)."""
    import tritonclient.grpc as grpcclient

    values = {"text_input": np.array([[text.encode()]], dtype=np.object_), "max_tokens": np.array([[16]], np.int32),
              "stream": np.array([[stream]]), "top_k": np.array([[1]], np.int32), **extra}
    answers: queue.SimpleQueue = queue.SimpleQueue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: answers.put((result, error)))
    client.async_stream_infer("ensemble", [infer_input(n, v) for n, v in values.items()],
                              enable_empty_final_response=True)
    pieces, problem = [], None
    while True:
        result, error = answers.get(timeout=60)
        if error is not None:
            problem = error.message()
            break
        if (out := result.as_numpy("text_output")) is not None:
            pieces.append(out.reshape(-1)[0].decode())
        final = result.get_response().parameters.get("triton_final_response")
        if final and final.bool_param:
            break
    client.stop_stream()
    client.close()
    return pieces, problem


def test_ensemble_speaks_text_as_tensorrt_llm_does(triton_host, reference):
    prompt = "The capital of France is"
    _, want = run(reference, reference.tokenize(prompt), SamplingParams(max_tokens=16, temperature=0.0))
    pieces, problem = _ensemble(triton_host.url, prompt, stream=True)
    assert problem is None and len(pieces) > 3 and "".join(pieces) == text_of(want)
    whole, _ = _ensemble(triton_host.url, prompt, stream=False)  # not streamed: the prompt, then the answer
    assert whole == [prompt + text_of(want)]
    cut = text_of(want)[4:9]
    stopped, _ = _ensemble(triton_host.url, prompt, stream=True, stop_words=np.array([[cut.encode()]], np.object_))
    assert "".join(stopped) == text_of(want)[: text_of(want).index(cut)]
    # what llama.cpp cannot do is not declared, so Triton refuses it rather than ignoring it
    _, refused = _ensemble(triton_host.url, prompt, stream=True, beam_width=np.array([[2]], np.int32))
    assert refused and "beam_width" in refused


def test_detokenizer_holds_back_partial_characters(engine):
    ids = engine.tokenizer.encode("𝄞 ok")  # the clef is three byte-level tokens
    detok = IncrementalDetokenizer(engine.tokenizer, [])
    assert [detok.add([i]) for i in ids] == ["", "", "𝄞", " ok"]
    assert detok.flush() == ""


def test_stop_matcher_holds_back_a_possible_stop():
    stops = StopMatcher(["</end>"])
    assert stops.feed("text </") == ("text ", False)
    assert stops.feed("e") == ("", False)
    assert stops.feed("x") == ("</ex", False)  # not a stop after all: released
    assert stops.feed("ab</end>cd") == ("ab", True)


def test_the_hosted_model_declares_tensorrt_llms_tensors(triton_host):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(triton_host.url)
    config = client.get_model_config("tensorrt_llm", as_json=True)["config"]
    client.close()
    inputs = {i["name"]: i["data_type"] for i in config["input"]}
    assert inputs["input_ids"] == "TYPE_INT32" and inputs["request_output_len"] == "TYPE_INT32"
    assert config["model_transaction_policy"]["decoupled"] is True
    assert {o["name"] for o in config["output"]} >= {"output_ids", "sequence_length", "output_log_probs"}
