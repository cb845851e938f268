"""``nimrag triton serve``: a real Triton Inference Server (through ``nvidia-pytriton``) hosting nimrag's own CPU
engines behind the tensor interfaces the services' Triton backends speak (deploy/triton/README.md):

- ``embed``: the ONNX embedding engine (``sentence_embedding``, ``token_embeddings``), dynamic batching;
- ``rerank``: the reranker's model (a cross-encoder's ``logits``, or an encoder's embeddings), dynamic batching;
- ``tensorrt_llm`` and ``ensemble``: llama.cpp behind TensorRT-LLM's token and text interfaces (nimrag.triton.llm).

Point the services at it: ``NIMRAG_EMBED_TRITON_URL`` / ``NIMRAG_RERANK_TRITON_URL`` / ``NIMRAG_LLM_TRITON_URL``
= ``127.0.0.1:<grpc port>`` (and ``NIMRAG_LLM_TRITON_MODEL=tensorrt_llm``), and each selects its Triton profile.
SIGTERM or Ctrl-C stops Triton, its Python backend stubs and their shared memory.
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sysconfig
from pathlib import Path

from nimrag.triton.arguments import parse_models
from nimrag.triton.encoders import HostedModel

log = logging.getLogger("nimrag.triton")


def build_models(args: argparse.Namespace) -> tuple[list[HostedModel], list]:
    """The hosted models, loaded (exports and llama.cpp take seconds), and the engines to close at the end."""
    from nimrag.services.common.hardware import probe
    from nimrag.services.embed.settings import EmbedSettings
    from nimrag.triton.encoders import embedding_model, reranking_model

    hw, chosen = probe(), parse_models(args.models)
    cache = Path(EmbedSettings().cache_path)
    models, engines = [], []
    if "embed" in chosen:
        models.append(embedding_model("embed", args.embed_model, hw, cache))
    if "rerank" in chosen:
        models.append(reranking_model("rerank", args.rerank_model, hw, cache))
    if "llm" in chosen:
        from nimrag.triton.llm import llm_models

        engine, llm = llm_models(args.llm_model, args.llm_slots, args.llm_context,
                                 max(1, hw.physical_cores or hw.logical_cores))
        models += llm
        engines.append(engine)
    return models, engines


def _python_libdir_env() -> None:
    """Triton's Python backend stub links against libpython; PyTriton hands our environment to the server."""
    paths = [sysconfig.get_config_var("LIBDIR"), os.environ.get("LD_LIBRARY_PATH")]
    os.environ["LD_LIBRARY_PATH"] = ":".join(p for p in paths if p)


def bind(triton, model: HostedModel, max_queue_delay_us: int) -> None:
    from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor

    batcher = DynamicBatcher(max_queue_delay_microseconds=max_queue_delay_us) if model.dynamic_batching else None
    triton.bind(model_name=model.name, infer_func=model.infer,
                inputs=[Tensor(name=n, dtype=t, shape=s, optional=n in model.optional) for n, t, s in model.inputs],
                outputs=[Tensor(name=n, dtype=t, shape=s) for n, t, s in model.outputs],
                config=ModelConfig(max_batch_size=model.max_batch_size, batcher=batcher, decoupled=model.decoupled))


def serve(args: argparse.Namespace) -> int:
    from pytriton.triton import Triton, TritonConfig

    _python_libdir_env()
    models, engines = build_models(args)
    config = TritonConfig(grpc_address=args.host, grpc_port=args.grpc_port, http_address=args.host,
                          http_port=args.http_port, metrics_port=args.metrics_port, log_verbose=0,
                          exit_timeout_secs=5)
    # SIGTERM as Ctrl-C: serve() then stops Triton and its stubs cleanly.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        with Triton(config=config, workspace=args.workspace) as triton:
            for model in models:
                bind(triton, model, args.max_queue_delay_us)
            for model in models:
                log.info(f"model '{model.name}': {model.description}")
            log.info(f"Triton serves them over gRPC at {args.host}:{args.grpc_port}, HTTP at "
                     f"{args.host}:{args.http_port}")
            triton.serve()
    except KeyboardInterrupt:
        pass
    finally:
        for engine in engines:
            engine.close()
    return 0
