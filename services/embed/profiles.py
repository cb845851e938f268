"""The embedding service's profiles: the encoder profiles, and its model in Triton once
``NIMRAG_EMBED_TRITON_URL`` is set."""

from __future__ import annotations

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES, triton_profile

EMBED_PROFILES = [triton_profile("NIMRAG_EMBED_TRITON_URL"), *ENCODER_PROFILES]
