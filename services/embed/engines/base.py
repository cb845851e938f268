"""The engine interface: token ids in, one float32 embedding per text out (pooled, normalized as the model is)."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np

from nimrag.services.common.profiles import Profile
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.tokenization import TextTokenizer

WARMUP_TEXTS = ["warm-up", "A longer warm-up sentence so that the engine sees more than one sequence length."]


class EmbeddingEngine(ABC):
    upstream = None  # the server it forwards to (nimrag.services.common.triton.TritonModel), whose readiness is ours

    def __init__(self, profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer):
        self.profile = profile
        self.model = model
        self.tokenizer = tokenizer
        self.dimension = model.dimension

    @abstractmethod
    def embed(self, ids: list[list[int]]) -> np.ndarray:
        """Embeddings of a batch of token-id sequences, shape (len(ids), dimension), float32."""

    @abstractmethod
    def token_embeddings(self, ids: list[list[int]]) -> list[np.ndarray]:
        """The last layer's token embeddings of each sequence (length x hidden, padding dropped), float32."""

    def pooled(self, hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """Sentence embeddings from a padded batch's token embeddings: pooled, normalized as the model is."""
        vectors = pool(hidden, mask, self.model.pooling)
        return (l2_normalize(vectors) if self.model.normalize else vectors).astype(np.float32, copy=False)

    def warm_up(self) -> None:
        out = self.embed(self.tokenizer.encode(WARMUP_TEXTS, truncate="END"))
        self.dimension = int(out.shape[1])

    def describe(self) -> dict:
        return {"backend": self.profile.backend, "device": self.profile.device, "precision": self.profile.precision}


def pool(hidden: np.ndarray, mask: np.ndarray, mode: str) -> np.ndarray:
    """Sentence-transformers pooling over the token embeddings of a padded batch."""
    if mode == "cls":
        return hidden[:, 0]
    m = mask[..., None].astype(hidden.dtype)
    if mode == "max":
        return np.where(m > 0, hidden, np.finfo(hidden.dtype).min).max(axis=1)
    return (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=1, keepdims=True), 1e-12, None)
