"""Find out what this machine has, without CUDA or any GPU framework installed.

GPUs are read through NVML (``libnvidia-ml.so.1``, part of the NVIDIA driver) with NVIDIA's own bindings
(``nvidia-ml-py``, module ``pynvml``, pure Python), falling back to ``nvidia-smi``; no GPU, no driver or any failure
simply means zero GPUs.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
from dataclasses import asdict, dataclass, field

import pynvml


@dataclass(frozen=True)
class GPUInfo:
    index: int
    name: str
    memory_gib: float
    compute_capability: tuple[int, int]


@dataclass(frozen=True)
class HardwareInfo:
    cpu_model: str
    logical_cores: int
    physical_cores: int
    cpu_flags: frozenset[str] = field(default_factory=frozenset)
    gpus: tuple[GPUInfo, ...] = ()
    memory_gib: float = 0.0

    @property
    def gpu_count(self) -> int:
        return len(self.gpus)

    def has_isa(self, flag: str) -> bool:
        return flag in self.cpu_flags

    def as_dict(self) -> dict:
        d = asdict(self)
        d["cpu_flags"] = sorted(f for f in self.cpu_flags if f.startswith(("avx", "amx", "fma", "sse4", "neon")))
        return d


def _read_cpuinfo() -> tuple[str, frozenset[str], int]:
    model, flags, cores = platform.processor() or platform.machine(), frozenset(), 0
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return model, flags, cores
    physical: set[tuple[str, str]] = set()
    phys_id = "0"
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value
        elif key in ("flags", "Features") and not flags:
            flags = frozenset(value.split())
        elif key == "physical id":
            phys_id = value
        elif key == "core id":
            physical.add((phys_id, value))
    return model, flags, len(physical)


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return 0.0


def _gpus_from_nvml() -> tuple[GPUInfo, ...] | None:
    """The GPUs NVML reports; None when NVML cannot be used (no driver library, driver not loaded)."""
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return None
    try:
        return tuple(gpu for i in range(pynvml.nvmlDeviceGetCount()) if (gpu := _nvml_gpu(i)))
    except pynvml.NVMLError:
        return None
    finally:
        pynvml.nvmlShutdown()


def _nvml_gpu(index: int) -> GPUInfo | None:
    """One GPU; None for one NVML cannot describe (lost, or its handle refused), as CUDA would not use it."""
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        memory = pynvml.nvmlDeviceGetMemoryInfo(handle)
        return GPUInfo(index, pynvml.nvmlDeviceGetName(handle), round(memory.total / 2**30, 1),
                       tuple(pynvml.nvmlDeviceGetCudaComputeCapability(handle)))
    except pynvml.NVMLError:
        return None


def _gpus_from_nvidia_smi() -> tuple[GPUInfo, ...]:
    exe = shutil.which("nvidia-smi")
    if not exe:
        return ()
    try:
        out = subprocess.run([exe, "--query-gpu=index,name,memory.total,compute_cap", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=10, check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        try:
            idx, name, mem_mib, cap = (p.strip() for p in line.split(","))
            major, minor = cap.split(".")
            gpus.append(GPUInfo(int(idx), name, round(float(mem_mib) / 1024, 1), (int(major), int(minor))))
        except ValueError:
            continue
    return tuple(gpus)


def _visible(gpus: tuple[GPUInfo, ...]) -> tuple[GPUInfo, ...]:
    """Honour CUDA_VISIBLE_DEVICES the way CUDA does (indices only)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return gpus
    wanted = [v.strip() for v in visible.split(",") if v.strip()]
    by_index = {str(g.index): g for g in gpus}
    return tuple(by_index[w] for w in wanted if w in by_index)


def probe() -> HardwareInfo:
    model, flags, physical = _read_cpuinfo()
    logical = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    gpus = _gpus_from_nvml()
    if gpus is None:
        gpus = _gpus_from_nvidia_smi()
    return HardwareInfo(cpu_model=model, logical_cores=logical, physical_cores=min(physical or logical, logical),
                        cpu_flags=flags, gpus=_visible(gpus), memory_gib=round(_memory_gib(), 1))
