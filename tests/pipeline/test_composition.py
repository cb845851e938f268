"""The composition root: the app works through the collaborators it is given (here a store of the test's own,
with no model service running), and the routes reach the store through the service only."""

from __future__ import annotations

import asyncio
from functools import partial
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient

from nimrag.pipeline.app import build_service, create_app
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore.base import CollectionOptions
from nimrag.pipeline.vectorstore.faiss import FaissVectorStore
from tests.pipeline.vectorstore.helpers import document, unit_vectors

NOWHERE = "http://127.0.0.1:9/v1"  # no service answers here: nothing below may need one


async def given_store(root: Path) -> FaissVectorStore:
    store = FaissVectorStore(root, use_gpu=False)
    collection = await store.create("given", 16, options=CollectionOptions(index="hnsw"), metadata={"by": "test"})
    texts = ["The kettle is blue.", "The teapot is green."]
    await collection.upsert_document(*document("kitchen.md", texts, unit_vectors(np.random.default_rng(0), 2)))
    return store


def test_the_app_serves_the_store_it_is_given(tmp_path: Path) -> None:
    store = asyncio.run(given_store(tmp_path / "given-store"))
    settings = PipelineSettings(data_path=tmp_path / "data", embed_url=NOWHERE, rerank_url=NOWHERE, llm_url=NOWHERE)
    with TestClient(create_app(settings, build=partial(build_service, store=store))) as client:
        listed = client.get("/v1/collections").json()
        assert listed["total_collections"] == 1
        [given] = listed["collections"]
        assert list(given) == ["name", "dimension", "index_kind", "documents", "chunks", "created", "metadata"]
        assert (given["name"], given["dimension"], given["index_kind"], given["documents"], given["chunks"],
                given["metadata"]) == ("given", 16, "hnsw", 1, 2, {"by": "test"})

        documents = client.get("/v1/documents", params={"collection_name": "given"}).json()
        assert [d["source"] for d in documents["documents"]] == ["kitchen.md"]
        found = client.post("/v1/search", json={"query": "blue kettle", "collection_name": "given",
                                                "search_mode": "lexical", "enable_reranker": False}).json()
        assert [r["content"] for r in found["results"]] == ["The kettle is blue."]

        missing = client.get("/v1/documents", params={"collection_name": "other"})
        assert (missing.status_code, missing.json()["error"]["code"]) == (404, "collection_not_found")
        deleted = client.delete("/v1/documents", params={"collection_name": "given",
                                                         "document_names": ["kitchen.md", "nope.md"]}).json()
        assert (deleted["deleted"], deleted["not_found"]) == (["kitchen.md"], ["nope.md"])
    assert not (tmp_path / "data" / "collections").exists()  # the default store was never built
