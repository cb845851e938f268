"""A collection's SQLite database, the source of truth: its schema and the queries on it that are not a
collection's own logic (meta, generations, row to record conversions, the FTS5 query).

Every write is one transaction that bumps the collection's ``generation`` and logs the chunk ids it removes
(``removed_chunks``), so that any process's FAISS index can follow SQLite by generation. Chunk ids are
AUTOINCREMENT rowids, never reused, so an id always means the same vector.
"""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from nimrag.pipeline.documents import Chunk
from nimrag.pipeline.sqlite import connect, read_transaction, use_wal, write_transaction
from nimrag.pipeline.vectorstore.base import (
    CollectionInfo,
    CollectionOptions,
    DocumentInfo,
    StoredChunk,
)
from nimrag.pipeline.vectorstore.records import dumps, utc_now

SCHEMA_VERSION = 1
DB_FILE = "chunks.sqlite"
REMOVAL_LOG_GENERATIONS = 1000  # how many generations back another process can catch up incrementally
MAX_QUERY_TERMS = 64
# Lucene's English stop words, which Anserini's BM25 drops too: they weigh next to nothing in BM25, yet each
# matches most chunks, and FTS5 ranks every chunk a query matches (at 100k chunks, hundreds of milliseconds).
STOPWORDS = frozenset(["a", "an", "and", "are", "as", "at", "be", "but", "by", "for", "if", "in", "into", "is", "it", "no", "not", "of", "on", "or", "such", "that", "the", "their", "then", "there", "these", "they", "this", "to", "was", "will", "with"])


def fts_query(text: str) -> str | None:
    """An FTS5 query matching any of the words of ``text`` but stop words (unless it has nothing else): each
    word quoted, so no user text is syntax."""
    words = list(dict.fromkeys(word.lower() for word in re.findall(r"\w+", text or "")))
    if not words:
        return None
    words = [word for word in words if word not in STOPWORDS] or words
    return " OR ".join(f'"{word}"' for word in words[:MAX_QUERY_TERMS])


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


def initialize_database(path: Path, dimension: int, index_kind: str, metadata: dict) -> None:
    connection = connect(path, create=True)
    try:
        use_wal(connection)
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


def vector_rows(connection: sqlite3.Connection, ids: Iterable[int]) -> sqlite3.Cursor:
    """(id, vector blob) of the chunks among ``ids``, in no particular order."""
    return connection.execute("SELECT id, vector FROM chunks WHERE id IN (SELECT value FROM json_each(?))",
                              (json.dumps(ids.tolist() if isinstance(ids, np.ndarray) else [int(i) for i in ids]),))


def ids_of_sources(connection: sqlite3.Connection, sources: Iterable[str]) -> np.ndarray:
    rows = connection.execute("SELECT id FROM chunks WHERE source IN (SELECT value FROM json_each(?))",
                              (json.dumps(list(sources)),))
    return np.fromiter((row[0] for row in rows), dtype=np.int64)


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
    return CollectionInfo(name=name, dimension=int(meta["dimension"]), documents=documents, chunks=chunks,
                          created=meta["created"], metadata=json.loads(meta["metadata"]),
                          options=CollectionOptions(index=meta["index_kind"]))


def read_info(name: str, path: Path) -> CollectionInfo:
    """The info of a collection no object holds open, from its own short-lived connection."""
    connection = connect(path)
    try:
        return collection_info(name, connection)
    finally:
        connection.close()


def remove_source_chunks(connection: sqlite3.Connection, source: str, generation: int) -> None:
    # logged so that other processes can remove these ids from their index (the FTS rows go by trigger)
    connection.execute("INSERT INTO removed_chunks (id, generation) SELECT id, ? FROM chunks WHERE source = ?",
                       (generation, source))
    connection.execute("DELETE FROM chunks WHERE source = ?", (source,))


def insert_chunks(connection: sqlite3.Connection, rows: list[tuple], generation: int) -> list[int]:
    sql = (f"INSERT INTO chunks ({CHUNK_COLUMNS.removeprefix('id, ')}, vector, generation) "
           "VALUES (?,?,?,?,?,?,?,?,?,?,?)")
    return [connection.execute(sql, (*row, generation)).lastrowid for row in rows]


def row_problems(connection: sqlite3.Connection, live: np.ndarray) -> list[str]:
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
