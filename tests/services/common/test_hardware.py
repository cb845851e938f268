from __future__ import annotations

import os
import stat

from services.common import hardware


def test_probe_describes_this_machine():
    hw = hardware.probe()
    assert hw.logical_cores >= 1 and 1 <= hw.physical_cores <= hw.logical_cores
    assert hw.memory_gib > 0
    assert isinstance(hw.as_dict()["cpu_flags"], list)


def test_nvidia_smi_output_is_parsed_and_cuda_visible_devices_honoured(tmp_path, monkeypatch):
    """Without NVML, GPUs are read from nvidia-smi's CSV (this stands in for the real tool's output format)."""
    tool = tmp_path / "nvidia-smi"
    tool.write_text("#!/bin/sh\nprintf '0, NVIDIA H100 80GB HBM3, 81559, 9.0\\n1, NVIDIA H100 80GB HBM3, 81559, 9.0\\n'\n")
    tool.chmod(tool.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{tmp_path}{os.pathsep}{os.environ['PATH']}")
    gpus = hardware._gpus_from_nvidia_smi()
    assert [(g.index, g.name, g.memory_gib, g.compute_capability) for g in gpus] == [
        (0, "NVIDIA H100 80GB HBM3", 79.6, (9, 0)), (1, "NVIDIA H100 80GB HBM3", 79.6, (9, 0))]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    assert [g.index for g in hardware._visible(gpus)] == [1]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert hardware._visible(gpus) == ()
