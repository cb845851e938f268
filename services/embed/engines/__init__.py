"""Embedding engines behind one small interface; the profile picks which one runs."""

from __future__ import annotations

from pathlib import Path

from services.common.profiles import Profile
from services.common.triton import TritonModel
from services.embed.engines.base import EmbeddingEngine
from services.embed.model import EmbeddingModelInfo
from services.embed.tokenization import TextTokenizer


def create_engine(profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, threads: int,
                  cache_dir: Path, triton: TritonModel | None = None) -> EmbeddingEngine:
    """The profile's engine; the ``triton`` backend calls ``triton`` (services.common.triton.TritonModel)."""
    if profile.backend == "onnxruntime":
        from services.embed.engines.onnx import OnnxEngine

        return OnnxEngine(profile, model, tokenizer, threads, cache_dir)
    if profile.backend == "torch":
        from services.embed.engines.torch import TorchEngine

        return TorchEngine(profile, model, tokenizer, threads)
    if profile.backend == "triton":
        from services.embed.engines.triton import TritonEngine

        return TritonEngine(profile, model, tokenizer, triton)
    raise ValueError(f"profile '{profile.id}' names an unknown backend '{profile.backend}'")


__all__ = ["EmbeddingEngine", "create_engine"]
