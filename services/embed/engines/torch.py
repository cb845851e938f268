"""PyTorch engine (sentence-transformers modules): the fp32 reference on CPU, bf16 on CPUs with bf16 units,
fp16/bf16 on CUDA."""

from __future__ import annotations

import contextlib

import numpy as np

from nimrag.services.common.padding import pad
from nimrag.services.common.profiles import Profile
from nimrag.services.embed.engines.base import EmbeddingEngine
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.tokenization import TextTokenizer


class TorchEngine(EmbeddingEngine):
    def __init__(self, profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, threads: int):
        super().__init__(profile, model, tokenizer)
        import torch
        from sentence_transformers import SentenceTransformer

        self._torch = torch
        if profile.device == "cpu":
            torch.set_num_threads(threads)
        self.device = "cuda" if profile.device == "cuda" else "cpu"
        st = SentenceTransformer(str(model.path), device=self.device, local_files_only=True)
        st.eval()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(profile.precision)
        # On CUDA the weights are cast; on CPU bf16 runs under autocast, which keeps the numerics-sensitive
        # parts (layer norm, softmax, pooling) in fp32.
        if dtype is not None and self.device == "cuda":
            st = st.to(dtype)
        self._autocast_dtype = dtype if self.device == "cpu" else None
        self._st = st
        self._wants_token_types = "token_type_ids" in tokenizer.input_names

    def _features(self, ids: list[list[int]]) -> dict:
        input_ids, mask = pad(ids, self.tokenizer.pad_id)
        torch = self._torch
        feats = {"input_ids": torch.from_numpy(input_ids).to(self.device),
                 "attention_mask": torch.from_numpy(mask).to(self.device)}
        if self._wants_token_types:
            feats["token_type_ids"] = torch.zeros_like(feats["input_ids"])
        return feats

    def _forward(self, ids: list[list[int]], output: str) -> np.ndarray:
        torch = self._torch
        autocast = (torch.autocast("cpu", dtype=self._autocast_dtype) if self._autocast_dtype
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            out = self._st(self._features(ids))[output]
        return out.float().cpu().numpy()

    def embed(self, ids: list[list[int]]) -> np.ndarray:
        return self._forward(ids, "sentence_embedding")

    def token_embeddings(self, ids: list[list[int]]) -> list[np.ndarray]:
        hidden = self._forward(ids, "token_embeddings")
        return [hidden[row, : len(seq)] for row, seq in enumerate(ids)]
