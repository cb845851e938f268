"""What the model services' tests share: ``nimrag triton serve`` (a real Triton Inference Server, through PyTriton,
hosting nimrag's own CPU engines), which every service's Triton backend is tested against, and the test
cross-encoder it serves."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port, model_cache
from tests.services.rerank.conftest import build_cross_encoder

HOSTED = ("embed", "rerank", "tensorrt_llm", "ensemble")
LLM_SLOTS = 4


@dataclass
class TritonHost:
    process: subprocess.Popen
    grpc_port: int
    log_path: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def start_triton_host(tmp: Path, args: list[str], timeout_s: float = 300) -> TritonHost:
    """``nimrag triton serve`` in its own process group on free loopback ports, once all its models are ready."""
    import tritonclient.grpc as grpcclient

    grpc_port = free_port()
    log_path = tmp / f"triton-{grpc_port}.log"
    command = [sys.executable, "-m", "nimrag.cli", "triton", "serve", "--grpc-port", str(grpc_port),
               "--http-port", str(free_port()), "--metrics-port", str(free_port()),
               "--workspace", str(tmp / f"workspace-{grpc_port}"), *args]
    with log_path.open("wb") as out:
        process = subprocess.Popen(command, cwd=REPO, env={**os.environ, "NIM_CACHE_PATH": str(model_cache())},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    host = TritonHost(process, grpc_port, log_path)
    client = grpcclient.InferenceServerClient(host.url)
    deadline = time.monotonic() + timeout_s
    try:
        while process.poll() is None and time.monotonic() < deadline:
            with contextlib.suppress(Exception):
                if all(client.is_model_ready(name) for name in HOSTED):
                    return host
            time.sleep(0.5)
    finally:
        client.close()
    stop_triton_host(host)
    raise RuntimeError(f"nimrag triton serve did not get ready:\n{host.log()[-4000:]}")


def stop_triton_host(host: TritonHost) -> None:
    host.process.terminate()  # it stops Triton and its Python backend stubs itself
    try:
        host.process.wait(timeout=30)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(host.process.pid, signal.SIGKILL)  # whatever is left of its group
        host.process.wait()


@pytest.fixture(scope="session", params=["in-process", "triton"])
def backend(request) -> str:
    """The API tests that take it run on each backend: the engine in-process, and the same engine in Triton
    (``nimrag triton serve``) behind the service's gateway."""
    return request.param


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("models") / "minilm-cross-encoder")


@pytest.fixture(scope="session")
def triton_host(tmp_path_factory, cross_encoder_dir) -> Iterator[TritonHost]:
    """Everything nimrag can host: ``embed`` (the bundled MiniLM), ``rerank`` (the test cross-encoder; the
    late-interaction reranker uses ``embed``), ``tensorrt_llm`` and ``ensemble`` (the bundled SmolLM2 GGUF)."""
    pytest.importorskip("pytriton")
    pytest.importorskip("tritonclient.grpc")
    host = start_triton_host(tmp_path_factory.mktemp("triton"), ["--rerank-model", str(cross_encoder_dir),
                                                                 "--llm-slots", str(LLM_SLOTS)])
    try:
        yield host
    finally:
        stop_triton_host(host)
