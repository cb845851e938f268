from __future__ import annotations

import json

import pytest

from nimrag.services.common.errors import StartupError
from nimrag.services.llm.model import DEFAULT_MODEL_NAME, default_model_path, load_model_info
from nimrag.services.llm.settings import LLMSettings


def test_default_model_is_the_bundled_gguf():
    info = load_model_info(LLMSettings())
    assert info.name == DEFAULT_MODEL_NAME and info.format == "gguf" and info.quantization == "q4_1"
    assert info.path == default_model_path() and 100e6 < info.parameters < 200e6  # 135M, estimated


def test_served_name_and_folder_holding_a_gguf(tmp_path):
    (tmp_path / "model.Q4_1.gguf").symlink_to(default_model_path())
    info = load_model_info(LLMSettings(model=str(tmp_path), served_model_name="mine"))
    assert info.format == "gguf" and info.name == "mine" and info.path.name == "model.Q4_1.gguf"


def test_hugging_face_folder_size_from_weights(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"torch_dtype": "bfloat16"}))
    (tmp_path / "model.safetensors").write_bytes(b"\0" * 2000)
    info = load_model_info(LLMSettings(model=str(tmp_path)))
    assert info.format == "hf" and info.quantization == "bf16" and info.parameters == 1000
    assert info.name == tmp_path.name


@pytest.mark.parametrize("setup,needle", [
    (lambda p: p / "missing.gguf", "does not exist"),
    (lambda p: (p / "notes.txt").write_text("x") and p / "notes.txt", "not a .gguf file"),
    (lambda p: p, "config.json"),
    (lambda p: (p / "config.json").write_text("{}") and p, r"no \*\.safetensors"),
])
def test_bad_model_paths_fail_at_start(tmp_path, setup, needle):
    with pytest.raises(StartupError, match=needle):
        load_model_info(LLMSettings(model=str(setup(tmp_path))))
