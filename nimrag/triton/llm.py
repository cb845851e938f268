"""The LLM models ``nimrag triton serve`` hosts: nimrag's llama.cpp engine behind TensorRT-LLM's tensor interfaces,
as its standard model repository (triton-inference-server/tensorrtllm_backend, ``inflight_batcher_llm``) names
them, so what talks to a TensorRT-LLM Triton talks to this one:

- ``tensorrt_llm``: token ids in, token ids out (what the LLM service's ``trtllm`` engine calls);
- ``ensemble``: text in, text out (``text_input``, ``max_tokens``, sampling inputs, ``stop_words``, ``stream``
  -> ``text_output``), for any other TensorRT-LLM client.

Both are decoupled (streamed responses, the last flagged final). Neither uses Triton's dynamic batcher, as
TensorRT-LLM's own models do not: Triton hands each request over as it comes (a decoupled model's ``execute``
returns at once), the async generators here run them side by side on one model instance, and llama.cpp decodes
them together in its parallel slots (continuous batching, as TensorRT-LLM's in-flight batcher). One instance,
also because PyTriton's further instances wait only a second for the first one's handshake, which a busy machine
misses, failing the load. The inputs TensorRT-LLM has and
llama.cpp cannot honour (beam search, bad words, length penalty, minimum length, LoRA...) are not declared, so
Triton refuses a request that sends one instead of ignoring it.

``end_id``: -1 generates to ``max_tokens`` (what the ``trtllm`` engine sends for ``ignore_eos``); any other value
stops at the model's own end-of-generation tokens, as llama.cpp knows them from the GGUF.

PyTriton does not pass a client's cancellation on to the model: a cancelled request is decoded to its end (its
slot is busy meanwhile), where TensorRT-LLM would free it at once.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

import numpy as np

from nimrag.triton.encoders import HostedModel

TOKEN_MODEL, TEXT_MODEL = "tensorrt_llm", "ensemble"
_SCALAR = (1,)
SAMPLING_INPUTS = (("temperature", np.float32, _SCALAR), ("repetition_penalty", np.float32, _SCALAR),
                   ("presence_penalty", np.float32, _SCALAR), ("frequency_penalty", np.float32, _SCALAR),
                   ("return_log_probs", np.bool_, _SCALAR), ("exclude_input_in_output", np.bool_, _SCALAR),
                   ("end_id", np.int32, _SCALAR))
TOKEN_INPUTS = (("input_ids", np.int32, (-1,)), ("input_lengths", np.int32, _SCALAR),
                ("request_output_len", np.int32, _SCALAR), ("streaming", np.bool_, _SCALAR),
                ("runtime_top_k", np.int32, _SCALAR), ("runtime_top_p", np.float32, _SCALAR),
                ("random_seed", np.uint64, _SCALAR), *SAMPLING_INPUTS)
TOKEN_OUTPUTS = (("output_ids", np.int32, (-1, -1)), ("sequence_length", np.int32, (-1,)),
                 ("cum_log_probs", np.float32, (-1,)), ("output_log_probs", np.float32, (-1, -1)))
TEXT_INPUTS = (("text_input", bytes, _SCALAR), ("max_tokens", np.int32, _SCALAR), ("stream", np.bool_, _SCALAR),
               ("stop_words", bytes, (-1,)), ("top_k", np.int32, _SCALAR), ("top_p", np.float32, _SCALAR),
               ("seed", np.uint64, _SCALAR), *SAMPLING_INPUTS)
TEXT_OUTPUTS = (("text_output", bytes, (-1,)), ("cum_log_probs", np.float32, (-1,)),
                ("output_log_probs", np.float32, (-1, -1)))
OPTIONAL = frozenset(name for name, _, _ in (*TOKEN_INPUTS, *TEXT_INPUTS)) - {
    "input_ids", "input_lengths", "request_output_len", "text_input", "max_tokens"}


def _scalar(request, name: str, default=None):
    value = request.data.get(name)
    return default if value is None else value.reshape(-1)[0].item()


def _sampling(request, max_tokens: int, top_k: str, top_p: str, seed: str):
    from nimrag.services.llm.engines.base import SamplingParams

    end_id = _scalar(request, "end_id", 0)
    return SamplingParams(
        max_tokens=max_tokens, temperature=_scalar(request, "temperature", 1.0), top_k=_scalar(request, top_k, 0),
        top_p=_scalar(request, top_p, 1.0), seed=_scalar(request, seed),
        repetition_penalty=_scalar(request, "repetition_penalty", 1.0),
        presence_penalty=_scalar(request, "presence_penalty", 0.0),
        frequency_penalty=_scalar(request, "frequency_penalty", 0.0),
        ignore_eos=end_id < 0, logprobs=0)  # logprobs 0: llama.cpp then names each sampled token's id


async def _pieces(engine, prompt: list[int], params) -> AsyncIterator[tuple[str, list[int], list[float]]]:
    """(text, token ids, their log-probabilities) as llama.cpp decodes them in a thread of this request's own;
    closing the iterator (the model's generator ended) stops the decoding at the next piece."""
    loop = asyncio.get_running_loop()
    pieces: asyncio.Queue = asyncio.Queue()
    closed = threading.Event()
    done = object()

    def emit(delta) -> bool:
        piece = (delta.text, [e.token_id for e in delta.logprobs], [e.logprob for e in delta.logprobs])
        loop.call_soon_threadsafe(pieces.put_nowait, piece)
        return closed.is_set()

    def run() -> None:
        try:
            engine.generate(prompt, params, emit)
            outcome = done
        except Exception as exc:  # noqa: BLE001 - handed to the model's generator, which Triton reports
            outcome = exc
        loop.call_soon_threadsafe(pieces.put_nowait, outcome)

    threading.Thread(target=run, name="triton-llm-decode", daemon=True).start()
    try:
        while (piece := await pieces.get()) is not done:
            if isinstance(piece, Exception):
                raise piece
            yield piece
    finally:
        closed.set()


def _token_response(tokens: list[int], logprobs: list[float], cumulative: float) -> dict:
    # [batch 1, beam 1, tokens]: TensorRT-LLM's shapes
    return {"output_ids": np.array([[tokens]], np.int32), "sequence_length": np.array([[len(tokens)]], np.int32),
            "cum_log_probs": np.array([[cumulative]], np.float32),
            "output_log_probs": np.array([[logprobs]], np.float32).reshape(1, 1, len(logprobs))}


def token_infer(engine):
    async def infer(requests):
        (request,) = requests  # no dynamic batcher: one request per call
        length = _scalar(request, "input_lengths")
        prompt = request["input_ids"][0][:length].tolist()
        params = _sampling(request, _scalar(request, "request_output_len"), "runtime_top_k", "runtime_top_p",
                           "random_seed")
        streaming = _scalar(request, "streaming", False)
        keep_prompt = not streaming and not _scalar(request, "exclude_input_in_output", False)
        tokens, logprobs = (list(prompt) if keep_prompt else []), []
        async for _, ids, values in _pieces(engine, prompt, params):
            if not ids:
                continue
            logprobs += values
            if streaming:
                yield [_token_response(ids, values, sum(logprobs))]
            else:
                tokens += ids
        if not streaming:
            yield [_token_response(tokens, logprobs, sum(logprobs))]

    return infer


def _text_response(text: str, logprobs: list[float], cumulative: float) -> dict:
    return {"text_output": np.array([[text.encode()]], dtype=np.object_),
            "cum_log_probs": np.array([[cumulative]], np.float32),
            "output_log_probs": np.array([[logprobs]], np.float32).reshape(1, 1, len(logprobs))}


def text_infer(engine):
    async def infer(requests):
        (request,) = requests
        text = request["text_input"].reshape(-1)[0].decode()
        params = _sampling(request, _scalar(request, "max_tokens"), "top_k", "top_p", "seed")
        stops = request.data.get("stop_words")
        params.stop = [s.decode() for s in stops.reshape(-1)] if stops is not None else []
        streaming = _scalar(request, "stream", False)
        answer = text if not streaming and not _scalar(request, "exclude_input_in_output", False) else ""
        logprobs: list[float] = []
        prompt = await asyncio.to_thread(engine.tokenize, text)  # an HTTP call to llama.cpp's own listener
        async for piece, _, values in _pieces(engine, prompt, params):
            logprobs += values
            if streaming and (piece or values):
                yield [_text_response(piece, values, sum(logprobs))]
            answer += piece
        if not streaming:
            yield [_text_response(answer, logprobs, sum(logprobs))]

    return infer


def llm_models(model: str | None, slots: int, context: int | None, threads: int) -> tuple[object, list[HostedModel]]:
    """The loaded llama.cpp engine (to close at the end) and the two models over it, one instance per slot."""
    from nimrag.services.llm.engines.llamacpp import LlamaCppEngine
    from nimrag.services.llm.model import load_model_info
    from nimrag.services.llm.settings import LLMSettings

    info = load_model_info(LLMSettings(model=model))
    if info.format != "gguf":
        from nimrag.services.common.errors import StartupError

        raise StartupError(f"nimrag triton serve runs the LLM on llama.cpp, which serves GGUF files; {info.path} "
                           "is a Hugging Face folder")
    engine = LlamaCppEngine(info, slots=slots, context_length=context, threads=threads, batch_tokens=512)
    engine.load()
    described = f"{info.name} on llama.cpp ({slots} slots)"
    streamed = {"optional": OPTIONAL, "decoupled": True, "dynamic_batching": False, "max_batch_size": slots}
    return engine, [HostedModel(TOKEN_MODEL, token_infer(engine), TOKEN_INPUTS, TOKEN_OUTPUTS,
                                f"{described}: token ids", **streamed),
                    HostedModel(TEXT_MODEL, text_infer(engine), TEXT_INPUTS, TEXT_OUTPUTS, f"{described}: text",
                                **streamed)]
