from __future__ import annotations

import pytest

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES
from nimrag.services.common.hardware import GPUInfo, HardwareInfo
from nimrag.services.common.profiles import ProfileError, incompatibilities, select_profile

VNNI_CPU = HardwareInfo("test cpu", 4, 4, frozenset({"avx2", "avx512f", "avx512_vnni"}))
BF16_CPU = HardwareInfo("test cpu", 4, 4, frozenset({"avx2", "avx512f", "avx512_bf16"}))
PLAIN_CPU = HardwareInfo("old cpu", 2, 2, frozenset({"sse4_2", "avx2"}))
A100 = GPUInfo(0, "NVIDIA A100-SXM4-80GB", 80.0, (8, 0))


def test_best_compatible_profile_is_chosen_by_cpu_features():
    assert select_profile(ENCODER_PROFILES, VNNI_CPU).profile.id == "onnx-cpu-int8"
    assert select_profile(ENCODER_PROFILES, BF16_CPU).profile.id == "onnx-cpu-fp32"  # bf16 only wins big batches
    assert select_profile(ENCODER_PROFILES, PLAIN_CPU).profile.id == "onnx-cpu-fp32"


def test_incompatible_profiles_say_why():
    cuda = next(p for p in ENCODER_PROFILES if p.id == "torch-cuda-bf16")
    assert incompatibilities(cuda, PLAIN_CPU) == ["needs 1 NVIDIA GPU(s), found 0"]
    old_gpu = HardwareInfo("cpu", 4, 4, frozenset(), gpus=(GPUInfo(0, "Tesla P100", 16.0, (6, 0)),))
    assert "needs compute capability >= 8.0" in incompatibilities(cuda, old_gpu)
    int8 = next(p for p in ENCODER_PROFILES if p.id == "onnx-cpu-int8")
    assert incompatibilities(int8, PLAIN_CPU) == ["CPU lacks all of: avx512_vnni, avx_vnni, amx_int8"]


def test_gpu_profiles_need_a_cuda_build_of_torch():
    import torch

    gpu_box = HardwareInfo("cpu", 16, 16, frozenset({"avx512_vnni"}), gpus=(A100,))
    choice = select_profile(ENCODER_PROFILES, gpu_box)
    if torch.cuda.is_available():
        assert choice.profile.id == "torch-cuda-bf16"
    else:  # a GPU the installed torch cannot use is not selected, and the reason says what to do
        assert choice.profile.device == "cpu"
        reasons = dict((p.id, r) for p, r in choice.incompatible)["torch-cuda-bf16"]
        assert any("CUDA build of torch" in r for r in reasons)


def test_pinning_a_profile():
    assert select_profile(ENCODER_PROFILES, VNNI_CPU, "torch-cpu-fp32").profile.id == "torch-cpu-fp32"
    assert select_profile(ENCODER_PROFILES, VNNI_CPU, "torch-cpu-fp32").pinned
    with pytest.raises(ProfileError, match="Unknown profile 'nope'"):
        select_profile(ENCODER_PROFILES, VNNI_CPU, "nope")
    with pytest.raises(ProfileError, match="cannot run on this machine: needs 1 NVIDIA GPU"):
        select_profile(ENCODER_PROFILES, VNNI_CPU, "torch-cuda-fp16")


def test_threads_default_to_physical_cores():
    profile = ENCODER_PROFILES[-1]
    assert profile.resolved_threads(HardwareInfo("cpu", 8, 4)) == 4
