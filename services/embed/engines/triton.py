"""The ``triton`` engine: token ids batched here, the encoder run by a model in a Triton Inference Server.

The service keeps its whole API (tokenizing, truncation, limits, usage, Matryoshka, encodings) and sends each
engine batch, right-padded, to Triton over gRPC; Triton's dynamic batcher may merge it with other gateways'
batches of the same length. The tensor interface (deploy/triton/README.md), batch dimension first:

- inputs ``input_ids`` and ``attention_mask`` [-1, -1] (INT64 or INT32, as declared); ``token_type_ids`` too
  (zeros) when the model declares it;
- output ``sentence_embedding`` [-1, dim] (pooled, normalized as the model is: a sentence-transformers ONNX
  export's name), or else ``last_hidden_state`` [-1, -1, hidden] (a plain Hugging Face export), pooled here as
  the model folder says; for token embeddings (the reranker's late interaction) ``token_embeddings``, or else
  ``last_hidden_state``. FP32 or FP16 (a TensorRT fp16 engine): returned as float32.

The model folder is still read here (tokenizer, pooling, normalization, limits); its weights are not needed.
"""

from __future__ import annotations

import numpy as np

from nimrag.services.common.padding import pad
from nimrag.services.common.profiles import Profile
from nimrag.services.common.triton import ModelInterface, TritonModel
from nimrag.services.embed.engines.base import EmbeddingEngine
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.tokenization import TextTokenizer

REQUIRED_INPUTS = ("input_ids", "attention_mask")
POOLED_OUTPUTS = ("sentence_embedding", "last_hidden_state")
TOKEN_OUTPUTS = ("token_embeddings", "last_hidden_state")
HINT = "see deploy/triton/README.md for the embedding model's interface"


class TritonEngine(EmbeddingEngine):
    def __init__(self, profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, triton: TritonModel):
        super().__init__(profile, model, tokenizer)
        self.triton = self.upstream = triton
        self.interface: ModelInterface | None = None

    def warm_up(self) -> None:
        """Wait for Triton and check its model (nimrag.services.common.triton), then warm up through it, which also
        measures the dimension."""
        self.interface = self.triton.attach(REQUIRED_INPUTS, POOLED_OUTPUTS, HINT)
        super().warm_up()

    def _first_declared(self, names: tuple[str, ...]) -> str:
        found = next((n for n in names if n in self.interface.outputs), None)
        if found is None:
            raise RuntimeError(f"{self.triton.where}: the model declares none of {', '.join(names)}; {HINT}")
        return found

    def _run(self, ids: list[list[int]], output: str) -> tuple[np.ndarray, np.ndarray]:
        input_ids, mask = pad(ids, self.tokenizer.pad_id)
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return self.triton.infer_rows(feeds, output, self.interface), mask

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        output = self._first_declared(POOLED_OUTPUTS)
        result, mask = self._run(ids, output)
        return result if output == "sentence_embedding" else self.pooled(result, mask)

    def token_embeddings(self, ids: list[list[int]]) -> list[np.ndarray]:
        hidden, _ = self._run(ids, self._first_declared(TOKEN_OUTPUTS))
        return [hidden[row, : len(seq)] for row, seq in enumerate(ids)]

    def describe(self) -> dict:
        return {**super().describe(), "triton_url": self.triton.url, "triton_model": self.triton.name}
