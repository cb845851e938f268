"""The nimrag command as users run it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from tests.conftest import REPO


def nimrag(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "nimrag.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, **(env or {})}, timeout=timeout)


def test_profiles_list_shows_compatible_and_incompatible_with_reasons():
    out = nimrag("profiles", "list", "--service", "embed")
    assert out.returncode == 0, out.stderr
    assert "[embed] selected:" in out.stdout and "torch-cpu-fp32" in out.stdout
    as_json = json.loads(nimrag("profiles", "list", "--service", "embed", "--json").stdout)
    embed = as_json["services"]["embed"]
    ids = [p["id"] for p in embed["compatible"]] + [p["id"] for p in embed["incompatible"]]
    assert "torch-cuda-fp16" in ids and "torch-cpu-fp32" in ids
    assert embed["selected"] == embed["compatible"][0]["id"]
    assert all(p["reasons"] for p in embed["incompatible"])


def test_pinned_profile_shows_in_the_listing():
    out = nimrag("profiles", "list", "--service", "embed", "--json", env={"NIM_MODEL_PROFILE": "torch-cpu-fp32"})
    assert json.loads(out.stdout)["services"]["embed"]["selected"] == "torch-cpu-fp32"


def test_pinning_an_unknown_or_incompatible_profile_fails_at_start_with_the_reason():
    unknown = nimrag("serve", "embed", "--port", "1", env={"NIM_MODEL_PROFILE": "warp-drive"})
    assert unknown.returncode == 2 and "Unknown profile 'warp-drive'" in unknown.stderr
    import torch

    if not torch.cuda.is_available():
        gpu = nimrag("serve", "embed", "--port", "1", "--profile", "torch-cuda-fp16")
        assert gpu.returncode == 2 and "cannot run on this machine" in gpu.stderr


def test_serving_a_folder_that_is_not_a_model_fails_clearly(tmp_path):
    out = nimrag("serve", "embed", "--port", "1", "--model", str(tmp_path))
    assert out.returncode == 2 and "is not a model folder" in out.stderr


def test_rerank_profiles_never_pick_int8_on_their_own():
    listing = json.loads(nimrag("profiles", "list", "--service", "rerank", "--json").stdout)["services"]["rerank"]
    assert listing["selected"] != "onnx-cpu-int8"
    assert [p["id"] for p in listing["compatible"]][-1] == "onnx-cpu-int8"  # still there to pin


def test_reranking_with_a_folder_that_is_not_a_model_fails_clearly(tmp_path):
    out = nimrag("serve", "rerank", "--port", "1", "--model", str(tmp_path))
    assert out.returncode == 2 and "cannot read config.json" in out.stderr
