"""Shared fixtures: real services started as processes on loopback, the way users start them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from nimrag.platform import Platform

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class ServiceProcess:
    name: str
    port: int
    process: subprocess.Popen
    log_path: Path
    ready_statuses: list[int] = field(default_factory=list)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, needle: str, timeout_s: float = 5) -> str:
        """The log once it contains ``needle``: lines written after a response has gone out may trail it."""
        deadline = time.monotonic() + timeout_s
        while needle not in (text := self.log()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(service: str, tmp_dir: Path, env: dict[str, str] | None = None, args: list[str] | None = None,
                  wait_ready: bool = True, timeout_s: float = 180) -> ServiceProcess:
    """Start ``nimrag serve <service>`` on a free loopback port and (optionally) wait for /v1/health/ready."""
    port = free_port()
    log_path = tmp_dir / f"{service}-{port}.log"
    full_env = {**os.environ, "NIM_CACHE_PATH": str(model_cache()), **(env or {})}
    process = subprocess.Popen([sys.executable, "-m", "nimrag.cli", "serve", service, "--port", str(port),
                                *(args or [])], cwd=REPO, env=full_env, stdout=log_path.open("wb"),
                               stderr=subprocess.STDOUT)
    svc = ServiceProcess(service, port, process, log_path)
    if wait_ready:
        wait_until_ready(svc, timeout_s)
    return svc


def sigkill_mid_upload(pipeline: ServiceProcess, task_id: str, files_done: int, status_url: str | None = None,
                       timeout_s: float = 240) -> None:
    """SIGKILL ``pipeline`` once its upload ``task_id`` reports ``files_done`` files done (read at ``status_url``,
    another replica's, or its own)."""
    url = (status_url or pipeline.base_url) + "/v1/status"
    deadline = time.monotonic() + timeout_s
    try:
        while httpx.get(url, params={"task_id": task_id}).json()["progress"]["files_done"] < files_done:
            assert time.monotonic() < deadline, f"task {task_id} did not reach {files_done} files"
            time.sleep(0.1)
        os.kill(pipeline.process.pid, signal.SIGKILL)
        pipeline.process.wait()
    finally:
        pipeline.stop()


def wait_until_ready(svc: ServiceProcess, timeout_s: float = 180, health: str = "/v1/health/ready") -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if svc.process.poll() is not None:
            raise RuntimeError(f"{svc.name} exited with {svc.process.returncode}:\n{svc.log()[-4000:]}")
        try:
            status = httpx.get(svc.base_url + health, timeout=2).status_code
            svc.ready_statuses.append(status)
            if status == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    svc.stop()
    raise TimeoutError(f"{svc.name} not ready after {timeout_s} s:\n{svc.log()[-4000:]}")


def model_cache() -> Path:
    """One exported-model cache for the whole test run (exports take seconds; do them once)."""
    path = Path(os.environ.get("NIMRAG_TEST_CACHE", REPO / ".cache" / "test-models"))
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="session")
def service_tmp(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("services")


@pytest.fixture(scope="session")
def embed_service(service_tmp) -> Iterator[ServiceProcess]:
    """The embedding service with its defaults: the bundled model and the auto-selected profile."""
    svc = start_service("embed", service_tmp)
    yield svc
    svc.stop()


UPLOAD_LIMIT = 2 * 1024 * 1024  # the platform's pipeline body limit
ADMIN_KEY = "test-admin-key"  # lets tests edit guardrails policies


@pytest.fixture(scope="session")
def platform(tmp_path_factory) -> Iterator[Platform]:
    """The whole platform as ``nimrag up`` runs it: embed, rerank, LLM and pipeline processes on loopback."""
    data = tmp_path_factory.mktemp("pipeline-data")
    ports = {name: free_port() for name in ("embed", "rerank", "llm", "pipeline")}
    running = Platform(ports=ports, json_logs=True, env={
        "NIMRAG_PIPELINE_DATA_PATH": str(data), "NIM_CACHE_PATH": str(model_cache()),
        "NIMRAG_PIPELINE_MAX_BODY_BYTES": str(UPLOAD_LIMIT), "NIMRAG_PIPELINE_ADMIN_API_KEY": ADMIN_KEY})
    running.data_path = Path(data)
    try:
        running.start(timeout_s=300)
        yield running
    finally:
        running.stop()
