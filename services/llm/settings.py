"""LLM service settings (``NIMRAG_LLM_*``, plus the NIM names in :mod:`nimrag.services.common.settings`)."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from nimrag.services.common.settings import ServiceSettings
from nimrag.services.common.triton import TritonSettings


class LLMSettings(ServiceSettings, TritonSettings):
    model_config = SettingsConfigDict(env_prefix="NIMRAG_LLM_", extra="ignore")

    port: int = Field(8000, ge=1, le=65535)
    model: str | None = Field(None, description="A GGUF file or a Hugging Face model folder; default: the bundled "
                                                "SmolLM2-135M-Instruct GGUF.")
    max_model_len: int | None = Field(None, ge=16, description="Context per sequence, prompt + completion "
                                      "(default: the model's, capped at 4096).")
    max_num_seqs: int | None = Field(None, ge=1, description="Sequences decoded together (default: the profile's).")
    max_queue_items: int = Field(256, ge=0, description="Requests waiting for a free sequence before 429.")
    max_n: int = Field(8, ge=1, description="Most choices (n) in one request.")
    max_prompts: int = Field(32, ge=1, description="Most prompts in one completions request.")
    max_stop_sequences: int = Field(16, ge=0, description="Most stop strings in one request.")
    prompt_cache_mib: int = Field(256, ge=0, description="llama.cpp's prompt cache in host memory (its "
                                  "--cache-ram): saved sequence states, at most this many MiB; 0 turns it off.")
    triton_model: str = Field("ensemble", description="The TensorRT-LLM model in Triton (an ensemble resolves to "
                                                       "its token-level step; `nimrag triton serve`: tensorrt_llm).")
    tokenizer: str | None = Field(None, description="Hugging Face tokenizer folder for the trtllm profiles "
                                                    "(default: the model folder).")
