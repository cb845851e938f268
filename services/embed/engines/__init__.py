"""Embedding engines behind one small interface; the profile picks which one runs."""

from __future__ import annotations

from pathlib import Path

from nimrag.services.common.profiles import Profile
from nimrag.services.common.triton import TritonModel
from nimrag.services.embed.engines.base import EmbeddingEngine
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.tokenization import TextTokenizer


def create_engine(profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, threads: int,
                  cache_dir: Path, triton: TritonModel | None = None) -> EmbeddingEngine:
    """The profile's engine; the ``triton`` backend calls ``triton`` (nimrag.services.common.triton.TritonModel)."""
    if profile.backend == "onnxruntime":
        from nimrag.services.embed.engines.onnx import OnnxEngine

        return OnnxEngine(profile, model, tokenizer, threads, cache_dir)
    if profile.backend == "torch":
        from nimrag.services.embed.engines.torch import TorchEngine

        return TorchEngine(profile, model, tokenizer, threads)
    if profile.backend == "triton":
        from nimrag.services.embed.engines.triton import TritonEngine

        return TritonEngine(profile, model, tokenizer, triton)
    raise ValueError(f"profile '{profile.id}' names an unknown backend '{profile.backend}'")


__all__ = ["EmbeddingEngine", "create_engine"]
