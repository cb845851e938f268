"""What the Milvus backend adds to the contract, on a real Milvus Lite: replicas sharing a server, writes killed
half-way (SIGKILL) that stay invisible and are swept, a server that goes away, a file two processes want, the
name mapping, filter literals, and the analyzer that makes BM25 rank alike on every Milvus."""

from __future__ import annotations

import dataclasses
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from nimrag.pipeline.vectorstore.base import CollectionNotFound, StoreUnavailable
from nimrag.pipeline.vectorstore.milvus import MilvusVectorStore, analyzer
from nimrag.pipeline.vectorstore.milvus.collection import VERSIONS
from nimrag.pipeline.vectorstore.milvus.names import (
    CHUNKS,
    DOCUMENTS,
    literal,
    logical_name,
    physical_name,
)
from tests.conftest import REPO, free_port
from tests.pipeline.vectorstore.helpers import (
    DIM,
    document,
    random_document,
    unit_vectors,
)
from tests.servers import start_milvus_lite_server, stop_process

pytestmark = pytest.mark.anyio
CRASH_CHILD = "import sys; from tests.pipeline.vectorstore.milvus.test_milvus import crash; crash(*sys.argv[1:])"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


def raw_chunks(store: MilvusVectorStore, collection) -> int:
    """Chunks stored, visible or not: what a test needs to see that hidden rows exist, then that they went."""
    [row] = store._connected().call("count", "query", collection.chunks_collection, filter="",
                                    output_fields=["count(*)"])
    return row["count(*)"]


# --- replicas -------------------------------------------------------------------------------------------------

async def test_two_stores_on_one_server_see_each_others_writes(milvus_server: str) -> None:
    rng = np.random.default_rng(20)
    first, second = MilvusVectorStore(milvus_server), MilvusVectorStore(milvus_server)
    try:
        written = await (await first.create("shared", DIM)).upsert_document(*random_document(rng, "a.md", 4))
        through_second = await second.open("shared")
        assert [info.source for info in await through_second.list_documents()] == ["a.md"]
        [probe] = (await through_second.get_chunks(written.chunk_ids[:1]))
        hits = await through_second.dense_search(await through_second.get_vectors([probe.id]), 1)
        assert hits[0].id == probe.id
        assert {hit.id for hit in await through_second.lexical_search("a.md part", 10)} == set(written.chunk_ids)

        assert await through_second.delete_document("a.md") is True
        held = await first.open("shared")
        assert await held.list_documents() == [] and await held.dense_search(unit_vectors(rng, 1)[0], 5) == []

        await second.delete("shared")  # the first store still holds the collection: the server says it is gone
        with pytest.raises(CollectionNotFound):
            await held.dense_search(unit_vectors(rng, 1)[0], 5)
        with pytest.raises(CollectionNotFound):
            await first.open("shared")
        again = await second.create("shared", DIM + 2)  # another incarnation, another dimension
        assert (await first.open("shared")).dimension == DIM + 2 and again.dimension == DIM + 2
        await first.delete("shared")
    finally:
        await first.close()
        await second.close()


# --- writes killed half-way -----------------------------------------------------------------------------------

def crash(path: str, step: str) -> None:
    """Run in a child: write a.md (version 1) whole, then die by SIGKILL inside a write: after inserting the
    chunks of version 2 but before its commit ("upsert"), or after hiding a.md but before deleting it ("delete")."""
    import asyncio

    async def run() -> None:
        store = MilvusVectorStore(path)
        collection = await store.create("docs", DIM)
        await collection.upsert_document(*document("a.md", ["alpha one", "alpha two"], unit_vectors(rng, 2)))
        record = collection._record("a.md")
        if step == "upsert":
            parsed, chunks, vectors = document("a.md", ["bravo three", "bravo four", "bravo five"],
                                               unit_vectors(rng, 3), version="2")
            version = VERSIONS.next()
            collection._put_record({**record, "pending": version})
            collection._insert_chunks(collection._chunk_rows(parsed, chunks, vectors), version)
        else:
            collection._put_record({**record, "deleting": True})
        os.kill(os.getpid(), signal.SIGKILL)

    rng = np.random.default_rng(21)
    asyncio.run(run())


def run_crash(path, step: str) -> None:
    child = subprocess.run([sys.executable, "-c", CRASH_CHILD, str(path), step], cwd=REPO, capture_output=True,
                           timeout=300)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]


async def test_a_write_killed_before_its_commit_stays_invisible_and_is_swept(tmp_path) -> None:
    path = tmp_path / "crash.db"
    run_crash(path, "upsert")
    store = MilvusVectorStore(path)
    try:
        collection = await store.open("docs")
        assert raw_chunks(store, collection) == 5  # version 2's three chunks are stored, uncommitted
        [info] = await collection.list_documents()
        assert (info.content_hash, info.chunks) == ("a.md@1", 2)
        assert await collection.lexical_search("bravo", 10) == []
        hits = await collection.dense_search(unit_vectors(np.random.default_rng(0), 1)[0], 10)
        assert sorted(c.chunk.text for c in await collection.get_chunks([h.id for h in hits])) == ["alpha one",
                                                                                                  "alpha two"]
        assert (await collection.info()).chunks == 2

        collection.sweep(stale_after_ns=0)  # the write is known dead: remove what it left
        assert raw_chunks(store, collection) == 2 and collection._record("a.md")["pending"] == 0
        replaced = await collection.upsert_document(*document("a.md", ["charlie"], unit_vectors(
            np.random.default_rng(1), 1), version="3"))
        assert replaced.status == "replaced" and raw_chunks(store, collection) == 1
    finally:
        await store.close()


async def test_a_delete_killed_half_way_is_finished_when_the_collection_opens(tmp_path) -> None:
    path = tmp_path / "crash.db"
    run_crash(path, "delete")
    store = MilvusVectorStore(path)
    try:
        collection = await store.open("docs")  # opening sweeps: the delete marked is finished
        assert await collection.list_documents() == [] and await collection.document_hash("a.md") is None
        assert raw_chunks(store, collection) == 0 and collection._record("a.md") is None
        assert await collection.lexical_search("alpha", 10) == []
    finally:
        await store.close()


async def test_a_pending_write_of_another_replica_is_left_alone(tmp_path) -> None:
    store = MilvusVectorStore(tmp_path / "m.db")
    try:
        collection = await store.create("docs", DIM)
        parsed, chunks, vectors = random_document(np.random.default_rng(22), "a.md", 3)
        version = VERSIONS.next()
        collection._put_record({"source": "a.md", "title": "", "media_type": "", "content_hash": "", "chunks": 0,
                                "bytes": 0, "ingested_at": "", "metadata": {}, "version": 0, "pending": version,
                                "deleting": False})
        collection._insert_chunks(collection._chunk_rows(parsed, chunks, vectors), version)
        collection.sweep()  # pending for less than an hour: it may still be running elsewhere
        assert raw_chunks(store, collection) == 3 and await collection.list_documents() == []
        assert await collection.delete_document("a.md") is False  # not a document until committed
    finally:
        await store.close()


# --- a server that goes away, a file that is taken -------------------------------------------------------------

async def test_a_server_that_is_down_is_store_unavailable(tmp_path) -> None:
    port = free_port()
    server = start_milvus_lite_server(tmp_path / "data", port)
    store = MilvusVectorStore(f"http://127.0.0.1:{port}", timeout_s=5)
    try:
        collection = await store.create("docs", DIM)
        await collection.upsert_document(*random_document(np.random.default_rng(23), "a.md", 2))
        stop_process(server)
        with pytest.raises(StoreUnavailable, match="Milvus"):
            await collection.dense_search(unit_vectors(np.random.default_rng(0), 1)[0], 3)
        with pytest.raises(StoreUnavailable):
            await store.list()
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await MilvusVectorStore(f"http://127.0.0.1:{port}", timeout_s=5).open("docs")


async def test_a_file_held_by_another_process_is_store_unavailable(tmp_path) -> None:
    path = tmp_path / "held.db"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pymilvus import MilvusClient; "
                               "MilvusClient(uri=sys.argv[1]); print('open', flush=True); time.sleep(300)",
                               str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert holder.stdout.readline() == b"open\n"
        with pytest.raises(StoreUnavailable, match="another process"):
            await MilvusVectorStore(path).list()
    finally:
        holder.kill()
        holder.wait()


def test_a_uri_that_is_neither_file_nor_server_is_refused() -> None:
    with pytest.raises(ValueError, match="neither a Milvus Lite file"):
        MilvusVectorStore("ftp://example.com/x")


# --- names, literals, analysis --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["default", "A0_.-z", "9lives", "_u", "a__b", "x" * 64, "a.b-c_d"])
def test_collection_names_map_one_to_one(name: str) -> None:
    for kind in (CHUNKS, DOCUMENTS):
        physical = physical_name(name, kind)
        assert physical.replace("_", "").isalnum() and not physical[0].isdigit() and len(physical) <= 255
        assert logical_name(physical, kind) == name
    assert physical_name(name, CHUNKS) != physical_name(name, DOCUMENTS)
    assert logical_name(physical_name(name, CHUNKS), DOCUMENTS) is None


def test_names_not_ours_are_not_read_as_collections() -> None:
    assert [logical_name(name, DOCUMENTS) for name in ("other", "nimrag_d_", "nimrag_d_a_zb", "nimrag_c_docs")] == [
        None, None, None, None]


def test_literals_quote_every_character() -> None:
    assert literal('a"b\\c\n\t') == '"a\\"b\\\\c\\n\\t"'


async def test_sources_with_quotes_and_backslashes_filter_exactly(tmp_path) -> None:
    rng = np.random.default_rng(24)
    store = MilvusVectorStore(tmp_path / "m.db")
    try:
        collection = await store.create("docs", DIM)
        odd = ['say "hi".md', "back\\slash.txt", "it's.md", 'x" or source != "y', "ünï cödé.md"]
        written = {source: await collection.upsert_document(*random_document(rng, source, 2)) for source in odd}
        for source in odd:
            got = await collection.dense_search(unit_vectors(rng, 1)[0], 10, sources=source)
            assert {hit.id for hit in got} == set(written[source].chunk_ids)
        assert await collection.delete_document('x" or source != "y') is True
        assert sorted(info.source for info in await collection.list_documents()) == sorted(odd[:3] + odd[4:])
    finally:
        await store.close()


def test_the_analyzer_stems_folds_and_drops_stop_words_from_queries_only() -> None:
    assert analyzer.terms("Éléphants JUMPED over the lazy_dogs' backs, 3.14") == [
        "eleph", "jump", "over", "the", "lazi", "dog", "back", "3", "14"]
    assert analyzer.query_terms("Is the elephant jumping? THE elephant!") == ["eleph", "jump"]
    assert analyzer.query_terms("it is that") == ["it", "i", "that"]  # nothing else: stop words stay (stemmed)
    assert analyzer.query_terms("!!! ***") == []
    assert len(analyzer.query_terms(" ".join(f"w{i}" for i in range(200)))) == analyzer.MAX_QUERY_TERMS


def test_computed_sparse_vectors_weigh_repeats_with_saturation() -> None:
    once, thrice = analyzer.sparse_vector("kettl"), analyzer.sparse_vector("kettl kettl kettl")
    [weight_once], [weight_thrice] = once.values(), thrice.values()
    assert once.keys() == thrice.keys() and weight_once < weight_thrice < 3 * weight_once


async def test_the_lexical_path_is_fixed_per_collection(tmp_path) -> None:
    store = MilvusVectorStore(tmp_path / "m.db", lexical="sparse")
    try:
        computed = await store.create("computed", DIM)
        store._lexical = "auto"
        server = await store.create("server", DIM)
        assert (computed.meta.lexical, server.meta.lexical) == ("sparse", "bm25")
        functions = {name: store._connected().call("describe", "describe_collection",
                                                   physical_name(name, CHUNKS))["functions"]
                     for name in ("computed", "server")}
        assert functions["computed"] == [] and [f["name"] for f in functions["server"]] == ["terms_bm25"]
        for collection in (computed, server):
            parsed, chunks, vectors = document("k.md", ["The kettles boil", "tea"], unit_vectors(
                np.random.default_rng(25), 2))
            result = await collection.upsert_document(parsed, [dataclasses.replace(c) for c in chunks], vectors)
            assert [hit.id for hit in await collection.lexical_search("kettle", 5)] == [result.chunk_ids[0]]
    finally:
        await store.close()
