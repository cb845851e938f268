"""The reranker's profiles: the encoder profiles, with int8 ranked below fp32.

ONNX Runtime's dynamic int8 quantization scales activations per batch, so a passage's score would depend on what
else was in its batch: under load the same request could come back in a different order. A reranker must give
the same ranking alone or batched, so int8 is chosen only when pinned.
"""

from __future__ import annotations

from dataclasses import replace

from services.common.encoder_profiles import ENCODER_PROFILES

RERANK_PROFILES = [replace(p, rank=1) if p.precision == "int8" else p for p in ENCODER_PROFILES]
