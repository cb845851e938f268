"""The collection store on real SQLite and FAISS: CRUD, search, persistence, concurrency, and a real SIGKILL."""

from __future__ import annotations

import dataclasses
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

from pipeline import store
from pipeline.documents import Chunk, Page, ParsedDocument
from pipeline.store import (
    Catalog,
    Collection,
    CollectionExists,
    CollectionNotFound,
    DimensionMismatch,
    InvalidArgument,
    InvalidCollectionName,
    InvalidDocument,
    InvalidIndexKind,
    StoreError,
    gpu_available,
)

REPO = Path(__file__).resolve().parents[2]
DIM = 16
CRASH_CHILD = "import sys; from tests.pipeline.test_store import ingest_for_crash_test; ingest_for_crash_test(*sys.argv[1:])"


# --- documents ----------------------------------------------------------------------------------------------

def unit_vectors(rng: np.random.Generator, count: int, dimension: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def document(source: str, texts: list[str], vectors: np.ndarray,
             version: str = "1") -> tuple[ParsedDocument, list[Chunk], np.ndarray]:
    parsed = ParsedDocument(source=source, title=source.title(), media_type="text/plain",
                            pages=[Page(None, "\n".join(texts))], content_hash=f"{source}@{version}")
    chunks = [Chunk(source=source, index=i, text=text, page=None, start=0, end=len(text), title=source,
                    content_hash=f"{source}-{i}", metadata={"part": i}) for i, text in enumerate(texts)]
    return parsed, chunks, vectors


def random_document(rng: np.random.Generator, source: str, chunks: int,
                    version: str = "1") -> tuple[ParsedDocument, list[Chunk], np.ndarray]:
    texts = [f"{source} part {i} version {version}" for i in range(chunks)]
    return document(source, texts, unit_vectors(rng, chunks), version)


def fill(collection: Collection, rng: np.random.Generator, documents: int, chunks: int) -> None:
    for number in range(documents):
        collection.upsert_document(*random_document(rng, f"doc-{number:02d}", chunks))


# --- checks -------------------------------------------------------------------------------------------------

def stored_vectors(collection: Collection, sources: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
    with closing(sqlite3.connect(collection.path / store.DB_FILE)) as db:
        rows = db.execute("SELECT id, source, vector FROM chunks ORDER BY id").fetchall()
    rows = [row for row in rows if sources is None or row[1] in sources]
    vectors = np.array([np.frombuffer(row[2], dtype=np.float32) for row in rows]).reshape(len(rows), DIM)
    return np.array([row[0] for row in rows], dtype=np.int64), vectors


def brute_force(collection: Collection, query: np.ndarray, k: int,
                sources: list[str] | None = None) -> list[tuple[int, float]]:
    ids, vectors = stored_vectors(collection, sources)
    scores = vectors @ query
    best = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in best]


def assert_same_hits(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-6)


def recall_at(collection: Collection, queries: np.ndarray, k: int) -> float:
    hits = 0
    for query in queries:
        truth = {chunk_id for chunk_id, _ in brute_force(collection, query, k)}
        hits += len(truth & {chunk_id for chunk_id, _ in collection.dense_search(query, k)})
    return hits / (k * len(queries))


def assert_consistent(collection: Collection) -> None:
    """Every chunk has a vector and every vector a chunk; FTS rows and document counts match the chunks."""
    assert collection.verify() == []
    with closing(sqlite3.connect(collection.path / store.DB_FILE)) as db:
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


# --- the catalog ------------------------------------------------------------------------------------------

def test_create_list_open_delete(catalog: Catalog) -> None:
    docs = catalog.create("docs", DIM, metadata={"owner": "qa"})
    assert catalog.exists("docs") and catalog.open("docs") is docs
    docs.upsert_document(*random_document(np.random.default_rng(0), "a.txt", 3))
    catalog.create("graph", DIM, "hnsw")

    listed = {info.name: info for info in catalog.list()}
    assert sorted(listed) == ["docs", "graph"]
    assert (listed["docs"].dimension, listed["docs"].index_kind, listed["docs"].documents, listed["docs"].chunks,
            listed["docs"].metadata) == (DIM, "flat", 1, 3, {"owner": "qa"})
    assert listed["graph"].index_kind == "hnsw" and listed["graph"].created

    catalog.delete("docs")
    assert not catalog.exists("docs")
    assert [info.name for info in catalog.list()] == ["graph"]
    assert sorted(path.name for path in catalog.root.iterdir()) == ["graph"]  # no tombstone left behind
    with pytest.raises(CollectionNotFound):
        catalog.open("docs")
    assert catalog.create("docs", DIM).stats().chunks == 0


@pytest.mark.parametrize("name", ["../x", "a/b", "", ".", "..", "x" * 65, ".hidden", "a b", "-x", "a\\b", None])
def test_invalid_collection_names_are_rejected(catalog: Catalog, name: object) -> None:
    for attempt in (lambda: catalog.create(name, DIM), lambda: catalog.open(name), lambda: catalog.delete(name),
                    lambda: catalog.exists(name)):
        with pytest.raises(InvalidCollectionName):
            attempt()
    assert list(catalog.root.iterdir()) == []


def test_longest_valid_name_and_bad_arguments(catalog: Catalog) -> None:
    assert catalog.create("x" * 64, DIM).name == "x" * 64
    with pytest.raises(InvalidIndexKind):
        catalog.create("bad-kind", DIM, "annoy")
    with pytest.raises(InvalidArgument):
        catalog.create("bad-dimension", 0)
    with pytest.raises(InvalidArgument):
        catalog.create("bad-metadata", DIM, metadata={"when": object()})
    assert [info.name for info in catalog.list()] == ["x" * 64]


def test_duplicate_and_unknown_collections(catalog: Catalog) -> None:
    catalog.create("docs", DIM)
    with pytest.raises(CollectionExists):
        catalog.create("docs", DIM)
    with pytest.raises(CollectionNotFound):
        catalog.open("nope")
    with pytest.raises(CollectionNotFound):
        catalog.delete("nope")
    assert issubclass(CollectionNotFound, StoreError) and issubclass(InvalidCollectionName, StoreError)


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
            held.upsert_document(*random_document(rng, "b.txt", 1))
        with pytest.raises(CollectionNotFound):
            elsewhere.lexical_search("part", 3)
        with pytest.raises(CollectionNotFound):
            second.open("docs")

        first.create("docs", DIM)  # the same name again: a new, empty collection
        assert second.open("docs").stats().chunks == 0


# --- writing ------------------------------------------------------------------------------------------------

def test_upsert_added_unchanged_replaced(catalog: Catalog) -> None:
    rng = np.random.default_rng(2)
    collection = catalog.create("docs", DIM)
    first = document("guide.md", ["alpha bravo", "charlie delta", "echo foxtrot"], unit_vectors(rng, 3))
    added = collection.upsert_document(*first)
    assert (added.status, added.chunks, len(added.chunk_ids)) == ("added", 3, 3)
    assert collection.document_hash("guide.md") == "guide.md@1" and collection.document_hash("other") is None

    unchanged = collection.upsert_document(*first)
    assert (unchanged.status, unchanged.chunks, unchanged.chunk_ids) == ("unchanged", 3, ())
    assert unchanged.generation == added.generation

    second = document("guide.md", ["golf hotel", "india juliett"], unit_vectors(rng, 2), version="2")
    replaced = collection.upsert_document(*second)
    assert (replaced.status, replaced.chunks) == ("replaced", 2)
    old_ids = set(added.chunk_ids)
    assert old_ids.isdisjoint(collection.indexed_ids().tolist())
    assert collection.get_chunks(added.chunk_ids) == []
    assert collection.lexical_search("alpha charlie echo", 10) == []
    assert old_ids.isdisjoint(i for i, _ in collection.dense_search(first[2][0], 10))
    assert [hit[0] for hit in collection.lexical_search("golf", 10)] == [replaced.chunk_ids[0]]

    assert collection.upsert_document(*second, force=True).status == "replaced"
    assert_consistent(collection)


def test_stored_chunks_round_trip(catalog: Catalog) -> None:
    collection = catalog.create("docs", DIM)
    parsed, chunks, vectors = document("a.pdf", ["one", "two"], unit_vectors(np.random.default_rng(3), 2))
    chunks[1] = dataclasses.replace(chunks[1], page=7, start=3, end=6, metadata={"lang": "fr", "n": [1, 2]})
    result = collection.upsert_document(parsed, chunks, vectors, metadata={"path": "/x/a.pdf"}, size_bytes=1234)
    stored = collection.get_chunks([result.chunk_ids[1], 999_999, result.chunk_ids[0], result.chunk_ids[1]])
    assert [item.chunk for item in stored] == [chunks[1], chunks[0]]
    assert [item.id for item in stored] == [result.chunk_ids[1], result.chunk_ids[0]]
    [info] = collection.list_documents()
    assert (info.source, info.title, info.media_type, info.chunks, info.bytes, info.metadata) == (
        "a.pdf", "A.Pdf", "text/plain", 2, 1234, {"path": "/x/a.pdf"})


def test_delete_document_and_list(catalog: Catalog) -> None:
    rng = np.random.default_rng(4)
    collection = catalog.create("docs", DIM)
    results = {name: collection.upsert_document(*random_document(rng, name, 4)) for name in ("a", "b", "c")}
    assert collection.delete_document("b") is True
    assert collection.delete_document("b") is False
    assert [info.source for info in collection.list_documents()] == ["a", "c"]
    assert set(results["b"].chunk_ids).isdisjoint(collection.indexed_ids().tolist())
    assert collection.lexical_search("b part", 20, sources=["b"]) == []
    assert collection.stats().chunks == 8
    assert_consistent(collection)


def test_invalid_writes_change_nothing(catalog: Catalog) -> None:
    rng = np.random.default_rng(5)
    collection = catalog.create("docs", DIM)
    parsed, chunks, vectors = random_document(rng, "a", 3)
    collection.upsert_document(parsed, chunks, vectors)
    generation = collection.stats().generation
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
            collection.upsert_document(*arguments)
    with pytest.raises(DimensionMismatch):
        collection.dense_search(np.ones(DIM + 1, dtype=np.float32), 3)
    assert collection.stats().generation == generation
    assert collection.document_hash("a") == parsed.content_hash
    assert_consistent(collection)


# --- searching ------------------------------------------------------------------------------------------------

def test_flat_search_is_exact(catalog: Catalog) -> None:
    rng = np.random.default_rng(6)
    collection = catalog.create("docs", DIM)
    fill(collection, rng, documents=30, chunks=10)
    for query in unit_vectors(rng, 20):
        assert_same_hits(collection.dense_search(query, 10), brute_force(collection, query, 10))
    assert len(collection.dense_search(unit_vectors(rng, 1)[0], 1000)) == 300
    assert collection.dense_search(unit_vectors(rng, 1)[0], 0) == []


@pytest.mark.parametrize("kind", ["hnsw", "ivf"])
def test_approximate_indexes_recall(catalog: Catalog, kind: str) -> None:
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


@pytest.mark.parametrize(("kind", "exact_limit"), [("flat", 0), ("hnsw", 4096), ("ivf", 4096), ("hnsw", 0),
                                                   ("ivf", 0)])
def test_source_filter(catalog: Catalog, monkeypatch: pytest.MonkeyPatch, kind: str, exact_limit: int) -> None:
    """A few documents are scored exactly; with the limit at 0 even they go through FAISS's IDSelector."""
    monkeypatch.setattr(store, "EXACT_FILTER_MAX", exact_limit)
    rng = np.random.default_rng(9)
    collection = catalog.create(kind, DIM, kind)
    fill(collection, rng, documents=12, chunks=100)
    assert collection.stats().index_structure == kind
    wanted = ["doc-02", "doc-05"]
    allowed = set(stored_vectors(collection, wanted)[0].tolist())
    found = 0
    for query in unit_vectors(rng, 10):
        got, expected = collection.dense_search(query, 10, sources=wanted), brute_force(collection, query, 10, wanted)
        assert len(got) == 10 and {i for i, _ in got} <= allowed
        if kind == "flat" or exact_limit:
            assert_same_hits(got, expected)
        found += len({i for i, _ in got} & {i for i, _ in expected})
    assert found >= 0.9 * 100
    assert collection.dense_search(unit_vectors(rng, 1)[0], 5, sources=[]) == []
    assert collection.dense_search(unit_vectors(rng, 1)[0], 5, sources=["missing"]) == []
    lexical = collection.lexical_search("part version", 50, sources=wanted)
    assert len(lexical) == 50 and {i for i, _ in lexical} <= allowed


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


def test_stored_vectors_come_back_in_the_order_asked(catalog: Catalog) -> None:
    collection = catalog.create("docs", DIM)
    vectors = unit_vectors(np.random.default_rng(5), 2)
    result = collection.upsert_document(*document("a.md", ["one", "two"], vectors))
    got = collection.get_vectors([result.chunk_ids[1], 999_999, result.chunk_ids[0]])
    np.testing.assert_array_equal(got, np.stack([vectors[1], np.zeros(DIM, np.float32), vectors[0]]))


def test_lexical_search_leaves_out_stop_words(catalog: Catalog) -> None:
    collection = catalog.create("docs", DIM)
    texts = ["The kettle is on the table.", "It is what it is, and that is that.", "A kettle boils water."]
    result = collection.upsert_document(*document("k.md", texts, unit_vectors(np.random.default_rng(13), 3)))
    assert {i for i, _ in collection.lexical_search("is that the kettle", 10)} == {result.chunk_ids[0],
                                                                                  result.chunk_ids[2]}
    # A query of stop words only still searches with them.
    assert collection.lexical_search("it is that", 10)[0][0] == result.chunk_ids[1]


def test_lexical_search_ranks_matching_chunk_first(catalog: Catalog) -> None:
    collection = catalog.create("docs", DIM)
    texts = ["Solar panels convert sunlight into electricity with good efficiency.",
             "Wind turbines spin in the wind.",
             "Electricity prices rise in winter.",
             "Panels of judges decide quickly."]
    result = collection.upsert_document(*document("energy.md", texts, unit_vectors(np.random.default_rng(11), 4)))
    hits = collection.lexical_search("solar panel efficiency", 10)
    assert hits[0][0] == result.chunk_ids[0]
    assert [score for _, score in hits] == sorted((score for _, score in hits), reverse=True)
    assert {i for i, _ in hits} == {result.chunk_ids[0], result.chunk_ids[3]}  # "panels" stems to "panel"
    assert collection.lexical_search("ELECTRICITY", 10, sources=["energy.md"])[0][0] in result.chunk_ids


@pytest.mark.parametrize("query", ['"', "*", "AND", "(", "a AND (b", 'NEAR(wind "', "text:wind", "wind*", "-wind",
                                   "^wind", "OR OR", "NOT", "'; DROP TABLE chunks; --", "", "   ", "!!!"])
def test_lexical_search_takes_any_text(catalog: Catalog, query: str) -> None:
    collection = catalog.create("docs", DIM)
    collection.upsert_document(*document("a", ["wind and text", "not this"], unit_vectors(np.random.default_rng(12), 2)))
    hits = collection.lexical_search(query, 5)
    assert isinstance(hits, list)
    if not query.strip() or query == "!!!":
        assert hits == []
    assert collection.stats().chunks == 2


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
    meta = json.loads((tmp_path / "docs" / store.INDEX_META_FILE).read_text())
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
        old_files = {name: (folder / name).read_bytes() for name in (store.INDEX_FILE, store.INDEX_META_FILE)}
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
    index_file, meta_file = tmp_path / "docs" / store.INDEX_FILE, tmp_path / "docs" / store.INDEX_META_FILE
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
    monkeypatch.setattr(store, "REMOVAL_LOG_GENERATIONS", log_window)
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
