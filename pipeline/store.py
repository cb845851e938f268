"""The per-collection store: SQLite holds documents, chunks and their vectors; FAISS is a cache rebuilt from it.

A catalog root holds one folder per collection:

    <root>/<name>/chunks.sqlite     the source of truth (WAL): documents, chunks with vectors, FTS5, meta
    <root>/<name>/index.faiss       the vector index as of some generation: a cache that may lag or be missing
    <root>/<name>/index.meta.json   the generation index.faiss reflects, and its sha256

Every write is one SQLite transaction that bumps the collection's ``generation`` and logs the chunk ids it
removes. The in-memory FAISS index follows SQLite by generation: right after each commit of this process,
and before each search when another process has written, it adds the chunks and removes the ids that changed
since the generation it holds. A process killed at any moment leaves SQLite consistent (transactions are
all-or-nothing) and index.faiss at worst stale or torn, which opening detects (checksum) and repairs from
SQLite. Chunk ids are SQLite AUTOINCREMENT rowids, never reused, so an id always means the same vector.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import shutil
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import faiss
import numpy as np

from pipeline.documents import Chunk, ParsedDocument
from services.common.files import fsync_dir, write_atomically

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

IndexKind = Literal["flat", "hnsw", "ivf"]
INDEX_KINDS: tuple[str, ...] = ("flat", "hnsw", "ivf")
SCHEMA_VERSION = 1
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
DB_FILE = "chunks.sqlite"
INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.meta.json"
CREATING_PREFIX = ".creating-"
DELETED_PREFIX = ".deleted-"
STALE_STAGING_S = 3600  # a staging folder this old belongs to a create that died
BUSY_TIMEOUT_S = 30.0

HNSW_NEIGHBOURS = 32
HNSW_EF_SEARCH = 256  # candidates kept while searching: 100 (vdb_top_k) found only 0.81 of the exact top 100
HNSW_MAX_EF_SEARCH = 4096  # the most a filtered search widens to
HNSW_TOMBSTONE_RATIO = 0.2  # rebuild an HNSW graph once this share of its vectors belongs to deleted chunks
IVF_MIN_VECTORS = 1000  # below this an "ivf" collection searches exactly: too few vectors to train lists
IVF_POINTS_PER_LIST = 39  # faiss warns when k-means gets fewer training points per centroid
IVF_MIN_PROBES = 16
REMOVAL_LOG_GENERATIONS = 1000  # how many generations back another process can catch up incrementally
MAX_QUERY_TERMS = 64
# Lucene's English stop words, which Anserini's BM25 drops too: they weigh next to nothing in BM25, yet each
# matches most chunks, and FTS5 ranks every chunk a query matches (at 100k chunks, hundreds of milliseconds).
STOPWORDS = frozenset("a an and are as at be but by for if in into is it no not of on or such that the their then "
                      "there these they this to was will with".split())
EXACT_FILTER_MAX = 4096  # a source filter down to this many chunks is searched exactly, whatever the index


# --- errors -------------------------------------------------------------------------------------------------

class StoreError(Exception):
    """Base of every error the store raises."""


class InvalidArgument(StoreError, ValueError):
    """A caller passed something the store cannot take."""


class InvalidCollectionName(InvalidArgument):
    pass


class InvalidIndexKind(InvalidArgument):
    pass


class DimensionMismatch(InvalidArgument):
    pass


class InvalidDocument(InvalidArgument):
    pass


class CollectionNotFound(StoreError, LookupError):
    pass


class CollectionExists(StoreError):
    pass


class CollectionClosed(StoreError):
    pass


class IncompatibleCollection(StoreError):
    """The collection was written by a store with another schema version."""


class StoreBusy(StoreError):
    """Another writer held the collection's database longer than the busy timeout."""


# --- records ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    index_kind: str
    documents: int
    chunks: int
    created: str  # ISO 8601, UTC
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class CollectionStats(CollectionInfo):
    generation: int | None = None  # None only while the index is being repaired after a failure
    index_structure: str = "flat"  # what the index is now: an "ivf" collection stays flat until trained
    vectors: int = 0  # live vectors in the index
    tombstones: int = 0  # deleted vectors an HNSW graph still holds (filtered out of results)
    persisted_generation: int | None = None
    gpu: bool = False


@dataclass(frozen=True)
class DocumentInfo:
    source: str
    title: str
    media_type: str
    content_hash: str
    chunks: int
    bytes: int
    ingested_at: str
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertResult:
    status: Literal["added", "replaced", "unchanged"]
    chunks: int
    chunk_ids: tuple[int, ...] = ()  # empty when unchanged
    generation: int = 0


@dataclass(frozen=True)
class StoredChunk:
    id: int
    chunk: Chunk
    score: float | None = None  # for the retriever to fill (dataclasses.replace)


# --- small helpers ------------------------------------------------------------------------------------------

def validate_name(name: object) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: 1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")
    return name


def validate_index_kind(kind: object) -> str:
    if kind not in INDEX_KINDS:
        raise InvalidIndexKind(f"index kind {kind!r} is not one of {', '.join(INDEX_KINDS)}")
    return str(kind)


def gpu_available() -> bool:
    return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0


def utc_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def dumps(value: object) -> str:
    try:
        return json.dumps(value, ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError) as error:
        raise InvalidArgument(f"metadata must be JSON-serializable: {error}") from error


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of the words of ``text`` but stop words (unless it has nothing else): each
    word quoted, so no user text is syntax."""
    words = list(dict.fromkeys(word.lower() for word in re.findall(r"\w+", text or "")))
    if not words:
        return None
    words = [word for word in words if word not in STOPWORDS] or words
    return " OR ".join(f'"{word}"' for word in words[:MAX_QUERY_TERMS])


def ivf_list_count(vectors: int) -> int:
    return max(1, min(int(4 * math.sqrt(vectors)), vectors // IVF_POINTS_PER_LIST))


def ivf_probes(lists: int) -> int:
    return min(lists, max(IVF_MIN_PROBES, lists // 4))


def remove_stale_temporaries(folder: Path) -> None:
    """Drop the temporary files of writes that died: their process is gone, or they are an hour old."""
    for temporary in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if not writer_alive(temporary) or time.time() - temporary.stat().st_mtime > STALE_STAGING_S:
                temporary.unlink()


def writer_alive(temporary: Path) -> bool:
    """Whether the process named in a write_atomically temporary (.NAME.PID.UID.tmp) still runs."""
    try:
        os.kill(int(temporary.name.split(".")[-3]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def file_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino


def as_id_array(ids: Iterable[int] | np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(ids if isinstance(ids, np.ndarray) else list(ids), dtype=np.int64)


# --- SQLite ---------------------------------------------------------------------------------------------------

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value NOT NULL);
CREATE TABLE documents (
    source TEXT PRIMARY KEY,
    title TEXT NOT NULL,
    media_type TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    chunks INTEGER NOT NULL,
    bytes INTEGER NOT NULL,
    ingested_at TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}'
);
CREATE TABLE chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,  -- AUTOINCREMENT: ids are never reused, so FAISS ids stay unambiguous
    source TEXT NOT NULL,
    idx INTEGER NOT NULL,
    text TEXT NOT NULL,
    page INTEGER,
    start_char INTEGER NOT NULL,
    end_char INTEGER NOT NULL,
    title TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    metadata TEXT NOT NULL DEFAULT '{}',
    vector BLOB NOT NULL,  -- float32, the collection's dimension
    generation INTEGER NOT NULL,  -- the write that added it: how other processes find what is new
    UNIQUE (source, idx)
);
CREATE INDEX chunks_generation ON chunks (generation);
CREATE TABLE removed_chunks (id INTEGER PRIMARY KEY, generation INTEGER NOT NULL);
CREATE INDEX removed_chunks_generation ON removed_chunks (generation);
CREATE VIRTUAL TABLE chunks_fts USING fts5 (
    text, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER chunks_fts_insert AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts (rowid, text) VALUES (new.id, new.text);
END;
CREATE TRIGGER chunks_fts_delete AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts (chunks_fts, rowid, text) VALUES ('delete', old.id, old.text);
END;
"""

CHUNK_COLUMNS = "id, source, idx, text, page, start_char, end_char, title, content_hash, metadata"
DOCUMENT_COLUMNS = "source, title, media_type, content_hash, chunks, bytes, ingested_at, metadata"


def connect(path: Path, *, create: bool = False) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); mode=rw never creates a missing file."""
    uri = f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    connection = sqlite3.connect(uri, uri=True, timeout=BUSY_TIMEOUT_S, isolation_level=None,
                                 check_same_thread=False)  # closed from another thread on close()
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def initialize_database(path: Path, dimension: int, index_kind: str, metadata: dict) -> None:
    connection = connect(path, create=True)
    try:
        connection.execute("PRAGMA journal_mode=WAL")  # persistent: readers never wait for a writer
        connection.executescript(SCHEMA)
        values = {
            "schema_version": SCHEMA_VERSION, "collection_uid": uuid.uuid4().hex, "dimension": dimension,
            "index_kind": index_kind, "created": utc_now(), "metadata": dumps(metadata),
            "generation": 0, "log_floor": 0,
        }
        with write_transaction(connection):
            connection.executemany("INSERT INTO meta (key, value) VALUES (?, ?)", values.items())
    finally:
        connection.close()


def read_meta(connection: sqlite3.Connection) -> dict:
    return dict(connection.execute("SELECT key, value FROM meta").fetchall())


def read_generation(connection: sqlite3.Connection) -> int:
    return connection.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()[0]


def read_counts(connection: sqlite3.Connection) -> tuple[int, int]:
    documents, chunks = connection.execute("SELECT count(*), coalesce(sum(chunks), 0) FROM documents").fetchone()
    return documents, chunks


@contextlib.contextmanager
def read_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Several SELECTs that see one snapshot (WAL): a generation and the rows that go with it."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.execute("COMMIT")


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def bump_generation(connection: sqlite3.Connection) -> int:
    """Inside a write transaction: the new generation; prunes the removal log to its window."""
    generation = read_generation(connection) + 1
    connection.execute("UPDATE meta SET value = ? WHERE key = 'generation'", (generation,))
    floor = generation - REMOVAL_LOG_GENERATIONS
    if floor > 0:
        connection.execute("DELETE FROM removed_chunks WHERE generation <= ?", (floor,))
        connection.execute("UPDATE meta SET value = ? WHERE key = 'log_floor'", (floor,))
    return generation


def ids_and_vectors(rows: Iterable[tuple[int, bytes]], dimension: int) -> tuple[np.ndarray, np.ndarray]:
    ids, blobs = [], []
    for chunk_id, blob in rows:
        ids.append(chunk_id)
        blobs.append(blob)
    vectors = np.frombuffer(b"".join(blobs), dtype=np.float32).reshape(len(ids), dimension)
    return np.asarray(ids, dtype=np.int64), vectors


def exact_search(query: np.ndarray, ids: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    scores = vectors @ query[0]
    best = np.argsort(-scores, kind="stable")[:k]
    return scores[best], ids[best]


def all_chunk_ids(connection: sqlite3.Connection) -> np.ndarray:
    return np.fromiter((row[0] for row in connection.execute("SELECT id FROM chunks ORDER BY id")), dtype=np.int64)


def stored_chunk(row: tuple) -> StoredChunk:
    chunk_id, source, index, text, page, start, end, title, content_hash, metadata = row
    chunk = Chunk(source=source, index=index, text=text, page=page, start=start, end=end, title=title,
                  content_hash=content_hash, metadata=json.loads(metadata))
    return StoredChunk(id=chunk_id, chunk=chunk)


def document_info(row: tuple) -> DocumentInfo:
    *fields, metadata = row
    return DocumentInfo(*fields, metadata=json.loads(metadata))


def collection_info(name: str, connection: sqlite3.Connection) -> CollectionInfo:
    with read_transaction(connection):
        meta = read_meta(connection)
        documents, chunks = read_counts(connection)
    return CollectionInfo(name=name, dimension=int(meta["dimension"]), index_kind=meta["index_kind"],
                          documents=documents, chunks=chunks, created=meta["created"],
                          metadata=json.loads(meta["metadata"]))


# --- locking ------------------------------------------------------------------------------------------------

class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers (writes are not starved); a thread
    may re-enter reading (a snapshot around searches), but cannot upgrade a read to a write (that deadlocks)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def held_by_current_thread(self) -> bool:
        return self._depth() > 0 or self._writer == threading.get_ident()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        depth = self._depth()
        counted = depth == 0 and self._writer != threading.get_ident()
        if counted:
            with self._condition:
                while self._writer is not None or self._writers_waiting:
                    self._condition.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if counted:
                with self._condition:
                    self._readers -= 1
                    if not self._readers:
                        self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        if self.held_by_current_thread():
            raise RuntimeError("this thread already holds the collection lock (no writes inside snapshot())")
        with self._condition:
            self._writers_waiting += 1
            while self._writer is not None or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = threading.get_ident()
        try:
            yield
        finally:
            with self._condition:
                self._writer = None
                self._condition.notify_all()


# --- the vector index -----------------------------------------------------------------------------------------

def index_structure(index: faiss.Index) -> str:
    if isinstance(index, faiss.IndexIVF):
        return "ivf"
    if isinstance(index, faiss.IndexIDMap):
        inner = faiss.downcast_index(index.index)
        if isinstance(inner, faiss.IndexHNSW):
            return "hnsw"
        if isinstance(inner, faiss.IndexFlat):
            return "flat"
    raise StoreError(f"unsupported FAISS index {type(index).__name__}")


def ivf_ids(index: faiss.IndexIVF) -> np.ndarray:
    lists, parts = index.invlists, []
    for number in range(index.nlist):
        size = lists.list_size(number)
        if size:
            pointer = lists.get_ids(number)
            parts.append(faiss.rev_swig_ptr(pointer, size).copy())
            lists.release_ids(number, pointer)
    return np.concatenate(parts) if parts else np.empty(0, dtype=np.int64)


class VectorIndex:
    """A FAISS inner-product index keyed by chunk id, whatever its structure. Not thread-safe: the collection's
    lock guards it.

    flat: IndexIDMap(IndexFlatIP), exact; removals are remove_ids.
    hnsw: IndexIDMap(IndexHNSWFlat), which cannot remove: removed ids become tombstones, filtered out of every
          search with an IDSelector, and the graph is rebuilt once tombstones pass HNSW_TOMBSTONE_RATIO.
    ivf:  IndexIVFFlat with its own ids (IndexIDMap's remove_ids is wrong for IVF, which does not renumber).
    """

    def __init__(self, index: faiss.Index) -> None:
        self.index = index
        self.structure = index_structure(index)
        self._tombstones: set[int] = set()
        self._tombstone_filter: tuple | None = None  # (IDSelectorNot, IDSelectorBatch): the Not points at the Batch

    @classmethod
    def empty(cls, structure: str, dimension: int) -> VectorIndex:
        description = f"IDMap,HNSW{HNSW_NEIGHBOURS}" if structure == "hnsw" else "IDMap,Flat"
        return cls(faiss.index_factory(dimension, description, faiss.METRIC_INNER_PRODUCT))

    @classmethod
    def build(cls, kind: str, dimension: int, ids: np.ndarray, vectors: np.ndarray) -> VectorIndex:
        if kind == "ivf" and len(ids) >= IVF_MIN_VECTORS:
            index = faiss.index_factory(dimension, f"IVF{ivf_list_count(len(ids))},Flat", faiss.METRIC_INNER_PRODUCT)
            index.train(np.ascontiguousarray(vectors, dtype=np.float32))
            built = cls(index)
        else:
            built = cls.empty("hnsw" if kind == "hnsw" else "flat", dimension)
        built.add(ids, vectors)
        return built

    @classmethod
    def deserialize(cls, data: bytes) -> VectorIndex:
        # already the concrete class, and the owner of the C++ object (downcast_index would not own it)
        return cls(faiss.deserialize_index(np.frombuffer(data, dtype=np.uint8)))

    def serialize(self) -> np.ndarray:
        return faiss.serialize_index(self.index)  # tombstoned vectors included; reconciling finds them again

    @property
    def dimension(self) -> int:
        return self.index.d

    @property
    def live_count(self) -> int:
        return self.index.ntotal - len(self._tombstones)

    @property
    def tombstone_count(self) -> int:
        return len(self._tombstones)

    def fits(self, kind: str, dimension: int) -> bool:
        allowed = {"flat": ("flat",), "hnsw": ("hnsw",), "ivf": ("flat", "ivf")}[kind]
        return self.dimension == dimension and self.structure in allowed

    def ids(self) -> np.ndarray:
        """The ids of the live vectors (tombstones excluded), unordered."""
        raw = ivf_ids(self.index) if self.structure == "ivf" else faiss.vector_to_array(self.index.id_map)
        if self._tombstones:
            raw = raw[~np.isin(raw, np.fromiter(self._tombstones, dtype=np.int64))]
        return raw

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if len(ids):
            self.index.add_with_ids(np.ascontiguousarray(vectors, dtype=np.float32), as_id_array(ids))

    def remove(self, ids: np.ndarray) -> None:
        ids = as_id_array(ids)
        if not len(ids):
            return
        if self.structure != "hnsw":
            self.index.remove_ids(ids)
            return
        present = ids[np.isin(ids, faiss.vector_to_array(self.index.id_map))]
        self._tombstones.update(present.tolist())
        tombstones = faiss.IDSelectorBatch(np.fromiter(self._tombstones, dtype=np.int64))
        self._tombstone_filter = (faiss.IDSelectorNot(tombstones), tombstones)

    def needs_rebuild(self, kind: str) -> bool:
        if self.structure == "hnsw":
            return len(self._tombstones) > HNSW_TOMBSTONE_RATIO * self.index.ntotal
        if kind != "ivf":
            return False
        if self.structure == "flat":
            return self.live_count >= IVF_MIN_VECTORS
        # retrain when the collection has grown (or shrunk) well past what the lists were sized for
        return self.live_count < IVF_MIN_VECTORS // 2 or ivf_list_count(self.live_count) >= 2 * self.index.nlist

    def search(self, query: np.ndarray, k: int, allowed: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (scores, ids) for one query; ``allowed`` restricts to those ids through an IDSelector (exact
        for flat; HNSW and IVF widen their search by the share of vectors the selector lets through)."""
        keep_alive = self._selector(allowed)
        selector = keep_alive[0] if keep_alive else None
        eligible = len(allowed) if allowed is not None else self.live_count
        share = max(eligible, 1) / max(self.index.ntotal, 1)
        scores, ids = self.index.search(query, k, params=self._search_parameters(k, selector, share))
        return scores[0], ids[0]

    def _selector(self, allowed: np.ndarray | None) -> tuple | None:
        if allowed is not None:  # ids read from SQLite are live, so no tombstone is among them
            return (faiss.IDSelectorBatch(as_id_array(allowed)),)
        return self._tombstone_filter

    def _search_parameters(self, k: int, selector: faiss.IDSelector | None,
                           share: float) -> faiss.SearchParameters | None:
        if self.structure == "hnsw":
            breadth = min(max(HNSW_MAX_EF_SEARCH, k), math.ceil(max(HNSW_EF_SEARCH, k) / share))
            return faiss.SearchParametersHNSW(efSearch=breadth, sel=selector)
        if self.structure == "ivf":
            probes = min(self.index.nlist, math.ceil(ivf_probes(self.index.nlist) / share))
            return faiss.SearchParametersIVF(nprobe=probes, sel=selector)
        return faiss.SearchParameters(sel=selector) if selector is not None else None


class GpuMirror:
    """A GPU copy of a flat index for unfiltered searches. Refreshed when the index is persisted, so it can
    lag; a search uses it only while it reflects the CPU index's generation, else the CPU index answers."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._resources = None
        self._copy: tuple[int, faiss.Index] | None = None  # (generation, index), swapped as one reference

    def refresh(self, vectors: VectorIndex, generation: int | None) -> None:
        if not self.enabled or vectors.structure != "flat" or generation is None:
            self._copy = None
            return
        try:
            if self._resources is None:
                self._resources = faiss.StandardGpuResources()
            self._copy = (generation, faiss.index_cpu_to_gpu(self._resources, 0, vectors.index))
        except Exception:  # e.g. out of GPU memory: the CPU index answers from now on
            logger.exception("copying the index to the GPU failed; searching on the CPU")
            self.enabled, self._copy = False, None

    def index_for(self, generation: int | None) -> faiss.Index | None:
        copy = self._copy
        return copy[1] if copy is not None and copy[0] == generation else None


# --- a collection -------------------------------------------------------------------------------------------

@dataclass
class _Transaction:
    connection: sqlite3.Connection
    generation: int | None = None

    def change(self) -> int:
        """Mark the transaction as a write: the generation it commits (bumped once)."""
        if self.generation is None:
            self.generation = bump_generation(self.connection)
        return self.generation


class Collection:
    """One collection: documents and chunks in SQLite, their vectors in a FAISS index that follows SQLite.

    Thread-safe. Open it through a Catalog (one object per name). Locks, always taken in this order:
    ``_write_lock`` serializes this process's writers (SQLite's own lock serializes processes); ``_rw`` guards
    the in-memory index: searches share it, and a commit plus the index update that follows it hold it
    exclusively, so a search sees the index and SQLite at one generation, never a half-applied write.
    """

    def __init__(self, name: str, path: Path, *, use_gpu: bool = True, persist_interval_s: float = 30.0) -> None:
        self.name = validate_name(name)
        self.path = Path(path)
        self._db_path = self.path / DB_FILE
        self._persist_interval_s = persist_interval_s
        self._rw = ReadWriteLock()
        self._write_lock = threading.Lock()
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        self._closed_error: StoreError | None = None
        self._identity = self._initial_identity()
        self._gpu = GpuMirror(use_gpu and gpu_available())
        self._generation: int | None = None  # the SQLite generation the in-memory index reflects
        self._persisted_generation: int | None = None
        self._last_persist = -math.inf
        try:
            self._read_settings()
            self._vectors = VectorIndex.empty("flat", self.dimension)
            self._load_index()
        except BaseException:
            self._close_connections()
            raise

    # -- opening -----------------------------------------------------------------------------------------

    def _initial_identity(self) -> tuple[int, int]:
        try:
            identity = file_identity(self._db_path)
            self._conn()
        except (OSError, sqlite3.OperationalError) as error:
            raise CollectionNotFound(f"collection {self.name!r} not found") from error
        return identity

    def _read_settings(self) -> None:
        meta = read_meta(self._conn())
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise IncompatibleCollection(
                f"collection {self.name!r} has schema {meta.get('schema_version')}, this store reads {SCHEMA_VERSION}")
        self.dimension = int(meta["dimension"])
        self.index_kind: str = meta["index_kind"]
        self.created: str = meta["created"]
        self.metadata: dict = json.loads(meta["metadata"])
        self._uid: str = meta["collection_uid"]

    def _load_index(self) -> None:
        remove_stale_temporaries(self.path)
        persisted = self._read_persisted_index()
        with self._write_lock, self._rw.writing():
            if persisted is None:
                self._rebuild_locked()
            else:
                self._vectors, self._persisted_generation = persisted
                self._reconcile_locked()
            self._maintain_and_refresh_gpu()

    def _maintain_and_refresh_gpu(self) -> None:
        """At open (locks held): a rebuild the structure asks for happens now, before anyone searches."""
        if self._vectors.needs_rebuild(self.index_kind):
            self._rebuild_locked()
        self._gpu.refresh(self._vectors, self._generation)

    def _read_persisted_index(self) -> tuple[VectorIndex, int] | None:
        try:
            meta = json.loads((self.path / INDEX_META_FILE).read_text())
            data = (self.path / INDEX_FILE).read_bytes()
        except (OSError, ValueError):
            return None
        # the checksum comes first: faiss may crash rather than raise on a torn file
        if meta.get("collection_uid") != self._uid or meta.get("sha256") != hashlib.sha256(data).hexdigest():
            logger.warning("collection %s: index.faiss does not match its metadata; rebuilding from SQLite", self.name)
            return None
        try:
            vectors, generation = VectorIndex.deserialize(data), int(meta["generation"])
        except (RuntimeError, StoreError, KeyError, TypeError, ValueError):
            logger.warning("collection %s: index.faiss is unreadable; rebuilding from SQLite", self.name)
            return None
        return (vectors, generation) if vectors.fits(self.index_kind, self.dimension) else None

    # -- connections and liveness ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        """This thread's connection: SQLite connections must not be shared by concurrent threads."""
        connection = getattr(self._local, "connection", None)
        if connection is None:
            connection = connect(self._db_path)
            with self._connections_lock:
                self._connections.append(connection)
            self._local.connection = connection
        return connection

    def _close_connections(self) -> None:
        with self._connections_lock:
            for connection in self._connections:
                connection.close()
            self._connections.clear()

    def is_usable(self) -> bool:
        """Open, and its folder not deleted (or replaced) by another catalog or process."""
        if self._closed_error is not None:
            return False
        try:
            return file_identity(self._db_path) == self._identity
        except OSError:
            return False

    def _check_usable(self) -> None:
        if self._closed_error is not None:  # a fresh instance: re-raising one would pile up tracebacks
            raise type(self._closed_error)(*self._closed_error.args)
        if not self.is_usable():
            raise CollectionNotFound(f"collection {self.name!r} was deleted")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._rw.reading():
            self._check_usable()
            yield self._conn()

    # -- following SQLite -----------------------------------------------------------------------------------

    def _sync(self) -> None:
        """Catch up with writes another process (or Catalog) committed; a no-op inside snapshot()."""
        inside_snapshot = self._rw.held_by_current_thread()
        with self._reading() as connection:
            if inside_snapshot:
                return
            current = read_generation(connection)
        if current != self._generation:
            with self._rw.writing():
                self._check_usable()
                self._catch_up_locked()

    def _catch_up_locked(self) -> None:
        """Bring the index to SQLite's generation from the removal log and the generation column.
        Any failure leaves the generation unknown, so the next sync rebuilds from SQLite."""
        known, self._generation = self._generation, None
        if known is None:
            self._rebuild_locked()
            return
        connection = self._conn()
        with read_transaction(connection):
            current = read_generation(connection)
            floor = connection.execute("SELECT value FROM meta WHERE key = 'log_floor'").fetchone()[0]
            if current == known:
                self._generation = known
                return
            if current < known or known < floor:  # log pruned past us (or a foreign database): compare ids
                changes = None
            else:
                changes = self._changes_since(connection, known)
        if changes is None:
            self._generation = known
            self._reconcile_locked()
            return
        removed, added_ids, added_vectors = changes
        self._vectors.remove(removed)
        self._vectors.add(added_ids, added_vectors)
        self._generation = current

    def _changes_since(self, connection: sqlite3.Connection, generation: int) -> tuple:
        removed = np.fromiter(
            (row[0] for row in connection.execute("SELECT id FROM removed_chunks WHERE generation > ?", (generation,))),
            dtype=np.int64)
        rows = connection.execute("SELECT id, vector FROM chunks WHERE generation > ? ORDER BY id", (generation,))
        return (removed, *ids_and_vectors(rows, self.dimension))

    def _reconcile_locked(self) -> None:
        """Make the index hold exactly SQLite's chunk ids: remove extra ids, add missing vectors. Right for any
        index built from this collection at any earlier generation, since an id never changes its vector."""
        self._generation = None
        connection = self._conn()
        with read_transaction(connection):
            current = read_generation(connection)
            live = all_chunk_ids(connection)
            indexed = self._vectors.ids()
            missing = np.setdiff1d(live, indexed, assume_unique=True)
            rows = connection.execute("SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                                      (json.dumps(missing.tolist()),))
            added_ids, added_vectors = ids_and_vectors(rows, self.dimension)
        self._vectors.remove(np.setdiff1d(indexed, live, assume_unique=True))
        self._vectors.add(added_ids, added_vectors)
        self._generation = current

    def _read_all_vectors(self) -> tuple[int, np.ndarray, np.ndarray]:
        connection = self._conn()
        with read_transaction(connection):
            generation = read_generation(connection)
            rows = connection.execute("SELECT id, vector FROM chunks ORDER BY id")
            ids, vectors = ids_and_vectors(rows, self.dimension)
        return generation, ids, vectors

    def _rebuild_locked(self) -> None:
        self._generation = None
        generation, ids, vectors = self._read_all_vectors()
        self._vectors = VectorIndex.build(self.index_kind, self.dimension, ids, vectors)
        self._generation = generation
        logger.info("collection %s: built a %s index of %d vectors", self.name, self._vectors.structure, len(ids))

    def _maintain(self) -> None:
        """With ``_write_lock`` held: rebuild when the structure asks (HNSW full of tombstones, IVF to train or
        retrain). The new index is built while searches go on against the old one, then swapped in."""
        with self._rw.reading():
            if not self._vectors.needs_rebuild(self.index_kind):
                return
        generation, ids, vectors = self._read_all_vectors()
        rebuilt = VectorIndex.build(self.index_kind, self.dimension, ids, vectors)
        with self._rw.writing():
            self._vectors, self._generation = rebuilt, generation
            self._catch_up_locked()  # another process may have written while we built
        logger.info("collection %s: rebuilt its %s index (%d vectors)", self.name, rebuilt.structure, len(ids))

    # -- writing ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def _write_transaction(self) -> Iterator[_Transaction]:
        """One SQLite transaction. It commits only if it changed something, and commits under the exclusive
        lock together with the index update, so searches see both or neither."""
        self._check_usable()
        connection = self._conn()
        try:
            connection.execute("BEGIN IMMEDIATE")
            transaction = _Transaction(connection)
            try:
                yield transaction
                if transaction.generation is None:
                    connection.execute("ROLLBACK")
                    return
                with self._rw.writing():
                    connection.execute("COMMIT")
                    self._follow_commit_locked()
            except BaseException:
                if connection.in_transaction:
                    connection.execute("ROLLBACK")
                raise
        except sqlite3.OperationalError as error:
            if "locked" in str(error) or "busy" in str(error):
                raise StoreBusy(f"collection {self.name!r} is busy: {error}") from error
            raise

    def _follow_commit_locked(self) -> None:
        try:
            self._catch_up_locked()
        except Exception:  # the write is committed; the next search rebuilds the index from SQLite
            logger.exception("collection %s: updating the index after a commit failed", self.name)

    def _after_write(self) -> None:
        """Housekeeping after a commit. It never fails the write, which is committed: the index is a cache."""
        try:
            self._maintain()
            if time.monotonic() - self._last_persist >= self._persist_interval_s:
                self._persist()
        except Exception:
            logger.exception("collection %s: index maintenance after a write failed", self.name)

    def upsert_document(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray, *,
                        metadata: dict | None = None, size_bytes: int | None = None,
                        force: bool = False) -> UpsertResult:
        """Add a document or replace its chunks, in one transaction. Same content hash: "unchanged", no write
        (``force`` rewrites anyway, e.g. after changing the chunker)."""
        rows = self._chunk_rows(document, chunks, vectors)
        size = size_bytes if size_bytes is not None else sum(len(page.text.encode()) for page in document.pages)
        document_row = (document.source, document.title, document.media_type, document.content_hash, len(rows),
                        size, utc_now(), dumps(metadata or {}))
        with self._write_lock:
            with self._write_transaction() as transaction:
                connection = transaction.connection
                previous = connection.execute("SELECT content_hash, chunks FROM documents WHERE source = ?",
                                              (document.source,)).fetchone()
                if previous is not None and previous[0] == document.content_hash and not force:
                    return UpsertResult("unchanged", previous[1], (), read_generation(connection))
                generation = transaction.change()
                self._remove_source_chunks(connection, document.source, generation)
                ids = self._insert_chunks(connection, rows, generation)
                connection.execute(f"INSERT OR REPLACE INTO documents ({DOCUMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                                   document_row)
            self._after_write()
        return UpsertResult("replaced" if previous else "added", len(ids), tuple(ids), generation)

    def delete_document(self, source: str) -> bool:
        """Remove a document and its chunks; False if the collection did not have it."""
        with self._write_lock:
            with self._write_transaction() as transaction:
                connection = transaction.connection
                if connection.execute("SELECT 1 FROM documents WHERE source = ?", (source,)).fetchone() is None:
                    return False
                self._remove_source_chunks(connection, source, transaction.change())
                connection.execute("DELETE FROM documents WHERE source = ?", (source,))
            self._after_write()
        return True

    def _chunk_rows(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[tuple]:
        matrix = self._vector_matrix(vectors, len(chunks))
        rows = []
        for chunk, vector in zip(chunks, matrix):
            if chunk.source != document.source:
                raise InvalidDocument(f"chunk of {chunk.source!r} given with document {document.source!r}")
            rows.append((chunk.source, chunk.index, chunk.text, chunk.page, chunk.start, chunk.end, chunk.title,
                         chunk.content_hash, dumps(chunk.metadata), vector.tobytes()))
        if len({row[1] for row in rows}) != len(rows):
            raise InvalidDocument(f"{document.source!r}: chunk indexes repeat")
        return rows

    def _vector_matrix(self, vectors: np.ndarray, rows: int) -> np.ndarray:
        matrix = np.asarray(vectors, dtype=np.float32)
        if rows == 0 and matrix.size == 0:
            return np.empty((0, self.dimension), dtype=np.float32)
        if matrix.ndim != 2 or matrix.shape[1] != self.dimension:
            raise DimensionMismatch(f"vectors of shape {matrix.shape}; collection {self.name!r} has dimension "
                                    f"{self.dimension}")
        if matrix.shape[0] != rows:
            raise InvalidDocument(f"{rows} chunks but {matrix.shape[0]} vectors")
        if not np.isfinite(matrix).all():
            raise InvalidDocument("vectors must be finite")
        return np.ascontiguousarray(matrix)

    @staticmethod
    def _remove_source_chunks(connection: sqlite3.Connection, source: str, generation: int) -> None:
        # logged so that other processes can remove these ids from their index (the FTS rows go by trigger)
        connection.execute("INSERT INTO removed_chunks (id, generation) SELECT id, ? FROM chunks WHERE source = ?",
                           (generation, source))
        connection.execute("DELETE FROM chunks WHERE source = ?", (source,))

    @staticmethod
    def _insert_chunks(connection: sqlite3.Connection, rows: list[tuple], generation: int) -> list[int]:
        sql = (f"INSERT INTO chunks ({CHUNK_COLUMNS.removeprefix('id, ')}, vector, generation) "
               "VALUES (?,?,?,?,?,?,?,?,?,?,?)")
        return [connection.execute(sql, (*row, generation)).lastrowid for row in rows]

    # -- reading ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Collection]:
        """Hold the collection still: searches and get_chunks inside see one generation, so every id a search
        returns is found by get_chunks. (Writes of other processes are picked up at the next sync outside.)
        Writing from inside a snapshot raises RuntimeError."""
        self._sync()
        with self._reading():
            yield self

    def dense_search(self, vector: np.ndarray, k: int, sources: Sequence[str] | None = None) -> list[tuple[int, float]]:
        """The k chunks nearest ``vector`` by inner product (cosine for normalized vectors), best first.
        ``sources`` restricts the search to those documents through an IDSelector inside FAISS, so a filter
        never starves the top k (no search-wider-then-filter)."""
        query = self._query_matrix(vector)
        sources = [sources] if isinstance(sources, str) else sources
        if k <= 0 or (sources is not None and not sources):
            return []
        self._sync()
        with self._reading() as connection:
            if sources is None:
                scores, ids = self._search_everything(query, k)
            else:
                scores, ids = self._search_sources(connection, query, k, sources)
        return [(int(chunk_id), float(score)) for chunk_id, score in zip(ids, scores) if chunk_id >= 0]

    def _search_everything(self, query: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        gpu_index = self._gpu.index_for(self._generation)
        if gpu_index is not None:
            scores, ids = gpu_index.search(query, k)
            return scores[0], ids[0]
        return self._vectors.search(query, k)

    def _search_sources(self, connection: sqlite3.Connection, query: np.ndarray, k: int,
                        sources: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """A few documents are scored exactly from their stored vectors (HNSW and IVF can miss a small
        subset); more go through the index with an IDSelector."""
        allowed = self._ids_of_sources(connection, sources)
        if self._vectors.structure == "flat" or len(allowed) > EXACT_FILTER_MAX:
            return self._vectors.search(query, k, allowed) if len(allowed) else (np.empty(0), np.empty(0))
        rows = connection.execute("SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                                  (json.dumps(allowed.tolist()),))
        return exact_search(query, *ids_and_vectors(rows, self.dimension), k)

    def _query_matrix(self, vector: np.ndarray) -> np.ndarray:
        query = np.asarray(vector, dtype=np.float32)
        query = query.reshape(1, -1) if query.ndim == 1 else query
        if query.shape != (1, self.dimension):
            raise DimensionMismatch(f"query of shape {np.shape(vector)}; collection {self.name!r} has dimension "
                                    f"{self.dimension}")
        if not np.isfinite(query).all():
            raise InvalidArgument("query vector must be finite")
        return np.ascontiguousarray(query)

    @staticmethod
    def _ids_of_sources(connection: sqlite3.Connection, sources: Sequence[str]) -> np.ndarray:
        rows = connection.execute("SELECT id FROM chunks WHERE source IN (SELECT value FROM json_each(?))",
                                  (json.dumps(list(sources)),))
        return np.fromiter((row[0] for row in rows), dtype=np.int64)

    def lexical_search(self, query: str, k: int, sources: Sequence[str] | None = None) -> list[tuple[int, float]]:
        """BM25 over chunk text (FTS5), best first; scores are -bm25(), so higher is better. Words of the query
        are quoted terms joined by OR: no user text can be FTS5 syntax."""
        match = fts_query(query)
        sources = [sources] if isinstance(sources, str) else sources
        if match is None or k <= 0 or (sources is not None and not sources):
            return []
        # The FTS index's rowids are chunk ids (triggers keep it in step): join the chunks only to filter.
        sql = "SELECT chunks_fts.rowid, bm25(chunks_fts) FROM chunks_fts"
        parameters: list = [match]
        if sources is not None:
            sql += (" JOIN chunks ON chunks.id = chunks_fts.rowid WHERE chunks_fts MATCH ? AND chunks.source IN "
                    "(SELECT value FROM json_each(?))")
            parameters.append(json.dumps(list(sources)))
        else:
            sql += " WHERE chunks_fts MATCH ?"
        sql += " ORDER BY bm25(chunks_fts) LIMIT ?"
        with self._reading() as connection:
            rows = connection.execute(sql, (*parameters, k)).fetchall()
        return [(chunk_id, -rank) for chunk_id, rank in rows]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these chunks, one row per id in the order given (zeros for an id not stored)."""
        wanted = [int(chunk_id) for chunk_id in ids]
        with self._reading() as connection:
            rows = connection.execute("SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                                      (json.dumps(wanted),))
            found, vectors = ids_and_vectors(rows, self.dimension)
        row_of = {int(chunk_id): row for row, chunk_id in enumerate(found)}
        out = np.zeros((len(wanted), self.dimension), dtype=np.float32)
        for position, chunk_id in enumerate(wanted):
            if chunk_id in row_of:
                out[position] = vectors[row_of[chunk_id]]
        return out

    def get_chunks(self, ids: Iterable[int]) -> list[StoredChunk]:
        """The chunks with these ids, in the order given (repeats dropped); ids no longer stored are skipped."""
        wanted = list(dict.fromkeys(int(chunk_id) for chunk_id in ids))
        if not wanted:
            return []
        with self._reading() as connection:
            rows = connection.execute(f"SELECT {CHUNK_COLUMNS} FROM chunks WHERE id IN "
                                      "(SELECT value FROM json_each(?))", (json.dumps(wanted),)).fetchall()
        found = {row[0]: stored_chunk(row) for row in rows}
        return [found[chunk_id] for chunk_id in wanted if chunk_id in found]

    def document_hash(self, source: str) -> str | None:
        """The stored content hash of ``source``: compare before embedding to skip unchanged files for free."""
        with self._reading() as connection:
            row = connection.execute("SELECT content_hash FROM documents WHERE source = ?", (source,)).fetchone()
        return row[0] if row else None

    def list_documents(self) -> list[DocumentInfo]:
        with self._reading() as connection:
            rows = connection.execute(f"SELECT {DOCUMENT_COLUMNS} FROM documents ORDER BY source").fetchall()
        return [document_info(row) for row in rows]

    def info(self) -> CollectionInfo:
        with self._reading() as connection:
            return collection_info(self.name, connection)

    def stats(self) -> CollectionStats:
        self._sync()
        with self._reading() as connection:
            documents, chunks = read_counts(connection)
            return CollectionStats(
                name=self.name, dimension=self.dimension, index_kind=self.index_kind, documents=documents,
                chunks=chunks, created=self.created, metadata=self.metadata, generation=self._generation,
                index_structure=self._vectors.structure, vectors=self._vectors.live_count,
                tombstones=self._vectors.tombstone_count, persisted_generation=self._persisted_generation,
                gpu=self._gpu.index_for(self._generation) is not None)

    def indexed_ids(self) -> np.ndarray:
        """The chunk ids the vector index holds (deleted HNSW vectors excluded), sorted."""
        self._sync()
        with self._reading():
            return np.sort(self._vectors.ids())

    def verify(self) -> list[str]:
        """Problems found comparing SQLite's chunks, its documents, its FTS index and the FAISS index; empty
        when the collection is consistent."""
        self._sync()
        with self._reading() as connection, read_transaction(connection):
            live = all_chunk_ids(connection)
            indexed = np.sort(self._vectors.ids())
            problems = self._vector_problems(live, indexed)
            problems += self._row_problems(connection, live)
        return problems

    @staticmethod
    def _vector_problems(live: np.ndarray, indexed: np.ndarray) -> list[str]:
        problems = []
        if missing := len(np.setdiff1d(live, indexed)):
            problems.append(f"{missing} chunks have no vector in the index")
        if orphans := len(np.setdiff1d(indexed, live)):
            problems.append(f"{orphans} vectors in the index have no chunk")
        if len(indexed) != len(np.unique(indexed)):
            problems.append("the index holds an id twice")
        return problems

    @staticmethod
    def _row_problems(connection: sqlite3.Connection, live: np.ndarray) -> list[str]:
        problems = []
        miscounted = connection.execute(
            "SELECT count(*) FROM documents d WHERE d.chunks != (SELECT count(*) FROM chunks c WHERE c.source = d.source)"
        ).fetchone()[0]
        if miscounted:
            problems.append(f"{miscounted} documents have a chunk count that does not match their chunks")
        if orphans := connection.execute(
                "SELECT count(*) FROM chunks WHERE source NOT IN (SELECT source FROM documents)").fetchone()[0]:
            problems.append(f"{orphans} chunks belong to no document")
        fts_ids = np.fromiter((row[0] for row in connection.execute("SELECT id FROM chunks_fts_docsize ORDER BY id")),
                              dtype=np.int64)
        if not np.array_equal(fts_ids, live):
            problems.append(f"the full-text index has {len(fts_ids)} rows for {len(live)} chunks")
        return problems

    # -- persisting and closing -------------------------------------------------------------------------------

    def flush(self) -> None:
        """Write the index to disk now (it is otherwise written at most every ``persist_interval_s``)."""
        with self._write_lock:
            self._check_usable()
            self._persist()

    def _persist(self) -> None:
        """With ``_write_lock`` held. index.faiss first, then the metadata naming its generation and checksum:
        a crash between the two leaves a mismatch that opening detects and repairs."""
        with self._rw.reading():
            generation = self._generation
            if generation is None or generation == self._persisted_generation:
                return
            data = self._vectors.serialize()
            self._gpu.refresh(self._vectors, generation)
        meta = {"collection_uid": self._uid, "generation": generation, "sha256": hashlib.sha256(data).hexdigest(),
                "structure": self._vectors.structure, "written_at": utc_now()}
        write_atomically(self.path / INDEX_FILE, data)
        write_atomically(self.path / INDEX_META_FILE, json.dumps(meta).encode())
        self._persisted_generation = generation
        self._last_persist = time.monotonic()

    def close(self) -> None:
        """Persist the index if it moved, and release the database. Later calls raise CollectionClosed."""
        self._retire(CollectionClosed(f"collection {self.name!r} is closed"), persist=True)

    def _retire(self, error: StoreError, *, persist: bool) -> None:
        with self._write_lock:
            if self._closed_error is not None:
                return
            if persist and self.is_usable():
                try:
                    self._persist()
                except OSError:
                    logger.exception("collection %s: could not persist its index on close", self.name)
            with self._rw.writing():
                self._closed_error = error
                self._close_connections()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


# --- the catalog ------------------------------------------------------------------------------------------

class Catalog:
    """The collections under ``root``, one folder each. One Collection object per name; thread-safe."""

    def __init__(self, root: Path | str, *, use_gpu: bool = True, persist_interval_s: float = 30.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._use_gpu = use_gpu
        self._persist_interval_s = persist_interval_s
        self._lock = threading.Lock()
        self._open: dict[str, Collection] = {}
        self._sweep_leftovers()

    def _sweep_leftovers(self) -> None:
        """Finish deletes and drop creates that a crash interrupted."""
        for path in self.root.iterdir():
            if path.name.startswith(DELETED_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(CREATING_PREFIX):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > STALE_STAGING_S:
                        shutil.rmtree(path, ignore_errors=True)

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self._path(name) / DB_FILE).is_file()

    def create(self, name: str, dimension: int, index_kind: IndexKind = "flat",
               metadata: dict | None = None) -> Collection:
        """Create a collection atomically: built in a staging folder, then renamed into place."""
        path = self._path(name)
        validate_index_kind(index_kind)
        if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension <= 0:
            raise InvalidArgument(f"dimension must be a positive integer, not {dimension!r}")
        with self._lock:
            if path.exists():
                raise CollectionExists(f"collection {name!r} already exists")
            staging = self.root / f"{CREATING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                initialize_database(staging / DB_FILE, dimension, index_kind, metadata or {})
                os.rename(staging, path)  # fails if another process created the name meanwhile
            except OSError as error:
                shutil.rmtree(staging, ignore_errors=True)
                if path.exists():
                    raise CollectionExists(f"collection {name!r} already exists") from error
                raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fsync_dir(self.root)
            return self._open_locked(name)

    def open(self, name: str) -> Collection:
        self._path(name)
        with self._lock:
            return self._open_locked(name)

    def _open_locked(self, name: str) -> Collection:
        cached = self._open.get(name)
        if cached is not None and cached.is_usable():
            return cached
        if cached is not None:  # closed by its user, or deleted by another catalog: let it go
            cached._retire(CollectionNotFound(f"collection {name!r} was deleted"), persist=False)
            del self._open[name]
        if not self.exists(name):
            raise CollectionNotFound(f"collection {name!r} not found")
        collection = Collection(name, self.root / name, use_gpu=self._use_gpu,
                                persist_interval_s=self._persist_interval_s)
        self._open[name] = collection
        return collection

    def list(self) -> list[CollectionInfo]:
        infos = []
        for path in sorted(self.root.iterdir()):
            if not COLLECTION_NAME.fullmatch(path.name) or not (path / DB_FILE).is_file():
                continue
            with contextlib.suppress(sqlite3.Error, CollectionNotFound):  # deleted while we looked
                infos.append(self._info(path.name))
        return infos

    def _info(self, name: str) -> CollectionInfo:
        with self._lock:
            cached = self._open.get(name)
        if cached is not None and cached.is_usable():
            return cached.info()
        connection = connect(self.root / name / DB_FILE)
        try:
            return collection_info(name, connection)
        finally:
            connection.close()

    def delete(self, name: str) -> None:
        """Delete atomically: the folder is renamed to a tombstone (gone from the catalog at once), then removed.
        A Collection object still held raises CollectionNotFound from then on."""
        path = self._path(name)
        with self._lock:
            if not self.exists(name):
                raise CollectionNotFound(f"collection {name!r} not found")
            cached = self._open.pop(name, None)
            if cached is not None:
                cached._retire(CollectionNotFound(f"collection {name!r} was deleted"), persist=False)
            tombstone = self.root / f"{DELETED_PREFIX}{name}-{uuid.uuid4().hex}"
            try:
                os.rename(path, tombstone)
            except FileNotFoundError as error:
                raise CollectionNotFound(f"collection {name!r} not found") from error
            fsync_dir(self.root)
        shutil.rmtree(tombstone, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            collections, self._open = list(self._open.values()), {}
        for collection in collections:
            collection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
