"""The FAISS backend's own guarantees, beyond the contract (tests/pipeline/vectorstore/test_contract.py): SQLite,
FTS5 and FAISS stay consistent; index structures, tombstones and rebuilds; the index file persisted, stale or
damaged; a real SIGKILL mid-write; snapshots; other processes' writes; the GPU copy."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import closing
from pathlib import Path

import numpy as np
import pytest

from nimrag.pipeline.documents import Chunk, ParsedDocument
from nimrag.pipeline.vectorstore.base import (
    CollectionNotFound,
    CollectionOptions,
    DimensionMismatch,
    InvalidCollectionName,
    InvalidDocument,
)
from nimrag.pipeline.vectorstore.faiss import Catalog, Collection, FaissVectorStore, schema
from nimrag.pipeline.vectorstore.faiss import collection as collection_module
from nimrag.pipeline.vectorstore.faiss.index import gpu_available
from nimrag.pipeline.vectorstore.faiss.persistence import INDEX_FILE, INDEX_META_FILE
from tests.pipeline.vectorstore.helpers import (
    DIM,
    brute_force,
    check_source_filter,
    document,
    random_document,
    unit_vectors,
)

REPO = Path(__file__).resolve().parents[4]
CRASH_CHILD = ("import sys; from tests.pipeline.vectorstore.faiss.test_store import ingest_for_crash_test; "
               "ingest_for_crash_test(*sys.argv[1:])")


def fill(collection: Collection, rng: np.random.Generator, documents: int, chunks: int) -> None:
    for number in range(documents):
        collection.upsert_document(*random_document(rng, f"doc-{number:02d}", chunks))


# --- checks -------------------------------------------------------------------------------------------------

def stored_vectors(collection: Collection, sources: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    with closing(sqlite3.connect(collection.path / schema.DB_FILE)) as db:
        rows = db.execute("SELECT id, source, vector FROM chunks ORDER BY id").fetchall()
    rows = [row for row in rows if sources is None or row[1] in sources]
    vectors = np.array([np.frombuffer(row[2], dtype=np.float32) for row in rows]).reshape(len(rows), DIM)
    return np.array([row[0] for row in rows], dtype=np.int64), vectors


def recall_at(collection: Collection, queries: np.ndarray, k: int) -> float:
    hits = 0
    for query in queries:
        truth = {chunk_id for chunk_id, _ in brute_force(*stored_vectors(collection), query, k)}
        hits += len(truth & {chunk_id for chunk_id, _ in collection.dense_search(query, k)})
    return hits / (k * len(queries))


def assert_consistent(collection: Collection) -> None:
    """Every chunk has a vector and every vector a chunk; FTS rows and document counts match the chunks."""
    assert collection.verify() == []
    with closing(sqlite3.connect(collection.path / schema.DB_FILE)) as db:
        ids = [row[0] for row in db.execute("SELECT id FROM chunks ORDER BY id")]
        assert collection.indexed_ids().tolist() == ids
        assert db.execute("SELECT count(*) FROM chunks_fts_docsize").fetchone()[0] == len(ids)
        db.execute("INSERT INTO chunks_fts (chunks_fts) VALUES ('integrity-check')")  # raises on a bad FTS index
        for source, count in db.execute("SELECT source, chunks FROM documents").fetchall():
            assert db.execute("SELECT count(*) FROM chunks WHERE source = ?", (source,)).fetchone()[0] == count


@pytest.fixture
def catalog(tmp_path: Path) -> Iterator[Catalog]:
    with Catalog(tmp_path / "collections", use_gpu=False) as catalog:
        yield catalog


# --- the catalog ----------------------------------------------------------------------------------------------

def test_one_object_per_name_and_nothing_left_on_disk(catalog: Catalog) -> None:
    docs = catalog.create("docs", DIM)
    assert catalog.open("docs") is docs
    catalog.create("graph", DIM, "hnsw")
    catalog.delete("docs")
    assert sorted(path.name for path in catalog.root.iterdir()) == ["graph"]  # no tombstone left behind
    for name in ("../x", ".hidden", "a b"):
        with pytest.raises(InvalidCollectionName):
            catalog.create(name, DIM)
    assert sorted(path.name for path in catalog.root.iterdir()) == ["graph"]
    assert catalog.create("docs", DIM).stats().chunks == 0


def test_delete_while_open_here_and_in_another_catalog(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    with Catalog(tmp_path, use_gpu=False) as first, Catalog(tmp_path, use_gpu=False) as second:
        held = first.create("docs", DIM)
        held.upsert_document(*random_document(rng, "a.txt", 3))
        elsewhere = second.open("docs")
        assert len(elsewhere.dense_search(unit_vectors(rng, 1)[0], 3)) == 3

        first.delete("docs")
        with pytest.raises(CollectionNotFound):
            held.dense_search(unit_vectors(rng, 1)[0], 3)
        with pytest.raises(CollectionNotFound):
            elsewhere.lexical_search("part", 3)
        with pytest.raises(CollectionNotFound):
            second.open("docs")

        first.create("docs", DIM)  # the same name again: a new, empty collection
        assert second.open("docs").stats().chunks == 0


# --- writing ------------------------------------------------------------------------------------------------

def test_writes_keep_sqlite_fts_and_faiss_in_step(catalog: Catalog) -> None:
    rng = np.random.default_rng(2)
    collection = catalog.create("docs", DIM)
    first = document("guide.md", ["alpha bravo", "charlie delta", "echo foxtrot"], unit_vectors(rng, 3))
    added = collection.upsert_document(*first)
    generation = collection.stats().generation
    assert collection.upsert_document(*first).status == "unchanged"
    assert collection.stats().generation == generation  # unchanged: nothing written

    replaced = collection.upsert_document(*document("guide.md", ["golf"], unit_vectors(rng, 1), version="2"))
    assert set(added.chunk_ids).isdisjoint(collection.indexed_ids().tolist())
    assert collection.indexed_ids().tolist() == list(replaced.chunk_ids)
    others = {name: collection.upsert_document(*random_document(rng, name, 4)) for name in ("a", "b", "c")}
    collection.delete_document("b")
    assert set(others["b"].chunk_ids).isdisjoint(collection.indexed_ids().tolist())
    assert_consistent(collection)

    generation = collection.stats().generation
    parsed, chunks, vectors = random_document(rng, "a", 4, version="2")
    for bad in ((parsed, chunks, unit_vectors(rng, 4, DIM + 1)), (parsed, chunks, vectors[:2]),
                (parsed, [chunks[0], chunks[0], *chunks[2:]], vectors)):
        with pytest.raises((DimensionMismatch, InvalidDocument)):
            collection.upsert_document(*bad)
    assert collection.stats().generation == generation
    assert_consistent(collection)


# --- index structures -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_have_their_structure(catalog: Catalog, kind: str) -> None:
    rng = np.random.default_rng(7)
    collection = catalog.create(kind, DIM, kind)
    fill(collection, rng, documents=20, chunks=100)
    assert collection.stats().index_structure == kind
    assert recall_at(collection, unit_vectors(rng, 50), 10) >= 0.9
    assert_consistent(collection)


def test_ivf_searches_exactly_until_it_can_train(catalog: Catalog) -> None:
    rng = np.random.default_rng(8)
    collection = catalog.create("small", DIM, "ivf")
    fill(collection, rng, documents=3, chunks=100)
    assert collection.stats().index_structure == "flat"
    assert recall_at(collection, unit_vectors(rng, 10), 10) == 1.0


@pytest.mark.anyio
@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
async def test_source_filter_through_the_id_selector(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                     kind: str) -> None:
    """A few documents are scored exactly (the contract suite checks that); with the limit at 0 even they go
    through FAISS's IDSelector on the approximate index."""
    monkeypatch.setattr(collection_module, "EXACT_FILTER_MAX", 0)
    async with FaissVectorStore(tmp_path, use_gpu=False) as store:
        collection = await store.create(kind, DIM, options=CollectionOptions(index=kind))
        await check_source_filter(collection, np.random.default_rng(9), exact=False)
        assert collection.engine.stats().index_structure == kind


def test_hnsw_filters_deleted_vectors_then_rebuilds(catalog: Catalog) -> None:
    rng = np.random.default_rng(10)
    collection = catalog.create("graph", DIM, "hnsw")
    added = {}
    for number in range(20):
        parsed, chunks, vectors = random_document(rng, f"doc-{number:02d}", 10)
        added[parsed.source] = (vectors, collection.upsert_document(parsed, chunks, vectors).chunk_ids)

    def assert_deleted_never_found(sources: list[str]) -> None:
        deleted = {i for source in sources for i in added[source][1]}
        for source in sources:
            for vector in added[source][0]:
                assert deleted.isdisjoint(i for i, _ in collection.dense_search(vector, 10))

    for source in ("doc-00", "doc-01"):
        collection.delete_document(source)
    assert (collection.stats().tombstones, collection.stats().vectors) == (20, 180)
    assert_deleted_never_found(["doc-00", "doc-01"])
    assert_consistent(collection)

    for source in ("doc-02", "doc-03", "doc-04"):  # past 20% deleted: the graph is rebuilt without them
        collection.delete_document(source)
    assert (collection.stats().tombstones, collection.stats().vectors) == (0, 150)
    assert_deleted_never_found([f"doc-{n:02d}" for n in range(5)])
    assert recall_at(collection, unit_vectors(rng, 20), 10) >= 0.9
    assert_consistent(collection)


# --- persistence --------------------------------------------------------------------------------------------

def search_all(collection: Collection, queries: np.ndarray) -> list:
    return [collection.dense_search(query, 10) for query in queries]


@pytest.mark.parametrize("kind", ["flat", "hnsw", "ivf"])
def test_reopen_gives_identical_results(tmp_path: Path, kind: str) -> None:
    rng = np.random.default_rng(13)
    queries = unit_vectors(rng, 10)
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.create("docs", DIM, kind)
        fill(collection, rng, documents=12, chunks=100)
        collection.delete_document("doc-03")
        before, generation = search_all(collection, queries), collection.stats().generation
    meta = json.loads((tmp_path / "docs" / INDEX_META_FILE).read_text())
    assert meta["generation"] == generation
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.open("docs")
        assert collection.stats().persisted_generation == generation  # loaded, not rebuilt
        assert search_all(collection, queries) == before
        assert_consistent(collection)


def test_stale_index_file_is_caught_up(tmp_path: Path) -> None:
    rng = np.random.default_rng(14)
    folder = tmp_path / "docs"
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.create("docs", DIM, "hnsw")
        fill(collection, rng, documents=5, chunks=20)
        collection.flush()
        old_files = {name: (folder / name).read_bytes() for name in (INDEX_FILE, INDEX_META_FILE)}
        for number in range(5, 10):
            collection.upsert_document(*random_document(rng, f"doc-{number:02d}", 20))
        collection.delete_document("doc-01")
        collection.upsert_document(*random_document(rng, "doc-02", 7, version="2"))
    for name, data in old_files.items():
        (folder / name).write_bytes(data)
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.open("docs")
        assert_consistent(collection)
        assert collection.stats().tombstones == 40  # doc-01 and the old doc-02: 40 of 207, under the rebuild ratio
        assert recall_at(collection, unit_vectors(rng, 20), 10) >= 0.9


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no-metadata", "no-index"])
def test_damaged_index_file_is_rebuilt(tmp_path: Path, damage: str) -> None:
    rng = np.random.default_rng(15)
    queries = unit_vectors(rng, 5)
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.create("docs", DIM)
        fill(collection, rng, documents=5, chunks=20)
        before = search_all(collection, queries)
    index_file, meta_file = tmp_path / "docs" / INDEX_FILE, tmp_path / "docs" / INDEX_META_FILE
    if damage == "garbage":
        index_file.write_bytes(os.urandom(4096))
    elif damage == "truncated":
        index_file.write_bytes(index_file.read_bytes()[:1000])
    elif damage == "no-metadata":
        meta_file.unlink()
    else:
        index_file.unlink()
    with Catalog(tmp_path, use_gpu=False) as catalog:
        collection = catalog.open("docs")
        assert search_all(collection, queries) == before
        assert_consistent(collection)


# --- crash safety ---------------------------------------------------------------------------------------------

def crash_document(number: int, version: int) -> tuple[ParsedDocument, list[Chunk], np.ndarray]:
    rng = np.random.default_rng(number * 100 + version)
    texts = [f"document {number} version {version} part {part}" for part in range(3 + number % 5)]
    return document(f"doc-{number:03d}", texts, unit_vectors(rng, len(texts)), version=str(version))


def ingest_for_crash_test(root: str, count: str, version: str) -> None:
    """Runs in a child process: ingests documents 0..count-1 at ``version``, persisting the index after every
    write (so a kill can land in a commit or in a persist), printing the number of each one done."""
    with Catalog(root, use_gpu=False, persist_interval_s=0.0) as catalog:
        collection = catalog.open("crash") if catalog.exists("crash") else catalog.create("crash", DIM)
        for number in range(int(count)):
            parsed, chunks, vectors = crash_document(number, int(version))
            if collection.document_hash(parsed.source) != parsed.content_hash:
                collection.upsert_document(parsed, chunks, vectors)
            print(number, flush=True)
    print("done", flush=True)


def run_ingest(root: Path, count: int, version: int, kill_after: int | None) -> int:
    """The child's exit status; with ``kill_after``, it is SIGKILLed once it has reported that many documents."""
    with open(root.parent / "child.log", "ab") as log:
        child = subprocess.Popen([sys.executable, "-c", CRASH_CHILD, str(root), str(count), str(version)],
                                 cwd=REPO, stdout=subprocess.PIPE, stderr=log, text=True)
        for reported, _ in enumerate(child.stdout, start=1):
            if kill_after is not None and reported >= kill_after:
                os.kill(child.pid, signal.SIGKILL)
                break
        child.stdout.close()
        return child.wait(timeout=60)


def assert_documents_whole(collection: Collection) -> None:
    """Each stored document has exactly the chunks of one version: a write was never half applied."""
    for info in collection.list_documents():
        number, version = int(info.source.split("-")[1]), info.content_hash.split("@")[1]
        ids = [i for i, _ in collection.lexical_search(f"document {number}", 1000, sources=[info.source])]
        texts = sorted(item.chunk.text for item in collection.get_chunks(ids))
        assert texts == sorted(f"document {number} version {version} part {p}" for p in range(3 + number % 5))


def test_sigkill_mid_ingest_leaves_a_consistent_collection(tmp_path: Path) -> None:
    root, count = tmp_path / "collections", 160
    for version, kill_after in ((1, 25), (1, 60), (2, 30)):
        assert run_ingest(root, count, version, kill_after) == -signal.SIGKILL, (tmp_path / "child.log").read_text()
        with Catalog(root, use_gpu=False) as catalog:
            collection = catalog.open("crash")
            assert_consistent(collection)
            assert_documents_whole(collection)
            assert 0 < collection.stats().documents < count
    assert run_ingest(root, count, 2, kill_after=None) == 0, (tmp_path / "child.log").read_text()
    with Catalog(root, use_gpu=False) as catalog:
        collection = catalog.open("crash")
        assert_consistent(collection)
        assert_documents_whole(collection)
        documents = collection.list_documents()
        assert [info.source for info in documents] == [f"doc-{n:03d}" for n in range(count)]
        assert {info.content_hash.split("@")[1] for info in documents} == {"2"}
        assert collection.stats().chunks == sum(3 + n % 5 for n in range(count))


# --- concurrency and other processes -------------------------------------------------------------------------

def test_searches_keep_working_during_upserts(catalog: Catalog) -> None:
    collection = catalog.create("busy", DIM)
    fill(collection, np.random.default_rng(16), documents=20, chunks=5)
    writes_done = threading.Event()

    def write() -> None:
        rng = np.random.default_rng(17)
        try:
            for round_number in range(60):
                source = f"doc-{round_number % 30:02d}"  # new documents first, then replacements
                collection.upsert_document(*random_document(rng, source, 1 + round_number % 6, str(round_number)))
                if round_number % 7 == 0:
                    collection.delete_document(f"doc-{round_number * 3 % 30:02d}")
        finally:
            writes_done.set()

    def search(seed: int) -> int:
        rng, searches = np.random.default_rng(seed), 0
        while not writes_done.is_set():
            with collection.snapshot():  # every id a search returns is then found
                ids = [i for i, _ in collection.dense_search(unit_vectors(rng, 1)[0], 8)]
                ids += [i for i, _ in collection.lexical_search("part version", 8)]
                assert {item.id for item in collection.get_chunks(ids)} == set(ids)
            collection.dense_search(unit_vectors(rng, 1)[0], 8, sources=["doc-01", "doc-25"])
            searches += 1
        return searches

    with ThreadPoolExecutor(max_workers=4) as pool:
        searchers = [pool.submit(search, seed) for seed in range(3)]
        pool.submit(write).result(timeout=60)  # .result() re-raises what failed in a thread
        assert all(searcher.result(timeout=60) > 0 for searcher in searchers)
    assert_consistent(collection)


def test_write_inside_a_snapshot_is_refused(catalog: Catalog) -> None:
    collection = catalog.create("docs", DIM)
    with collection.snapshot(), pytest.raises(RuntimeError):
        collection.upsert_document(*random_document(np.random.default_rng(18), "a", 2))
    assert collection.stats().documents == 0


@pytest.mark.parametrize("log_window", [1000, 2], ids=["removal-log", "log-pruned"])
def test_another_catalog_sees_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_window: int) -> None:
    monkeypatch.setattr(schema, "REMOVAL_LOG_GENERATIONS", log_window)
    rng = np.random.default_rng(19)
    with Catalog(tmp_path, use_gpu=False) as first, Catalog(tmp_path, use_gpu=False) as second:
        writer, reader = first.create("shared", DIM), second.open("shared")
        old = random_document(rng, "a", 4)
        old_ids = writer.upsert_document(*old).chunk_ids
        assert reader.dense_search(old[2][0], 1)[0][0] == old_ids[0]

        for number in range(5):
            writer.upsert_document(*random_document(rng, f"b-{number}", 3))
        new = random_document(rng, "a", 2, version="2")
        new_ids = writer.upsert_document(*new).chunk_ids
        writer.delete_document("b-0")

        assert reader.dense_search(new[2][0], 1)[0][0] == new_ids[0]
        assert set(old_ids).isdisjoint(i for i, _ in reader.dense_search(old[2][0], 30))
        assert reader.lexical_search("b-0", 10, sources=["b-0"]) == []
        assert reader.indexed_ids().tolist() == writer.indexed_ids().tolist()
        assert_consistent(reader)

        back = random_document(rng, "c", 2)
        back_ids = reader.upsert_document(*back).chunk_ids
        assert writer.dense_search(back[2][1], 1)[0][0] == back_ids[1]
        assert_consistent(writer)


@pytest.mark.gpu
@pytest.mark.skipif(not gpu_available(), reason="needs FAISS built with CUDA and a GPU")
def test_gpu_search_matches_cpu(tmp_path: Path) -> None:
    rng = np.random.default_rng(20)
    documents = [random_document(rng, f"doc-{n}", 50) for n in range(10)]
    queries = unit_vectors(rng, 10)
    with Catalog(tmp_path / "gpu", persist_interval_s=0.0) as gpu, Catalog(tmp_path / "cpu", use_gpu=False) as cpu:
        on_gpu, on_cpu = gpu.create("docs", DIM), cpu.create("docs", DIM)
        for item in documents:
            on_gpu.upsert_document(*item)
            on_cpu.upsert_document(*item)
        assert on_gpu.stats().gpu
        for query in queries:
            assert [i for i, _ in on_gpu.dense_search(query, 10)] == [i for i, _ in on_cpu.dense_search(query, 10)]
