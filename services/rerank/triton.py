"""A cross-encoder run by a model in a Triton Inference Server (the ``triton`` backend's cross-encoder scorer).

Pairs are tokenized, checked and truncated here exactly as in-process; each engine batch, right-padded, goes to
Triton over gRPC. The tensor interface (deploy/triton/README.md), batch dimension first:

- inputs ``input_ids``, ``attention_mask`` [-1, -1] (INT64 or INT32, as declared) and, when declared,
  ``token_type_ids`` (the pair's segments);
- output ``logits`` [-1, 1] FP32 or FP16: one relevance logit per pair (a Hugging Face sequence-classification
  export's name and shape).

An encoder scored by late interaction or as a bi-encoder needs no model of its own: its scorer calls the
embedding model's interface (nimrag.services.embed.engines.triton) through the same ``NIMRAG_RERANK_TRITON_MODEL``.
"""

from __future__ import annotations

import numpy as np

from nimrag.services.common.profiles import Profile
from nimrag.services.common.triton import ModelInterface, TritonModel
from nimrag.services.rerank.model import RerankModelInfo
from nimrag.services.rerank.scorers import CrossEncoderScorer

REQUIRED_INPUTS = ("input_ids", "attention_mask")
HINT = "see deploy/triton/README.md for the reranking model's interface"


class TritonCrossEncoder(CrossEncoderScorer):
    def __init__(self, model: RerankModelInfo, profile: Profile, triton: TritonModel):
        super().__init__(model, profile)  # the tokenizer, from the model folder
        self.triton = self.upstream = triton
        self.interface: ModelInterface | None = None

    def warm_up(self) -> None:
        """Wait for Triton and check its model (nimrag.services.common.triton), then warm up through it."""
        self.interface = self.triton.attach(REQUIRED_INPUTS, ("logits",), HINT)
        super().warm_up()

    def _logits(self, input_ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
        return self.triton.infer_rows(feeds, "logits", self.interface)[:, 0]

    def describe(self) -> dict:
        return {**super().describe(), "triton_url": self.triton.url, "triton_model": self.triton.name}
