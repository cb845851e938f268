"""The reranker's profiles: the encoder profiles, with int8 ranked below fp32.

ONNX Runtime's dynamic int8 quantization scales activations per batch, so a passage's score would depend on what
else was in its batch: under load the same request could come back in a different order. A reranker must give
the same ranking alone or batched, so int8 is chosen only when pinned. The model in Triton
(``NIMRAG_RERANK_TRITON_URL`` set) wins over every local profile.
"""

from __future__ import annotations

from dataclasses import replace

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES, triton_profile

RERANK_PROFILES = [triton_profile("NIMRAG_RERANK_TRITON_URL"),
                   *(replace(p, rank=1) if p.precision == "int8" else p for p in ENCODER_PROFILES)]
