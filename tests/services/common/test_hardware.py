"""The hardware probe. This machine has no NVIDIA driver: the NVML tests that need one run where there is one, and
the driver's failures are stood in for by making pynvml raise the errors it raises (marked where they are)."""

from __future__ import annotations

import os
import shutil
import stat
from types import SimpleNamespace

import pynvml
import pytest

from nimrag.services.common import hardware


def nvml_available() -> bool:
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        return False
    pynvml.nvmlShutdown()
    return True


def fake_nvidia_smi(folder, monkeypatch) -> None:
    """Stands in for the real tool's output format: two H100s."""
    tool = folder / "nvidia-smi"
    rows = "0, NVIDIA H100 80GB HBM3, 81559, 9.0\\n1, NVIDIA H100 80GB HBM3, 81559, 9.0\\n"
    tool.write_text(f"#!/bin/sh\nprintf '{rows}'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{folder}{os.pathsep}{os.environ['PATH']}")


def test_probe_describes_this_machine():
    hw = hardware.probe()
    assert hw.logical_cores >= 1 and 1 <= hw.physical_cores <= hw.logical_cores
    assert hw.memory_gib > 0
    assert isinstance(hw.as_dict()["cpu_flags"], list)


def test_nvidia_smi_output_is_parsed_and_cuda_visible_devices_honoured(tmp_path, monkeypatch):
    """Without NVML, GPUs are read from nvidia-smi's CSV."""
    fake_nvidia_smi(tmp_path, monkeypatch)
    gpus = hardware._gpus_from_nvidia_smi()
    assert [(g.index, g.name, g.memory_gib, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 79.6, (9, 0)), (1, "NVIDIA H100 80GB HBM3", 79.6, (9, 0))]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in hardware._visible(gpus)] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware._visible(gpus) == ()


@pytest.mark.skipif(nvml_available() or shutil.which("nvidia-smi") is not None, reason="this machine has a driver")
def test_without_a_driver_probe_finds_no_gpu_and_no_error():
    assert hardware._gpus_from_nvml() is None  # pynvml: NVML Shared Library Not Found, read as "no NVML"
    assert hardware.probe().gpus == ()


@pytest.mark.skipif(not nvml_available() or shutil.which("nvidia-smi") is None, reason="needs an NVIDIA driver")
def test_nvml_and_nvidia_smi_report_the_same_gpus():
    def described(gpus):
        return [(g.index, g.name, g.compute_capability) for g in gpus]

    assert described(hardware._gpus_from_nvml()) == described(hardware._gpus_from_nvidia_smi()) != []
    assert all(g.memory_gib > 1 for g in hardware.probe().gpus)


def test_an_nvml_error_falls_back_to_nvidia_smi(tmp_path, monkeypatch):
    # stand-in for a driver that is installed but not loaded: pynvml raises this from nvmlInit
    def driver_not_loaded():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_DRIVER_NOT_LOADED)

    monkeypatch.setattr(pynvml, "nvmlInit", driver_not_loaded)
    assert hardware._gpus_from_nvml() is None
    fake_nvidia_smi(tmp_path, monkeypatch)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,0")
    assert [g.index for g in hardware.probe().gpus] == [1, 0]
    assert hardware.probe().gpus[0].name == "NVIDIA H100 80GB HBM3"


def test_a_gpu_nvml_cannot_describe_is_left_out_and_nvml_is_shut_down(monkeypatch):
    # stand-in for NVML on a two-GPU machine whose GPU 0 fell off the bus: what runs here is our handling of it
    calls = []
    fake = {"nvmlInit": lambda: calls.append("init"), "nvmlShutdown": lambda: calls.append("shutdown"),
            "nvmlDeviceGetCount": lambda: 2, "nvmlDeviceGetHandleByIndex": lost_if_zero,
            "nvmlDeviceGetName": lambda h: "NVIDIA H200", "nvmlDeviceGetCudaComputeCapability": lambda h: (9, 0),
            "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=143771 * 2**20)}
    for name, function in fake.items():
        monkeypatch.setattr(pynvml, name, function)
    assert hardware._gpus_from_nvml() == (hardware.GPUInfo(1, "NVIDIA H200", 140.4, (9, 0)),)
    assert calls == ["init", "shutdown"]


def lost_if_zero(index: int):
    if index == 0:
        raise pynvml.NVMLError(pynvml.NVML_ERROR_GPU_IS_LOST)
    return index
