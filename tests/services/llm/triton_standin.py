"""A stand-in for TensorRT-LLM's ``tensorrt_llm`` Triton model, served by a real Triton server through PyTriton.

TensorRT-LLM needs an NVIDIA GPU, so the engine's tests talk to this fake instead: the same model name, tensor
names, dtypes, shapes (batch dimension first) and decoupled streaming as ``all_models/inflight_batcher_llm/
tensorrt_llm/config.pbtxt`` of triton-inference-server/tensorrtllm_backend, behind a deterministic toy generator:
the "model" repeats its prompt, one token per response, and stops after one full echo when an ``end_id`` is
given (like TensorRT-LLM's executor, the end id itself is not returned). Sampling inputs are accepted and
ignored. Each request's scalar inputs are appended as a JSON line to ``--log`` so the tests can check what the
engine sent.

Run as its own process (``python -m tests.services.llm.triton_standin --grpc-port N ...``, see ``--help``) with
Python's LIBDIR on ``LD_LIBRARY_PATH``: the Triton python backend stub links against libpython. SIGTERM stops it
cleanly (Triton, its stubs, their shared memory).
"""

from __future__ import annotations

import argparse
import json
import signal
import time

import numpy as np

MODEL_NAME = "tensorrt_llm"
LOGPROB = -0.25  # every generated token's log-probability
# (name, dtype, shape without the batch dimension, optional): the subset of TensorRT-LLM's inputs the engine uses.
INPUTS = [
    ("input_ids", np.int32, (-1,), False), ("input_lengths", np.int32, (1,), False),
    ("request_output_len", np.int32, (1,), False), ("end_id", np.int32, (1,), True),
    ("pad_id", np.int32, (1,), True), ("streaming", np.bool_, (1,), True),
    ("exclude_input_in_output", np.bool_, (1,), True), ("temperature", np.float32, (1,), True),
    ("runtime_top_k", np.int32, (1,), True), ("runtime_top_p", np.float32, (1,), True),
    ("random_seed", np.uint64, (1,), True), ("repetition_penalty", np.float32, (1,), True),
    ("presence_penalty", np.float32, (1,), True), ("frequency_penalty", np.float32, (1,), True),
    ("return_log_probs", np.bool_, (1,), True), ("stop_words_list", np.int32, (2, -1), True),
    ("bad_words_list", np.int32, (2, -1), True),
]
OUTPUTS = [("output_ids", np.int32, (-1, -1)), ("sequence_length", np.int32, (-1,)),
           ("cum_log_probs", np.float32, (-1,)), ("output_log_probs", np.float32, (-1, -1))]


def echo(prompt: list[int], max_tokens: int, end_id: int | None) -> list[int]:
    """The toy model's whole answer: the prompt repeated; with an end id, one echo and then the end."""
    length = min(max_tokens, len(prompt)) if end_id is not None else max_tokens
    return [prompt[i % len(prompt)] for i in range(length)]


def _response(tokens: list[int], cumulative: float) -> dict:
    # One beam: [batch=1, beam=1, tokens], the shapes TensorRT-LLM answers with.
    return {"output_ids": np.array([[tokens]], np.int32), "sequence_length": np.array([[len(tokens)]], np.int32),
            "cum_log_probs": np.array([[cumulative]], np.float32),
            "output_log_probs": np.array([[[LOGPROB] * len(tokens)]], np.float32)}


def make_infer(log_path: str, delay: float):
    def infer(requests):
        # No dynamic batcher is configured, so Triton hands over one request at a time.
        (request,) = requests
        scalars = {k: v.reshape(-1)[0].item() for k, v in request.data.items() if k != "input_ids" and v.size == 1}
        with open(log_path, "a", encoding="utf-8") as f:
            f.write(json.dumps({**scalars, "input_ids": request["input_ids"][0].tolist()}) + "\n")
        prompt = request["input_ids"][0][: scalars["input_lengths"]].tolist()
        end_id = scalars.get("end_id")
        answer = echo(prompt, scalars["request_output_len"], end_id if end_id is not None and end_id >= 0 else None)
        if not scalars.get("streaming"):
            yield [_response(answer, LOGPROB * len(answer))]
            return
        for i, token in enumerate(answer):
            time.sleep(delay)
            yield [_response([token], LOGPROB * (i + 1))]

    return infer


def main() -> None:
    from pytriton.model_config import ModelConfig, Tensor
    from pytriton.triton import Triton, TritonConfig

    parser = argparse.ArgumentParser()
    parser.add_argument("--grpc-port", type=int, required=True)
    parser.add_argument("--http-port", type=int, required=True)
    parser.add_argument("--metrics-port", type=int, required=True)
    parser.add_argument("--log", required=True)
    parser.add_argument("--workspace", required=True, help="PyTriton's sockets and model store")
    parser.add_argument("--delay", type=float, default=0.002, help="seconds per generated token")
    args = parser.parse_args()
    # SIGTERM as Ctrl-C: serve() then stops Triton and its python backend stubs cleanly. Requests still running
    # (the stand-in never hears of a cancel) get a short grace period.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    config = TritonConfig(grpc_port=args.grpc_port, http_port=args.http_port, metrics_port=args.metrics_port,
                          grpc_address="127.0.0.1", http_address="127.0.0.1", log_verbose=0, exit_timeout_secs=2)
    with Triton(config=config, workspace=args.workspace) as triton:
        triton.bind(
            model_name=MODEL_NAME,
            # Two instances: PyTriton does not pass cancels on, so a cancelled echo keeps one busy to its end.
            infer_func=[make_infer(args.log, args.delay)] * 2,
            inputs=[Tensor(name=n, dtype=d, shape=s, optional=o) for n, d, s, o in INPUTS],
            outputs=[Tensor(name=n, dtype=d, shape=s) for n, d, s in OUTPUTS],
            config=ModelConfig(max_batch_size=64, batcher=None, decoupled=True),
        )
        triton.serve()


if __name__ == "__main__":
    main()
