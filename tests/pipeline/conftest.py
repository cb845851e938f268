from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from nimrag.platform import Platform
from tests.conftest import free_port, model_cache

UPLOAD_LIMIT = 2 * 1024 * 1024
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


def pipeline_url(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.ports['pipeline']}"
