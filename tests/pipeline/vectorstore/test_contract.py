"""The vector-store contract (nimrag.pipeline.vectorstore.base), the same tests on every backend: collections, atomic
document writes, dense and lexical search with filters, reads by id, errors, reopening, concurrent writers."""

from __future__ import annotations

import asyncio
import dataclasses
from datetime import datetime

import numpy as np
import pytest

from nimrag.pipeline.vectorstore import open_vector_store
from nimrag.pipeline.vectorstore.base import (
    CollectionClosed,
    CollectionExists,
    CollectionNotFound,
    CollectionOptions,
    DimensionMismatch,
    InvalidArgument,
    InvalidCollectionName,
    InvalidCollectionOptions,
    InvalidDocument,
    SearchHit,
    StoreError,
    VectorStore,
)
from tests.pipeline.vectorstore.helpers import (
    DIM,
    Written,
    assert_same_hits,
    check_source_filter,
    document,
    random_document,
    recall_at,
    unit_vectors,
)

pytestmark = pytest.mark.anyio


# --- collections ----------------------------------------------------------------------------------------------

async def test_create_list_open_delete(vector_store: VectorStore) -> None:
    docs = await vector_store.create("docs", DIM, metadata={"owner": "qa"})
    assert await vector_store.exists("docs") and (await vector_store.open("docs")).name == "docs"
    assert docs.dimension == DIM
    await docs.upsert_document(*random_document(np.random.default_rng(0), "a.txt", 3))
    await vector_store.create("graph", DIM, options=CollectionOptions(index="hnsw"))

    listed = {info.name: info for info in await vector_store.list()}
    assert sorted(listed) == ["docs", "graph"]
    assert (listed["docs"].dimension, listed["docs"].options.index, listed["docs"].documents, listed["docs"].chunks,
            listed["docs"].metadata) == (DIM, "flat", 1, 3, {"owner": "qa"})
    assert listed["graph"].options.index == "hnsw" and datetime.fromisoformat(listed["graph"].created).tzinfo
    assert await docs.info() == listed["docs"]

    await vector_store.delete("docs")
    assert not await vector_store.exists("docs")
    assert [info.name for info in await vector_store.list()] == ["graph"]
    with pytest.raises(CollectionNotFound):
        await vector_store.open("docs")
    again = await vector_store.create("docs", DIM)  # the same name again: a new, empty collection
    assert ((await again.info()).chunks, await again.list_documents()) == (0, [])


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "x" * 65, ".hidden", "a b", "-x", "a\\b", None])
async def test_invalid_collection_names_are_rejected(vector_store: VectorStore, name: object) -> None:
    for attempt in (lambda: vector_store.create(name, DIM), lambda: vector_store.open(name),
                    lambda: vector_store.delete(name), lambda: vector_store.exists(name)):
        with pytest.raises(InvalidCollectionName, match="invalid collection name"):
            await attempt()
    assert await vector_store.list() == []


async def test_longest_valid_name_and_bad_arguments(vector_store: VectorStore) -> None:
    assert (await vector_store.create("x" * 64, DIM)).name == "x" * 64
    assert (await vector_store.create("A0_.-z", DIM)).name == "A0_.-z"  # every character a name may hold
    with pytest.raises(InvalidCollectionOptions, match="index kind 'annoy' is not one of flat, hnsw, ivf"):
        await vector_store.create("bad-kind", DIM, options=CollectionOptions(index="annoy"))
    for dimension in (0, -3, 2.5, True):
        with pytest.raises(InvalidArgument, match="dimension must be a positive integer"):
            await vector_store.create("bad-dimension", dimension)
    with pytest.raises(InvalidArgument):
        await vector_store.create("bad-metadata", DIM, metadata={"when": object()})
    assert [info.name for info in await vector_store.list()] == ["A0_.-z", "x" * 64]


async def test_duplicate_and_unknown_collections(vector_store: VectorStore) -> None:
    await vector_store.create("docs", DIM)
    with pytest.raises(CollectionExists):
        await vector_store.create("docs", DIM)
    with pytest.raises(CollectionNotFound):
        await vector_store.open("nope")
    with pytest.raises(CollectionNotFound):
        await vector_store.delete("nope")
    assert issubclass(CollectionNotFound, StoreError) and issubclass(InvalidCollectionName, StoreError)


async def test_a_held_collection_fails_once_deleted(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(1)
    held = await vector_store.create("docs", DIM)
    await held.upsert_document(*random_document(rng, "a.txt", 3))
    assert len(await held.dense_search(unit_vectors(rng, 1)[0], 3)) == 3
    await vector_store.delete("docs")
    for call in (lambda: held.dense_search(unit_vectors(rng, 1)[0], 3), lambda: held.lexical_search("part", 3),
                 lambda: held.upsert_document(*random_document(rng, "b.txt", 1)), lambda: held.list_documents()):
        with pytest.raises(CollectionNotFound):
            await call()
    await vector_store.create("docs", DIM)
    assert await (await vector_store.open("docs")).list_documents() == []


async def test_collections_outlive_the_store_object(store_settings, vector_store: VectorStore) -> None:
    rng = np.random.default_rng(2)
    collection = await vector_store.create("docs", DIM, metadata={"owner": "qa"})
    for number in range(4):
        await collection.upsert_document(*random_document(rng, f"doc-{number}", 5))
    await collection.delete_document("doc-2")
    queries = unit_vectors(rng, 5)
    before = [await collection.dense_search(query, 10) for query in queries]
    info, lexical = await collection.info(), await collection.lexical_search("doc-1 part", 10)
    await vector_store.close()
    with pytest.raises(CollectionClosed):
        await collection.list_documents()

    reopened = open_vector_store(store_settings)
    try:
        again = await reopened.open("docs")
        assert await again.info() == info
        assert [await again.dense_search(query, 10) for query in queries] == before
        assert await again.lexical_search("doc-1 part", 10) == lexical
    finally:
        await reopened.close()


# --- writing --------------------------------------------------------------------------------------------------

async def test_upsert_added_unchanged_replaced(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(3)
    collection = await vector_store.create("docs", DIM)
    first = document("guide.md", ["alpha bravo", "charlie delta", "echo foxtrot"], unit_vectors(rng, 3))
    added = await collection.upsert_document(*first)
    assert (added.status, added.chunks, len(set(added.chunk_ids))) == ("added", 3, 3)
    assert await collection.document_hash("guide.md") == "guide.md@1"
    assert await collection.document_hash("other") is None

    unchanged = await collection.upsert_document(*first)
    assert (unchanged.status, unchanged.chunks, unchanged.chunk_ids) == ("unchanged", 3, ())

    second = document("guide.md", ["golf hotel", "india juliett"], unit_vectors(rng, 2), version="2")
    replaced = await collection.upsert_document(*second)
    assert (replaced.status, replaced.chunks) == ("replaced", 2)
    assert set(added.chunk_ids).isdisjoint(replaced.chunk_ids)
    assert await collection.get_chunks(added.chunk_ids) == []
    assert await collection.lexical_search("alpha charlie echo", 10) == []
    nearest = await collection.dense_search(first[2][0], 10)
    assert {hit.id for hit in nearest} == set(replaced.chunk_ids)  # the old chunks are gone from the index
    assert [hit.id for hit in await collection.lexical_search("golf", 10)] == [replaced.chunk_ids[0]]
    assert await collection.document_hash("guide.md") == "guide.md@2"

    forced = await collection.upsert_document(*second, force=True)
    assert (forced.status, forced.chunks) == ("replaced", 2)
    assert [info.chunks for info in await collection.list_documents()] == [2]


async def test_stored_chunks_round_trip(vector_store: VectorStore) -> None:
    collection = await vector_store.create("docs", DIM)
    parsed, chunks, vectors = document("a.pdf", ["one", "two"], unit_vectors(np.random.default_rng(4), 2))
    chunks[1] = dataclasses.replace(chunks[1], page=7, start=3, end=6, metadata={"lang": "fr", "n": [1, 2]})
    result = await collection.upsert_document(parsed, chunks, vectors, metadata={"path": "/x/a.pdf"},
                                              size_bytes=1234)
    unknown = max(result.chunk_ids) + 999_999
    stored = await collection.get_chunks([result.chunk_ids[1], unknown, result.chunk_ids[0], result.chunk_ids[1]])
    assert [item.chunk for item in stored] == [chunks[1], chunks[0]]
    assert [item.id for item in stored] == [result.chunk_ids[1], result.chunk_ids[0]]
    assert await collection.get_chunks([]) == []
    [info] = await collection.list_documents()
    assert (info.source, info.title, info.media_type, info.content_hash, info.chunks, info.bytes, info.metadata) == (
        "a.pdf", "A.Pdf", "text/plain", "a.pdf@1", 2, 1234, {"path": "/x/a.pdf"})
    assert datetime.fromisoformat(info.ingested_at).tzinfo
    other = await collection.upsert_document(*document("b.md", ["three"], unit_vectors(np.random.default_rng(5), 1)))
    assert (await collection.list_documents())[1].bytes == len("three")  # the pages' UTF-8 size by default
    assert other.status == "added"


async def test_stored_vectors_come_back_in_the_order_asked(vector_store: VectorStore) -> None:
    collection = await vector_store.create("docs", DIM)
    vectors = unit_vectors(np.random.default_rng(6), 2)
    result = await collection.upsert_document(*document("a.md", ["one", "two"], vectors))
    unknown = max(result.chunk_ids) + 999_999
    got = await collection.get_vectors([result.chunk_ids[1], unknown, result.chunk_ids[0]])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, np.stack([vectors[1], np.zeros(DIM, np.float32), vectors[0]]))


async def test_delete_document_and_list(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(7)
    collection = await vector_store.create("docs", DIM)
    results = {name: await collection.upsert_document(*random_document(rng, name, 4)) for name in ("c", "a", "b")}
    assert await collection.delete_document("b") is True
    assert await collection.delete_document("b") is False
    assert await collection.delete_document("never") is False
    assert [info.source for info in await collection.list_documents()] == ["a", "c"]
    assert await collection.get_chunks(results["b"].chunk_ids) == []
    assert await collection.lexical_search("b part", 20, sources=["b"]) == []
    everything = await collection.dense_search(unit_vectors(rng, 1)[0], 100)
    assert {hit.id for hit in everything} == set(results["a"].chunk_ids) | set(results["c"].chunk_ids)
    assert ((await collection.info()).documents, (await collection.info()).chunks) == (2, 8)


async def test_invalid_writes_change_nothing(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(8)
    collection = await vector_store.create("docs", DIM)
    parsed, chunks, vectors = random_document(rng, "a", 3)
    await collection.upsert_document(parsed, chunks, vectors)
    before = (await collection.info(), await collection.list_documents())
    changed = dataclasses.replace(parsed, content_hash="new")
    cases = [
        (DimensionMismatch, (changed, chunks, unit_vectors(rng, 3, DIM + 1))),
        (InvalidDocument, (changed, chunks, vectors[:2])),
        (InvalidDocument, (changed, [dataclasses.replace(chunks[0], source="b"), *chunks[1:]], vectors)),
        (InvalidDocument, (changed, [chunks[0], chunks[0], chunks[2]], vectors)),
        (InvalidDocument, (changed, chunks, np.full((3, DIM), np.nan, dtype=np.float32))),
    ]
    for error, arguments in cases:
        with pytest.raises(error):
            await collection.upsert_document(*arguments)
    with pytest.raises(InvalidArgument):
        await collection.upsert_document(changed, chunks, vectors, metadata={"when": object()})
    with pytest.raises(DimensionMismatch):
        await collection.dense_search(np.ones(DIM + 1, dtype=np.float32), 3)
    with pytest.raises(InvalidArgument):
        await collection.dense_search(np.full(DIM, np.inf, dtype=np.float32), 3)
    assert (await collection.info(), await collection.list_documents()) == before
    assert await collection.document_hash("a") == parsed.content_hash


async def test_concurrent_writers_each_land_whole(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(9)
    collection = await vector_store.create("busy", DIM)
    items = [random_document(rng, f"doc-{n:02d}", 1 + n % 5) for n in range(24)]
    results = await asyncio.gather(*(collection.upsert_document(*item) for item in items))
    assert {r.status for r in results} == {"added"}
    ids = [i for r in results for i in r.chunk_ids]
    assert len(set(ids)) == len(ids) == sum(1 + n % 5 for n in range(24))
    searches = await asyncio.gather(*(collection.dense_search(v, 1) for item in items for v in item[2]))
    assert [hits[0].id for hits in searches] == ids  # each vector finds its own chunk
    assert [info.source for info in await collection.list_documents()] == [item[0].source for item in items]


# --- searching ------------------------------------------------------------------------------------------------

async def test_flat_search_is_exact(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(10)
    collection = await vector_store.create("docs", DIM)
    written = Written()
    await written.fill(collection, rng, documents=30, chunks=10)
    for query in unit_vectors(rng, 20):
        hits = await collection.dense_search(query, 10)
        assert all(isinstance(hit, SearchHit) for hit in hits)
        assert_same_hits(hits, written.exact(query, 10))
    assert_same_hits(await collection.dense_search(query[None, :], 3), written.exact(query, 3))  # (1, dim) too
    assert len(await collection.dense_search(unit_vectors(rng, 1)[0], 1000)) == 300
    assert await collection.dense_search(unit_vectors(rng, 1)[0], 0) == []


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
async def test_approximate_indexes_recall(vector_store: VectorStore, kind: str) -> None:
    rng = np.random.default_rng(11)
    collection = await vector_store.create(kind, DIM, options=CollectionOptions(index=kind))
    written = Written()
    await written.fill(collection, rng, documents=20, chunks=100)
    assert await recall_at(collection, written, unit_vectors(rng, 50), 10) >= 0.9


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
async def test_source_filter(vector_store: VectorStore, kind: str) -> None:
    collection = await vector_store.create(kind, DIM, options=CollectionOptions(index=kind))
    await check_source_filter(collection, np.random.default_rng(12), exact=kind == "flat")


async def test_a_source_given_as_a_string_is_one_source(vector_store: VectorStore) -> None:
    rng = np.random.default_rng(13)
    collection = await vector_store.create("docs", DIM)
    kept = await collection.upsert_document(*random_document(rng, "kept.md", 3))
    await collection.upsert_document(*random_document(rng, "other.md", 3))
    query = unit_vectors(rng, 1)[0]
    assert {i for i, _ in await collection.dense_search(query, 10, sources="kept.md")} == set(kept.chunk_ids)
    assert {i for i, _ in await collection.lexical_search("part", 10, sources="kept.md")} == set(kept.chunk_ids)


async def test_lexical_search_leaves_out_stop_words(vector_store: VectorStore) -> None:
    collection = await vector_store.create("docs", DIM)
    texts = ["The kettle is on the table.", "It is what it is, and that is that.", "A kettle boils water."]
    result = await collection.upsert_document(*document("k.md", texts, unit_vectors(np.random.default_rng(14), 3)))
    assert {i for i, _ in await collection.lexical_search("is that the kettle", 10)} == {result.chunk_ids[0],
                                                                                        result.chunk_ids[2]}
    # A query of stop words only still searches with them.
    assert (await collection.lexical_search("it is that", 10))[0].id == result.chunk_ids[1]


async def test_lexical_search_ranks_matching_chunk_first(vector_store: VectorStore) -> None:
    collection = await vector_store.create("docs", DIM)
    texts = ["Solar panels convert sunlight into electricity with good efficiency.",
             "Wind turbines spin in the wind.",
             "Electricity prices rise in winter.",
             "Panels of judges decide quickly."]
    result = await collection.upsert_document(*document("energy.md", texts,
                                                        unit_vectors(np.random.default_rng(15), 4)))
    hits = await collection.lexical_search("solar panel efficiency", 10)
    assert hits[0].id == result.chunk_ids[0]
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    assert {i for i, _ in hits} == {result.chunk_ids[0], result.chunk_ids[3]}  # "panels" stems to "panel"
    assert (await collection.lexical_search("ELECTRICITY", 10, sources=["energy.md"]))[0].id in result.chunk_ids
    assert await collection.lexical_search("solar", 0) == []


@pytest.mark.parametrize("query", ['"', "*", "AND", "(", "a AND (b", 'NEAR(wind "', "text:wind", "wind*", "-wind",
                                   "^wind", "OR OR", "NOT", "'; DROP TABLE chunks; --", "", "   ", "!!!"])
async def test_lexical_search_takes_any_text(vector_store: VectorStore, query: str) -> None:
    collection = await vector_store.create("docs", DIM)
    await collection.upsert_document(*document("a", ["wind and text", "not this"],
                                               unit_vectors(np.random.default_rng(16), 2)))
    hits = await collection.lexical_search(query, 5)
    assert isinstance(hits, list)
    if not query.strip() or query == "!!!":
        assert hits == []
    assert (await collection.info()).chunks == 2
