"""The whole store contract suite again on the Milvus backend's two other paths: through a Milvus server over
gRPC (``milvus-lite server``, as replicas share one) and with the lexical search the pipeline computes (sparse
vectors, for servers without BM25). tests/pipeline/vectorstore/test_contract.py runs it on Milvus Lite embedded."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore import open_vector_store
from tests.pipeline.vectorstore.test_contract import *  # noqa: F403 - every contract test, collected here again

VARIANTS = ["milvus-server", "milvus-sparse"]


async def _delete_everything(settings: PipelineSettings) -> None:
    store = open_vector_store(settings)
    try:
        for info in await store.list():
            await store.delete(info.name)
    finally:
        await store.close()


@pytest.fixture(params=VARIANTS)
def store_backend(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture
def store_settings(store_backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[PipelineSettings]:
    if store_backend == "milvus-sparse":
        yield PipelineSettings(data_path=tmp_path, vector_store="milvus", milvus_lexical="sparse")
        return
    settings = PipelineSettings(data_path=tmp_path, vector_store="milvus",
                                milvus_uri=request.getfixturevalue("milvus_server"))
    yield settings
    asyncio.run(_delete_everything(settings))  # the server outlives the test: leave it empty for the next
