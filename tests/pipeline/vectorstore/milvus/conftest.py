"""A real Milvus server for the Milvus backend's tests: ``milvus-lite server`` on a loopback port, as pipeline
replicas share one (a Milvus Lite file serves one process only)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.conftest import free_port
from tests.servers import start_milvus_lite_server, stop_process


@pytest.fixture(scope="module")
def milvus_server(tmp_path_factory) -> Iterator[str]:
    """The URL of a Milvus Lite server that the module's tests share."""
    root = tmp_path_factory.mktemp("milvus-server")
    port = free_port()
    process = start_milvus_lite_server(root / "data", port)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        stop_process(process)
