"""Which LLM profile is chosen: by GPU count, memory and compute capability, by the model's size and format, and
by whether a Triton server is configured. Selection logic only; engines are tested elsewhere."""

from __future__ import annotations

from pathlib import Path

import pytest

from nimrag.services.common import profiles as common_profiles
from nimrag.services.common.hardware import GPUInfo, HardwareInfo
from nimrag.services.common.profiles import ProfileError, select_profile
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.profiles import LLM_PROFILES

CPU = HardwareInfo("test cpu", 2, 2, frozenset({"avx2"}))
A100 = GPUInfo(0, "NVIDIA A100-SXM4-80GB", 80.0, (8, 0))
H100 = GPUInfo(0, "NVIDIA H100 80GB HBM3", 80.0, (9, 0))
T4 = GPUInfo(0, "Tesla T4", 16.0, (7, 5))
SMALL = LLMModelInfo(Path("m.gguf"), "small", "gguf", parameters=135_000_000, quantization="q4_1")
HF_8B = LLMModelInfo(Path("llama-8b"), "llama-8b", "hf", parameters=8_000_000_000, quantization="bf16")
HF_70B = LLMModelInfo(Path("llama-70b"), "llama-70b", "hf", parameters=70_000_000_000, quantization="bf16")


def box(*gpus: GPUInfo) -> HardwareInfo:
    return HardwareInfo("cpu", 32, 32, frozenset({"avx2"}), gpus=tuple(gpus))


@pytest.fixture
def cuda_torch(monkeypatch):
    """Pretend the installed torch is a CUDA build: what is tested is the choice, not CUDA."""
    monkeypatch.setattr(common_profiles, "_torch_cuda_available", lambda: True)


@pytest.fixture
def triton(monkeypatch):
    monkeypatch.setenv("NIMRAG_LLM_TRITON_URL", "triton:8001")
    monkeypatch.setattr(common_profiles, "_module_available", lambda name: True)


def choose(hw, model, pinned=None):
    return select_profile(LLM_PROFILES, hw, pinned, model.profile_reasons)


def test_cpu_gets_llamacpp():
    assert choose(CPU, SMALL).profile.id == "llamacpp-gguf-tp1-throughput"


def test_profile_ids_follow_nim_naming():
    import re

    for p in LLM_PROFILES:
        assert re.fullmatch(r"[a-z]+(-cpu)?-[a-z0-9]+-tp\d-(throughput|latency)", p.id), p.id
        assert p.tensor_parallel == int(p.id.split("-tp")[1].split("-")[0])


def test_gpu_gets_transformers_bf16_or_fp16_by_compute_capability(cuda_torch):
    assert choose(box(A100), HF_8B).profile.id == "transformers-bf16-tp1-throughput"
    assert choose(box(T4), SMALL).profile.id == "transformers-fp16-tp1-throughput"  # no bf16 before Ampere


def test_model_that_does_not_fit_is_not_chosen(cuda_torch):
    choice = choose(box(T4), HF_8B)  # 8B in fp16 is 14.9 GiB: more than 80% of a 16 GiB T4
    assert choice.profile.id == "transformers-fp32-tp1-latency"
    reasons = {p.id: r for p, r in choice.incompatible}["transformers-fp16-tp1-throughput"]
    assert reasons == ["fp16 weights need 14.9 GiB per GPU, 12.8 GiB usable"]


def test_huge_model_needs_tensor_parallel_on_triton(cuda_torch, triton):
    eight = box(*[GPUInfo(i, H100.name, 80.0, (9, 0)) for i in range(8)])
    assert choose(eight, HF_70B).profile.id == "trtllm-bf16-tp8-throughput"
    four = box(*[GPUInfo(i, H100.name, 80.0, (9, 0)) for i in range(4)])
    assert choose(four, HF_70B).profile.id == "trtllm-bf16-tp4-throughput"
    with pytest.raises(ProfileError, match="weights need 65.2 GiB per GPU, 64.0 GiB usable"):
        choose(four, HF_70B, pinned="trtllm-bf16-tp2-throughput")  # 130 GiB over 2 GPUs is too tight
    with pytest.raises(ProfileError, match="weights need 130.4 GiB per GPU"):
        choose(four, HF_70B, pinned="transformers-bf16-tp1-throughput")


def test_triton_profiles_need_the_url(cuda_torch, monkeypatch):
    monkeypatch.delenv("NIMRAG_LLM_TRITON_URL", raising=False)
    with pytest.raises(ProfileError, match="NIMRAG_LLM_TRITON_URL is not set"):
        choose(box(A100), HF_8B, pinned="trtllm-bf16-tp1-throughput")


def test_fp8_needs_ada_or_hopper(cuda_torch, triton):
    assert choose(box(H100), HF_8B).profile.id == "trtllm-fp8-tp1-throughput"
    assert choose(box(A100), HF_8B).profile.id == "trtllm-bf16-tp1-throughput"


def test_cpu_memory_bounds_the_cpu_profiles():
    small_ram = HardwareInfo("cpu", 2, 2, frozenset(), memory_gib=16.0)
    with pytest.raises(ProfileError, match="fp32 weights need 29.8 GiB, 12.8 GiB of memory usable"):
        choose(small_ram, HF_8B)


def test_llamacpp_needs_a_gguf_file():
    with pytest.raises(ProfileError, match="llama.cpp serves GGUF files"):
        choose(CPU, HF_8B, pinned="llamacpp-gguf-tp1-throughput")
    assert choose(CPU, HF_8B).profile.id == "transformers-fp32-tp1-latency"
