"""The ingestor's shared embedding requests, against the platform's real embedding service."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nimrag.pipeline.clients import DependencyRefused, ServiceClients
from nimrag.pipeline.ingest import PassageBatcher
from nimrag.pipeline.settings import PipelineSettings

DOCUMENTS = [[f"Document {d} says the kettle number {d * 7 + k} is blue." for k in range(1 + d % 3)]
             for d in range(24)]


@pytest.fixture
def settings(platform) -> PipelineSettings:
    return PipelineSettings(embed_url=f"http://127.0.0.1:{platform.ports['embed']}/v1")


def run_documents(settings: PipelineSettings, slots: int, batch_size: int, documents, compare: bool) -> tuple:
    """Each document's vectors (or error) through one batcher, all documents at once; the request sizes it sent;
    with ``compare``, each document embedded alone."""
    async def run():
        clients = ServiceClients(settings)
        sizes: list[int] = []

        async def embed(texts: list[str]) -> np.ndarray:
            sizes.append(len(texts))
            return await clients.embed(texts, "passage")

        batcher = PassageBatcher(embed, batch_size, slots)
        try:
            shared = await asyncio.gather(*(batcher.embed(texts) for texts in documents), return_exceptions=True)
            alone = [await clients.embed(texts, "passage") for texts in documents] if compare else []
            return shared, sizes, alone
        finally:
            await batcher.close()
            await clients.close()

    return asyncio.run(run())


def test_each_document_gets_its_own_vectors_from_shared_requests(settings):
    shared, sizes, alone = run_documents(settings, slots=2, batch_size=16, documents=DOCUMENTS, compare=True)
    for texts, got in zip(DOCUMENTS, shared, strict=True):
        assert got.shape == (len(texts), alone[0].shape[1])
    # int8 results shift slightly with the batch they ran in: each passage's vector must match its own
    # embedding, alone, best of all passages.
    got, expected = np.concatenate(shared), np.concatenate(alone)
    similarity = got @ expected.T
    assert (similarity.argmax(axis=1) == np.arange(len(got))).all()
    assert similarity.diagonal().min() > 0.99
    passages = sum(len(d) for d in DOCUMENTS)
    assert sum(sizes) == passages and max(sizes) <= 16
    # The first two requests leave at once with what was waiting; the rest gather while those run.
    assert len(sizes) < len(DOCUMENTS) / 2, sizes


def test_a_failed_request_fails_its_documents_and_nothing_hangs(settings):
    # The embedding service refuses an empty input (400): the documents sharing that request get its error.
    documents = [["a fine passage"], ["", "x"], ["another fine passage"]]
    shared, sizes, _ = run_documents(settings, slots=1, batch_size=64, documents=documents, compare=False)
    assert shared[0].shape[0] == 1  # sent alone, before the others arrived
    assert isinstance(shared[1], DependencyRefused) and isinstance(shared[2], DependencyRefused)
    assert shared[1].status_code == 400
    assert sizes == [1, 3]
