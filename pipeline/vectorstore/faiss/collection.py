"""One FAISS + SQLite collection (synchronous; ``FaissCollection`` in nimrag.pipeline.vectorstore.faiss.store is its
async face). SQLite holds documents, chunks and their vectors; the in-memory FAISS index follows SQLite by
generation: right after each commit of this process, and before each search when another process has written,
it adds the chunks and removes the ids that changed since the generation it holds. A process killed at any
moment leaves SQLite consistent (transactions are all-or-nothing) and index.faiss at worst stale or torn, which
opening detects (checksum) and repairs from SQLite.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from nimrag.pipeline.documents import Chunk, ParsedDocument
from nimrag.pipeline.sqlite import connect, is_busy, read_transaction
from nimrag.pipeline.vectorstore.base import (
    CollectionClosed,
    CollectionInfo,
    CollectionNotFound,
    CollectionOptions,
    DocumentInfo,
    IncompatibleCollection,
    SearchHit,
    StoreBusy,
    StoredChunk,
    StoreError,
    UpsertResult,
    check_chunks,
    checked_query,
    checked_vectors,
    validate_name,
)
from nimrag.pipeline.vectorstore.faiss.index import (
    GpuMirror,
    VectorIndex,
    exact_search,
    gpu_available,
    vector_problems,
)
from nimrag.pipeline.vectorstore.faiss.locking import ReadWriteLock
from nimrag.pipeline.vectorstore.faiss.persistence import (
    file_identity,
    read_index,
    remove_stale_temporaries,
    write_index,
)
from nimrag.pipeline.vectorstore.faiss.schema import (
    CHUNK_COLUMNS,
    DB_FILE,
    DOCUMENT_COLUMNS,
    SCHEMA_VERSION,
    all_chunk_ids,
    bump_generation,
    collection_info,
    document_info,
    fts_query,
    ids_and_vectors,
    ids_of_sources,
    insert_chunks,
    read_counts,
    read_generation,
    read_meta,
    remove_source_chunks,
    row_problems,
    stored_chunk,
    vector_rows,
)
from nimrag.pipeline.vectorstore.records import dumps, utc_now

if TYPE_CHECKING:
    from typing_extensions import Self

logger = logging.getLogger(__name__)

EXACT_FILTER_MAX = 4096  # a source filter down to this many chunks is searched exactly, whatever the index


@dataclass(frozen=True)
class CollectionStats(CollectionInfo):
    """The FAISS backend's view of a collection, beyond the contract's CollectionInfo."""
    generation: int | None = None  # None only while the index is being repaired after a failure
    index_structure: str = "flat"  # what the index is now: an "ivf" collection stays flat until trained
    vectors: int = 0  # live vectors in the index
    tombstones: int = 0  # deleted vectors an HNSW graph still holds (filtered out of results)
    persisted_generation: int | None = None
    gpu: bool = False


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
        persisted = read_index(self.path, self._uid, self.name)
        return persisted if persisted and persisted[0].fits(self.index_kind, self.dimension) else None

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
            added_ids, added_vectors = ids_and_vectors(vector_rows(connection, missing), self.dimension)
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
            if is_busy(error):
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
                    return UpsertResult("unchanged", previous[1])
                generation = transaction.change()
                remove_source_chunks(connection, document.source, generation)
                ids = insert_chunks(connection, rows, generation)
                connection.execute(f"INSERT OR REPLACE INTO documents ({DOCUMENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?)",
                                   document_row)
            self._after_write()
        return UpsertResult("replaced" if previous else "added", len(ids), tuple(ids))

    def delete_document(self, source: str) -> bool:
        """Remove a document and its chunks; False if the collection did not have it."""
        with self._write_lock:
            with self._write_transaction() as transaction:
                connection = transaction.connection
                if connection.execute("SELECT 1 FROM documents WHERE source = ?", (source,)).fetchone() is None:
                    return False
                remove_source_chunks(connection, source, transaction.change())
                connection.execute("DELETE FROM documents WHERE source = ?", (source,))
            self._after_write()
        return True

    def _chunk_rows(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[tuple]:
        matrix = checked_vectors(vectors, len(chunks), self.dimension, self.name)
        check_chunks(document, chunks)
        return [(chunk.source, chunk.index, chunk.text, chunk.page, chunk.start, chunk.end, chunk.title,
                 chunk.content_hash, dumps(chunk.metadata), vector.tobytes()) for chunk, vector in zip(chunks, matrix)]

    # -- reading ----------------------------------------------------------------------------------------------

    @contextlib.contextmanager
    def snapshot(self) -> Iterator[Collection]:
        """Hold the collection still: searches and get_chunks inside see one generation, so every id a search
        returns is found by get_chunks. (Writes of other processes are picked up at the next sync outside.)
        Writing from inside a snapshot raises RuntimeError."""
        self._sync()
        with self._reading():
            yield self

    def dense_search(self, vector: np.ndarray, k: int, sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        """The k chunks nearest ``vector`` by inner product (cosine for normalized vectors), best first.
        ``sources`` restricts the search to those documents through an IDSelector inside FAISS, so a filter
        never starves the top k (no search-wider-then-filter)."""
        query = checked_query(vector, self.dimension, self.name)
        sources = [sources] if isinstance(sources, str) else sources
        if k <= 0 or (sources is not None and not sources):
            return []
        self._sync()
        with self._reading() as connection:
            if sources is None:
                scores, ids = self._search_everything(query, k)
            else:
                scores, ids = self._search_sources(connection, query, k, sources)
        return [SearchHit(int(chunk_id), float(score)) for chunk_id, score in zip(ids, scores) if chunk_id >= 0]

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
        allowed = ids_of_sources(connection, sources)
        if self._vectors.structure == "flat" or len(allowed) > EXACT_FILTER_MAX:
            return self._vectors.search(query, k, allowed) if len(allowed) else (np.empty(0), np.empty(0))
        return exact_search(query, *ids_and_vectors(vector_rows(connection, allowed), self.dimension), k)

    def lexical_search(self, query: str, k: int, sources: Sequence[str] | str | None = None) -> list[SearchHit]:
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
        return [SearchHit(chunk_id, -rank) for chunk_id, rank in rows]

    def get_vectors(self, ids: Sequence[int]) -> np.ndarray:
        """The stored vectors of these chunks, one row per id in the order given (zeros for an id not stored)."""
        wanted = [int(chunk_id) for chunk_id in ids]
        with self._reading() as connection:
            found, vectors = ids_and_vectors(vector_rows(connection, wanted), self.dimension)
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
                name=self.name, dimension=self.dimension, documents=documents, chunks=chunks, created=self.created,
                metadata=self.metadata, options=CollectionOptions(index=self.index_kind), generation=self._generation,
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
            problems = vector_problems(live, indexed)
            problems += row_problems(connection, live)
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
            data, structure = self._vectors.serialize(), self._vectors.structure
            self._gpu.refresh(self._vectors, generation)
        write_index(self.path, self._uid, generation, data, structure)
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

