"""LLM engines behind one small interface; the profile picks which one runs."""

from __future__ import annotations

from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.profiles import Profile
from nimrag.services.llm.engines.base import LLMEngine
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.settings import LLMSettings


def create_engine(profile: Profile, model: LLMModelInfo, settings: LLMSettings, hw: HardwareInfo) -> LLMEngine:
    slots = settings.max_num_seqs or profile.max_batch_items
    if profile.backend == "llamacpp":
        from nimrag.services.llm.engines.llamacpp import LlamaCppEngine

        return LlamaCppEngine(model, slots=slots, context_length=settings.max_model_len,
                              threads=profile.resolved_threads(hw), batch_tokens=profile.max_batch_tokens,
                              prompt_cache_mib=settings.prompt_cache_mib, verbose=settings.log_level == "DEBUG")
    if profile.backend == "transformers":
        from nimrag.services.llm.engines.transformers import TransformersEngine

        return TransformersEngine(model, profile, slots=slots, context_length=settings.max_model_len,
                                  threads=profile.resolved_threads(hw))
    if profile.backend == "trtllm":
        from nimrag.services.llm.engines.trtllm import TritonTrtLlmEngine

        return TritonTrtLlmEngine(model, settings, slots=slots)
    raise ValueError(f"profile '{profile.id}' names an unknown backend '{profile.backend}'")


__all__ = ["LLMEngine", "create_engine"]
