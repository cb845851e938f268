"""The embedding and reranking models ``nimrag triton serve`` hosts: nimrag's own ONNX engines behind the tensor
interfaces of deploy/triton/README.md, so the services' ``triton`` backend runs against a real Triton on a CPU.

Each model is built as the in-process service builds it (the same engine classes, fp32 ONNX Runtime) and gets
Triton's dynamic batcher: requests of the same padded length, from any number of gateways, are run together.
Only the outputs a request asks for are computed (token embeddings are large).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES
from nimrag.services.common.hardware import HardwareInfo

PROFILE_ID = "onnx-cpu-fp32"  # ranking must not depend on batch mates, so no int8 (services/rerank/profiles.py)
TOKEN_INPUTS = ("input_ids", "attention_mask")
EMBEDDING_OUTPUTS = ("sentence_embedding", "token_embeddings")


Tensors = tuple[tuple[str, type, tuple[int, ...]], ...]  # (name, numpy type, shape without the batch dimension)


@dataclass(frozen=True)
class HostedModel:
    """A model to bind into PyTriton: its callable (PyTriton's ``infer_func``) and tensors."""

    name: str
    infer: Callable
    inputs: Tensors
    outputs: Tensors
    description: str
    optional: frozenset[str] = field(default_factory=frozenset)  # inputs a request may leave out
    decoupled: bool = False  # streamed responses
    dynamic_batching: bool = True
    max_batch_size: int = 64


def _profile():
    return next(p for p in ENCODER_PROFILES if p.id == PROFILE_ID)


def embedding_model(name: str, folder: str | None, hw: HardwareInfo, cache: Path) -> HostedModel:
    """The embedding interface (``sentence_embedding``, ``token_embeddings``) over an encoder folder."""
    from nimrag.services.embed.engines.onnx import OnnxEngine
    from nimrag.services.embed.model import load_model_info
    from nimrag.services.embed.settings import EmbedSettings
    from nimrag.services.embed.tokenization import TextTokenizer

    info = load_model_info(EmbedSettings(model=folder, query_prefix=None, passage_prefix=None, matryoshka_dims=""))
    engine = OnnxEngine(_profile(), info, TextTokenizer(info.path, info.max_tokens), _profile().resolved_threads(hw),
                        cache)
    return _embedding_interface(name, engine, f"{info.name} embeddings ({info.pooling} pooling, ONNX fp32)")


def _embedding_interface(name: str, engine, description: str) -> HostedModel:
    def run(batch: dict[str, np.ndarray], wanted: set[str]) -> dict[str, np.ndarray]:
        mask = batch["attention_mask"].astype(np.int64, copy=False)
        hidden = engine.hidden_states(batch["input_ids"].astype(np.int64, copy=False), mask)
        outputs = {"token_embeddings": hidden} if "token_embeddings" in wanted else {}
        if "sentence_embedding" in wanted:
            outputs["sentence_embedding"] = engine.pooled(hidden, mask)
        return outputs

    return _batched(name, run, inputs=tuple((n, np.int64, (-1,)) for n in TOKEN_INPUTS),
                    outputs=(("sentence_embedding", np.float32, (-1,)), ("token_embeddings", np.float32, (-1, -1))),
                    description=description)


def reranking_model(name: str, folder: str | None, hw: HardwareInfo, cache: Path) -> HostedModel:
    """A cross-encoder folder: ``logits`` of (query, passage) pairs; an encoder folder: the embedding interface,
    which the reranker's late-interaction and bi-encoder scorers call."""
    from nimrag.services.rerank.model import load_model_info
    from nimrag.services.rerank.scorers import CrossEncoderScorer, create_scorer
    from nimrag.services.rerank.settings import RerankSettings

    info = load_model_info(RerankSettings(model=folder))
    scorer = create_scorer(info, _profile(), _profile().resolved_threads(hw), cache)
    if not isinstance(scorer, CrossEncoderScorer):
        return _embedding_interface(name, scorer.engine, f"{info.name} token and sentence embeddings, for "
                                                         f"{info.scorer} ranking (ONNX fp32)")

    def run(batch: dict[str, np.ndarray], wanted: set[str]) -> dict[str, np.ndarray]:
        ids, mask, types = (batch[n].astype(np.int64, copy=False) for n in (*TOKEN_INPUTS, "token_type_ids"))
        return {"logits": scorer.logits(ids, mask, types)[:, None]}

    return _batched(name, run, inputs=tuple((n, np.int64, (-1,)) for n in (*TOKEN_INPUTS, "token_type_ids")),
                    outputs=(("logits", np.float32, (1,)),),
                    description=f"{info.name} cross-encoder logits (ONNX fp32)")


def _batched(name: str, run: Callable[[dict[str, np.ndarray], set[str]], dict[str, np.ndarray]], inputs: Tensors,
             outputs: Tensors, description: str) -> HostedModel:
    """A dynamically batched model over ``run`` (a batch and the outputs wanted -> those outputs). Triton hands
    over requests of one shape; they run as one batch and the rows are split back, each request getting the
    outputs it asked for."""
    every = {n for n, _, _ in outputs}

    def infer(requests):
        wanted = set().union(*(set(r.requested_output_names or every) for r in requests))
        batch = {n: np.concatenate([r[n] for r in requests]) for n, _, _ in inputs}
        results = run(batch, wanted)
        bounds = np.cumsum([len(r[inputs[0][0]]) for r in requests])[:-1]
        parts = {n: np.split(value, bounds) for n, value in results.items()}
        return [{n: split[i] for n, split in parts.items()} for i in range(len(requests))]

    return HostedModel(name, infer, inputs, outputs, description)
