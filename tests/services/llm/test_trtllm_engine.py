"""The TensorRT-LLM engine against a real Triton Inference Server, over gRPC streaming.

TensorRT-LLM itself needs an NVIDIA GPU, so Triton (started by PyTriton on the CPU) serves a stand-in instead:
:mod:`tests.services.llm.triton_standin` has the ``tensorrt_llm`` model's tensor names, types, shapes and
decoupled streaming, and a deterministic toy "model" that echoes its prompt. What is tested is the engine's side
of the interface (requests, streaming, detokenizing, stops, cancellation, errors), not TensorRT-LLM.
The tokenizer is SmolLM2's (byte-level BPE with a chat template), converted from the bundled GGUF once and kept
in the test model cache.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from pathlib import Path

import pytest

from services.common.errors import StartupError
from services.llm.engines.base import Constraint, SamplingParams, UnsupportedByEngine
from services.llm.engines.text import IncrementalDetokenizer, StopMatcher
from services.llm.engines.trtllm import TritonTrtLlmEngine
from services.llm.model import LLMModelInfo
from services.llm.settings import LLMSettings
from tests.conftest import REPO, free_port
from tests.services.llm.triton_standin import LOGPROB, MODEL_NAME, echo

pytest.importorskip("pytriton")
pytest.importorskip("tritonclient.grpc")

TEXT = "Streams héllo wörld 🙂 𝄞 漢字, then stops."


def start_standin(tmp: Path, attempts: int = 3) -> tuple[subprocess.Popen, str]:
    """The stand-in in its own process group, once its model is ready. Retried: PyTriton's handshake with its
    backend stubs can connect before the other side listens (more often on a busy machine), failing the load."""
    import tritonclient.grpc as grpcclient

    # Triton's python backend stub links against libpython; PyTriton passes our environment on to it.
    env = {**os.environ, "LD_LIBRARY_PATH": ":".join(filter(None, [sysconfig.get_config_var("LIBDIR"),
                                                                   os.environ.get("LD_LIBRARY_PATH")]))}
    for attempt in range(attempts):
        grpc_port = free_port()
        args = ["--grpc-port", str(grpc_port), "--http-port", str(free_port()), "--metrics-port", str(free_port()),
                "--log", str(tmp / "requests.jsonl"), "--workspace", str(tmp / f"workspace{attempt}"),
                "--delay", "0.005"]
        with (tmp / "server.log").open("wb") as out:
            process = subprocess.Popen([sys.executable, "-m", "tests.services.llm.triton_standin", *args],
                                       cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                       start_new_session=True)
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{grpc_port}")
        deadline = time.monotonic() + 60
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if client.is_model_ready(MODEL_NAME):
                    client.close()
                    return process, f"127.0.0.1:{grpc_port}"
            time.sleep(0.2)
        client.close()
        stop_standin(process)
    raise RuntimeError(f"the Triton stand-in did not start:\n{(tmp / 'server.log').read_text()[-4000:]}")


def stop_standin(process: subprocess.Popen) -> None:
    process.terminate()  # the stand-in stops Triton and the stubs itself
    try:
        process.wait(timeout=20)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # whatever is left of the group
        process.wait()


@pytest.fixture(scope="module")
def triton(tmp_path_factory, tokenizer_dir):
    tmp = tmp_path_factory.mktemp("triton")
    process, url = start_standin(tmp)
    try:
        yield {"url": url, "log": tmp / "requests.jsonl"}
    finally:
        stop_standin(process)


@pytest.fixture(scope="module")
def engine(triton, tokenizer_dir):
    settings = LLMSettings(triton_url=triton["url"], triton_model=MODEL_NAME, tokenizer=str(tokenizer_dir))
    model = LLMModelInfo(path=tokenizer_dir, name="stand-in", format="hf", parameters=0, quantization="bf16")
    engine = TritonTrtLlmEngine(model, settings, slots=128, ready_timeout=5)
    engine.load()
    yield engine
    engine.close()


def run(engine, prompt, params, stop_after: int | None = None):
    deltas = []

    def emit(delta):
        deltas.append(delta)
        return stop_after is not None and len(deltas) >= stop_after

    return engine.generate(prompt, params, emit), deltas


def last_request(triton) -> dict:
    return json.loads(triton["log"].read_text().splitlines()[-1])


def test_load_reads_the_model_config(engine):
    assert engine.info.slots == 64  # the model's max_batch_size caps the configured 128
    assert engine.info.vocab_size == 49152 and engine.info.context_length == 4096
    assert engine.features == {"logprobs"}  # it declares return_log_probs and output_log_probs


def test_streams_the_answer_in_pieces_and_stops_at_the_end_id(engine, triton):
    prompt = engine.tokenize(TEXT)
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=200, temperature=0.0, seed=7, top_p=0.9))
    assert "".join(d.text for d in deltas) == TEXT  # the toy model's answer: its prompt, once
    assert len(deltas) > 5 and all("\ufffd" not in d.text for d in deltas)  # no half characters go out
    assert sum(d.tokens for d in deltas) == finished.completion_tokens == len(prompt)
    assert finished.reason == "stop"
    sent = last_request(triton)
    assert sent["input_ids"] == prompt and sent["request_output_len"] == 200 and sent["streaming"] is True
    assert sent["end_id"] == engine.tokenizer.eos_token_id and sent["random_seed"] == 7
    assert sent["runtime_top_k"] == 1 and sent["runtime_top_p"] == pytest.approx(0.9)  # greedy: top-k 1


def test_max_tokens_ends_with_length(engine, triton):
    prompt = engine.tokenize(TEXT)
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=40, ignore_eos=True, temperature=0.7))
    expected = engine.tokenizer.decode(echo(prompt, 40, None))
    assert "".join(d.text for d in deltas) == expected
    assert finished.reason == "length" and finished.completion_tokens == 40
    sent = last_request(triton)
    assert sent["end_id"] == -1 and sent["temperature"] == pytest.approx(0.7)  # ignore_eos: no end id


def test_stop_string_cuts_the_text(engine):
    prompt = engine.tokenize(TEXT)
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=200, stop=["wörld", "nowhere"]))
    assert "".join(d.text for d in deltas) == "Streams héllo "
    assert finished.reason == "stop" and finished.completion_tokens < len(prompt)


def test_logprobs_of_the_sampled_tokens(engine):
    prompt = engine.tokenize("one two three")
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=50, logprobs=0))
    entries = [e for d in deltas for e in d.logprobs]
    assert [e.logprob for e in entries] == [LOGPROB] * finished.completion_tokens
    assert "".join(e.token for e in entries) == "one two three"


def test_cancel_mid_stream_returns_promptly_and_closes_the_stream(engine, triton):
    prompt = engine.tokenize(TEXT)
    threads = threading.active_count()
    started = time.monotonic()
    # 1000 tokens at 5 ms each would take 5 s; the consumer goes away after 3 pieces.
    finished, deltas = run(engine, prompt, SamplingParams(max_tokens=1000, ignore_eos=True), stop_after=3)
    assert time.monotonic() - started < 1.0
    assert len(deltas) == 3 and finished.completion_tokens < 10
    time.sleep(0.2)
    assert threading.active_count() <= threads  # the cancelled stream's gRPC threads are gone
    # PyTriton does not tell its model about the cancel (a real TensorRT-LLM frees the sequence); the engine's
    # client and the server still take the next request right away.
    finished, _ = run(engine, engine.tokenize("next"), SamplingParams(max_tokens=20))
    assert finished.reason == "stop"


def test_parallel_requests(engine):
    from concurrent.futures import ThreadPoolExecutor

    texts = [f"request number {i}" for i in range(6)]
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(lambda t: run(engine, engine.tokenize(t), SamplingParams(max_tokens=50)), texts))
    assert ["".join(d.text for d in deltas) for _, deltas in results] == texts


def test_unsupported_features_are_400s(engine):
    with pytest.raises(UnsupportedByEngine) as err:
        engine.check(SamplingParams(max_tokens=5, constraint=Constraint("regex", "[a-z]+", "nvext.guided_regex")))
    assert err.value.status_code == 400 and err.value.param == "nvext.guided_regex"
    for params in (SamplingParams(max_tokens=5, logit_bias={1: 2.0}), SamplingParams(max_tokens=5, logprobs=3),
                   SamplingParams(max_tokens=5, min_p=0.1)):
        with pytest.raises(UnsupportedByEngine):
            engine.check(params)
    engine.check(SamplingParams(max_tokens=5, logprobs=0, stop=["x"]))


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


def test_unknown_model_is_a_clear_startup_error(engine, triton, tokenizer_dir):
    settings = LLMSettings(triton_url=triton["url"], triton_model="nope", tokenizer=str(tokenizer_dir))
    with pytest.raises(StartupError, match="serving 'nope': model 'nope' is not ready"):
        TritonTrtLlmEngine(engine.model, settings, slots=1, ready_timeout=0).load()


def test_an_ensemble_resolves_to_its_token_level_step(engine):
    configs = {  # the shape of TensorRT-LLM's standard model repository
        "ensemble": {"platform": "ensemble", "input": [{"name": "text_input"}],
                     "ensemble_scheduling": {"step": [{"model_name": "preprocessing"}, {"model_name": MODEL_NAME},
                                                      {"model_name": "postprocessing"}]}},
        "preprocessing": {"input": [{"name": "QUERY"}]}, MODEL_NAME: {"input": [{"name": "input_ids"}]},
    }

    class ConfigOnlyClient:
        def get_model_config(self, name, as_json):
            return {"config": configs[name]}

    settings = engine.settings.model_copy(update={"triton_model": "ensemble"})
    resolved = TritonTrtLlmEngine(engine.model, settings, slots=1)
    assert resolved._token_model_config(ConfigOnlyClient()) is configs[MODEL_NAME]
    assert resolved.model_name == MODEL_NAME


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
