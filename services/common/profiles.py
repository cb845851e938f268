"""Optimization profiles: how a service runs its model on the hardware it finds.

Each service declares its profiles (engine, device, precision, batch sizes, threads) and what each needs. The
best compatible one is chosen at start and logged; ``NIM_MODEL_PROFILE`` pins one, and pinning one this machine
cannot run fails at start with the reason.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from functools import cache

from nimrag.services.common.errors import StartupError
from nimrag.services.common.hardware import HardwareInfo


class ProfileError(StartupError):
    """A pinned profile is unknown or cannot run here."""


@dataclass(frozen=True)
class Profile:
    id: str
    backend: str  # engine family, e.g. "onnxruntime" or "torch"
    device: str  # "cpu" or "cuda"
    precision: str  # "fp32", "bf16", "fp16", "int8"
    max_batch_items: int
    max_batch_tokens: int
    rank: int  # higher wins among compatible profiles
    batch_wait_ms: float = 0.0  # hold a not-full batch this long for more work (pays off where batches are cheap)
    max_padding_ratio: float = 1.25  # cut a batch where padding would exceed this multiple of its real tokens
    description: str = ""
    threads: int | None = None  # None: one per physical core
    min_gpus: int = 0
    min_gpu_memory_gib: float = 0.0
    min_compute_capability: tuple[int, int] | None = None
    cpu_isa_any: tuple[str, ...] = ()  # at least one of these CPU flags
    python_modules: tuple[str, ...] = ()
    tensor_parallel: int = 1  # GPUs one model copy is split over
    requires_env: tuple[str, ...] = ()  # settings that must be given (e.g. the URL of an external server)

    def resolved_threads(self, hw: HardwareInfo) -> int:
        return self.threads or max(1, hw.physical_cores or hw.logical_cores)

    def as_dict(self) -> dict:
        return asdict(self)


@cache
def _module_available(name: str) -> bool:
    return importlib.util.find_spec(name) is not None


@cache
def _torch_cuda_available() -> bool:
    if not _module_available("torch"):
        return False
    import torch

    return bool(torch.cuda.is_available())


# Extra reasons a profile cannot serve this service's model (e.g. its weights do not fit the GPUs).
ModelCheck = Callable[[Profile, HardwareInfo], list[str]]


def incompatibilities(profile: Profile, hw: HardwareInfo, model_check: ModelCheck | None = None) -> list[str]:
    """Why ``profile`` cannot run on ``hw``; empty when it can."""
    reasons = [f"Python package '{m}' is not installed" for m in profile.python_modules if not _module_available(m)]
    reasons += [f"{name} is not set" for name in profile.requires_env if not os.environ.get(name)]
    if profile.cpu_isa_any and not any(hw.has_isa(f) for f in profile.cpu_isa_any):
        reasons.append(f"CPU lacks all of: {', '.join(profile.cpu_isa_any)}")
    if profile.min_gpus:
        if hw.gpu_count < profile.min_gpus:
            reasons.append(f"needs {profile.min_gpus} NVIDIA GPU(s), found {hw.gpu_count}")
        else:
            gpus = hw.gpus[: profile.min_gpus]
            if min(g.memory_gib for g in gpus) < profile.min_gpu_memory_gib:
                reasons.append(f"needs {profile.min_gpu_memory_gib} GiB per GPU")
            cap = profile.min_compute_capability
            if cap and min(g.compute_capability for g in gpus) < cap:
                reasons.append(f"needs compute capability >= {cap[0]}.{cap[1]}")
            if profile.device == "cuda" and not reasons and not _torch_cuda_available():
                reasons.append("torch has no CUDA support (install a CUDA build of torch)")
    if model_check and not reasons:
        reasons += model_check(profile, hw)
    return reasons


@dataclass(frozen=True)
class ProfileChoice:
    profile: Profile
    compatible: list[Profile]
    incompatible: list[tuple[Profile, list[str]]]
    pinned: bool


def evaluate(profiles: list[Profile], hw: HardwareInfo, model_check: ModelCheck | None = None
             ) -> tuple[list[Profile], list[tuple[Profile, list[str]]]]:
    compatible, incompatible = [], []
    for p in sorted(profiles, key=lambda p: -p.rank):
        reasons = incompatibilities(p, hw, model_check)
        if reasons:
            incompatible.append((p, reasons))
        else:
            compatible.append(p)
    return compatible, incompatible


def select_profile(profiles: list[Profile], hw: HardwareInfo, pinned: str | None = None,
                   model_check: ModelCheck | None = None) -> ProfileChoice:
    compatible, incompatible = evaluate(profiles, hw, model_check)
    if pinned:
        by_id = {p.id: p for p in profiles}
        if pinned not in by_id:
            raise ProfileError(f"Unknown profile '{pinned}'. Known profiles: {', '.join(sorted(by_id))}.")
        reasons = dict((p.id, r) for p, r in incompatible).get(pinned)
        if reasons:
            raise ProfileError(f"Profile '{pinned}' cannot run on this machine: {'; '.join(reasons)}.")
        return ProfileChoice(by_id[pinned], compatible, incompatible, pinned=True)
    if not compatible:
        raise ProfileError("No profile can run on this machine: " +
                           "; ".join(f"{p.id}: {', '.join(r)}" for p, r in incompatible))
    return ProfileChoice(compatible[0], compatible, incompatible, pinned=False)
