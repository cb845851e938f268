"""ONNX Runtime engine on CPU, fp32 or int8 (export, cache and quantization: nimrag.services.common.onnx_models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from nimrag.services.common.memory import onnx_run_options
from nimrag.services.common.onnx_models import cpu_session, prepare_onnx
from nimrag.services.common.padding import pad
from nimrag.services.common.profiles import Profile
from nimrag.services.embed.engines.base import EmbeddingEngine
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.tokenization import TextTokenizer


class OnnxEngine(EmbeddingEngine):
    def __init__(self, profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, threads: int,
                 cache_dir: Path):
        super().__init__(profile, model, tokenizer)
        self.model_file = prepare_onnx(model.path, model.name, tokenizer.input_names, "last_hidden_state",
                                       profile.precision, cache_dir)
        self._session = cpu_session(self.model_file, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]

    def hidden_states(self, input_ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """The last layer's token embeddings of a padded int64 batch (also what ``nimrag triton serve`` runs)."""
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": np.zeros_like(input_ids)}
        return self._session.run(None, {name: feeds[name] for name in self._inputs}, onnx_run_options())[0]

    def _hidden(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        input_ids, mask = pad(ids, self.tokenizer.pad_id)
        return self.hidden_states(input_ids, mask), mask

    def token_embeddings(self, ids: list[list[int]]) -> list[np.ndarray]:
        hidden, _ = self._hidden(ids)
        return [hidden[row, : len(seq)] for row, seq in enumerate(ids)]

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        return self.pooled(*self._hidden(ids))

    def describe(self) -> dict:
        return {**super().describe(), "onnx_file": str(self.model_file)}
