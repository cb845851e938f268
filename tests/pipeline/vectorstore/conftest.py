"""The store contract suite runs once per backend: ``store_backend`` names it, ``vector_store`` is a fresh
store of that backend built the way the pipeline builds it (nimrag.pipeline.vectorstore.open_vector_store)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore import VectorStore, open_vector_store

STORE_BACKENDS = ["faiss", "milvus"]  # a backend joins the contract suite with its name here (settings below)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(params=STORE_BACKENDS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_settings(store_backend: str, tmp_path: Path) -> PipelineSettings:
    """Settings for a store of its own under ``tmp_path`` (a backend with a server adds its address here)."""
    return PipelineSettings(data_path=tmp_path, vector_store=store_backend)


@pytest.fixture
async def vector_store(anyio_backend: str, store_settings: PipelineSettings) -> AsyncIterator[VectorStore]:
    store = open_vector_store(store_settings)
    try:
        yield store
    finally:
        await store.close()
