"""One collection on Milvus: a document's chunks written all-or-nothing without transactions, and searches that
only ever see whole documents.

Milvus has no multi-row transactions, so a write is made atomic by its document record (schema.py). Each write
draws a new ``version`` (a nanosecond clock, increasing within a process) and:

1. marks the record ``pending=version`` (an unknown document gets a record with ``version=0``: not listed);
2. inserts the new chunks, each carrying ``version``;
3. rewrites the record with ``version=version`` and the document's new fields: the commit, one row upsert;
4. deletes the document's chunks of older versions.

Readers keep a chunk only if its version is its document's committed version (``_visible``: one query of the
documents collection per search or read), so before step 3 they see the old chunks only and after it the new
ones only, whatever a crash or another replica leaves between steps: a half-written document is never visible.
Deleting marks the record ``deleting`` (hidden at once), deletes the chunks, then the record. What a crash
leaves behind (chunks of a version never committed, a record still ``deleting``) is invisible and swept when
the collection is next opened (``sweep``) or the document next written.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from nimrag.pipeline.documents import Chunk, ParsedDocument
from nimrag.pipeline.vectorstore.base import (
    ChunkId,
    CollectionInfo,
    DocumentInfo,
    InvalidArgument,
    SearchHit,
    StoredChunk,
    StoreError,
    UpsertResult,
    VectorCollection,
    check_chunks,
    checked_query,
    checked_vectors,
)
from nimrag.pipeline.vectorstore.milvus import analyzer
from nimrag.pipeline.vectorstore.milvus.names import (
    CHUNKS,
    DOCUMENTS,
    equals,
    is_in,
    physical_name,
)
from nimrag.pipeline.vectorstore.milvus.schema import (
    CHUNK_FIELDS,
    DOCUMENT_FIELDS,
    HASH_BYTES,
    MAX_VARCHAR_BYTES,
    PLACEHOLDER,
    SOURCE_BYTES,
    Meta,
    check_bytes,
    dense_search_params,
    document_info,
    is_committed,
    stored_chunk,
)
from nimrag.pipeline.vectorstore.records import dumps, utc_now

if TYPE_CHECKING:
    from nimrag.pipeline.vectorstore.milvus.connection import Connection

MAX_TOP_K = 16_384  # Milvus's largest limit of one search or query
INSERT_BATCH_ROWS = 256
INSERT_BATCH_BYTES = 16 * 1024 * 1024  # well under gRPC's message limit
READ_BATCH = 1000  # ids per get, records per iterator page
STALE_WRITE_NS = 3600 * 10**9  # a write pending this long died: sweep removes what it left


class _Versions:
    """Write versions: the wall clock in nanoseconds, strictly increasing within this process. Other replicas'
    clocks only decide which of two concurrent writes of one document is cleaned up first."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(time.time_ns(), self._last + 1)
            return self._last


VERSIONS = _Versions()


class MilvusCollection(VectorCollection):
    """Built by MilvusVectorStore; every call runs its pymilvus work in a thread."""

    def __init__(self, connection: Callable[[], Connection], name: str, meta: Meta) -> None:
        self._connection = connection  # the store's: raises CollectionClosed once the store is closed
        self._name = name
        self.meta = meta
        self.chunks_collection = physical_name(name, CHUNKS)
        self.documents_collection = physical_name(name, DOCUMENTS)
        self._write_lock = threading.Lock()  # one write at a time in this process (as the FAISS store)
        self._retired: StoreError | None = None

    @property
    def name(self) -> str:
        return self._name

    @property
    def dimension(self) -> int:
        return self.meta.dimension

    def retire(self, error: StoreError) -> None:
        """Every later call raises ``error`` (the collection was deleted, or the store closed)."""
        self._retired = error

    def _call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self._retired is not None:
            raise self._retired
        return self._connection().call(f"{method} on collection {self._name!r}", method, *args, **kwargs)

    # -- the contract, async ----------------------------------------------------------------------------------

    async def upsert_document(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray, *,
                              metadata: dict | None = None, size_bytes: int | None = None,
                              force: bool = False) -> UpsertResult:
        return await asyncio.to_thread(self._upsert, document, chunks, vectors, metadata, size_bytes, force)

    async def delete_document(self, source: str) -> bool:
        return await asyncio.to_thread(self._delete, source)

    async def document_hash(self, source: str) -> str | None:
        record = await asyncio.to_thread(self._record, source)
        return record["content_hash"] if is_committed(record) else None

    async def list_documents(self) -> list[DocumentInfo]:
        records = await asyncio.to_thread(self._committed_records)
        return [document_info(record) for record in records]

    async def dense_search(self, vector: np.ndarray, k: int,
                           sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        query = checked_query(vector, self.dimension, self._name)[0]
        filtered = sources is not None
        return await asyncio.to_thread(
            self._search, [query], "dense", lambda limit: dense_search_params(self.meta.options, limit, filtered), k,
            sources, float)

    async def lexical_search(self, query: str, k: int,
                             sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        words = analyzer.query_terms(query)
        if not words:
            return []
        if self.meta.lexical == "bm25":
            # Milvus Lite reports BM25 as a distance (its negative); a Milvus server as the score itself.
            return await asyncio.to_thread(self._search, [" ".join(words)], "sparse",
                                           lambda _: {"metric_type": "BM25"}, k, sources, abs)
        return await asyncio.to_thread(self._search, [analyzer.query_vector(words)], "sparse",
                                       lambda _: {"metric_type": "IP"}, k, sources, float)

    async def get_chunks(self, ids: Iterable[ChunkId]) -> list[StoredChunk]:
        wanted = list(dict.fromkeys(int(chunk_id) for chunk_id in ids))
        rows = await asyncio.to_thread(self._rows, wanted, CHUNK_FIELDS)
        found = {int(row["id"]): stored_chunk(row) for row in rows}
        return [found[chunk_id] for chunk_id in wanted if chunk_id in found]

    async def get_vectors(self, ids: Sequence[ChunkId]) -> np.ndarray:
        wanted = [int(chunk_id) for chunk_id in ids]
        rows = await asyncio.to_thread(self._rows, list(dict.fromkeys(wanted)), ["id", "source", "version", "dense"])
        found = {int(row["id"]): row["dense"] for row in rows}
        out = np.zeros((len(wanted), self.dimension), dtype=np.float32)
        for position, chunk_id in enumerate(wanted):
            if chunk_id in found:
                out[position] = found[chunk_id]
        return out

    async def info(self) -> CollectionInfo:
        records = await asyncio.to_thread(self._committed_records)
        return CollectionInfo(name=self._name, dimension=self.dimension, documents=len(records),
                              chunks=sum(int(record["chunks"]) for record in records), created=self.meta.created,
                              metadata=self.meta.metadata, options=self.meta.options)

    # -- writing ----------------------------------------------------------------------------------------------

    def _upsert(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray,
                metadata: dict | None, size_bytes: int | None, force: bool) -> UpsertResult:
        rows = self._chunk_rows(document, chunks, vectors)
        size = size_bytes if size_bytes is not None else sum(len(page.text.encode()) for page in document.pages)
        fields = {"source": document.source, "title": document.title, "media_type": document.media_type,
                  "content_hash": document.content_hash, "chunks": len(rows), "bytes": size,
                  "ingested_at": utc_now(), "metadata": json.loads(dumps(metadata or {}))}
        check_bytes("the document's title", document.title, MAX_VARCHAR_BYTES)
        check_bytes("the document's media type", document.media_type, HASH_BYTES)
        check_bytes("the document's content hash", document.content_hash, HASH_BYTES)
        with self._write_lock:
            previous = self._record(document.source)
            committed = is_committed(previous)
            if committed and previous["content_hash"] == document.content_hash and not force:
                return UpsertResult("unchanged", int(previous["chunks"]))
            version = VERSIONS.next()
            base = previous if committed else {**fields, "version": 0}
            self._put_record({**base, "pending": version, "deleting": False})
            try:
                ids = self._insert_chunks(rows, version)
            except BaseException:
                self._forget_chunks(document.source, f"version == {version}")  # best effort: invisible anyway
                raise
            self._put_record({**fields, "version": version, "pending": 0, "deleting": False})  # the commit
            self._forget_chunks(document.source, f"version < {version}")
            self._after_write()
        return UpsertResult("replaced" if committed else "added", len(ids), tuple(ids))

    def _delete(self, source: str) -> bool:
        with self._write_lock:
            record = self._record(source)
            if not is_committed(record):
                return False
            self._put_record({**record, "deleting": True})  # hidden from here on
            self._forget_chunks(source, None)
            self._drop_record(source)
            self._after_write()
        return True

    def sweep(self, stale_after_ns: int = STALE_WRITE_NS) -> None:
        """Finish what writes that died left: deletes still marked, chunks of versions never committed (of
        writes pending for longer than ``stale_after_ns``: younger ones may still be running, in a replica)."""
        cutoff = time.time_ns() - stale_after_ns
        stale = self._records(f"deleting == true or (pending > 0 and pending < {cutoff})")
        with self._write_lock:
            for record in stale:
                if record["deleting"]:
                    self._forget_chunks(record["source"], None)
                    self._drop_record(record["source"])
                    continue
                self._forget_chunks(record["source"], f"version == {record['pending']}")
                if record["version"] == 0:
                    self._drop_record(record["source"])
                else:
                    self._put_record({**record, "pending": 0})
            if stale:
                self._after_write()

    def _chunk_rows(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray) -> list[dict]:
        check_bytes("the document's name", document.source, SOURCE_BYTES)
        matrix = checked_vectors(vectors, len(chunks), self.dimension, self._name)
        check_chunks(document, chunks)
        rows = []
        for chunk, vector in zip(chunks, matrix):
            terms = analyzer.document_terms(chunk.text)
            fields = (("text", chunk.text, MAX_VARCHAR_BYTES), ("analyzed text", terms, MAX_VARCHAR_BYTES),
                      ("title", chunk.title, MAX_VARCHAR_BYTES), ("content hash", chunk.content_hash, HASH_BYTES))
            for what, text, limit in fields:
                check_bytes(f"chunk {chunk.index}'s {what}", text, limit)
            row = {"source": chunk.source, "idx": chunk.index, "text": chunk.text, "page": chunk.page,
                   "start_char": chunk.start, "end_char": chunk.end, "title": chunk.title,
                   "content_hash": chunk.content_hash, "metadata": json.loads(dumps(chunk.metadata)),
                   "terms": terms, "dense": vector}
            if self.meta.lexical == "sparse":
                row["sparse"] = analyzer.sparse_vector(terms)
            rows.append(row)
        return rows

    def _insert_chunks(self, rows: list[dict], version: int) -> list[int]:
        ids: list[int] = []
        batch: list[dict] = []
        size = 0
        for row in rows:
            batch.append({**row, "version": version})
            size += len(row["text"]) + len(row["terms"]) + 4 * self.dimension
            if len(batch) >= INSERT_BATCH_ROWS or size >= INSERT_BATCH_BYTES:
                ids += self._call("insert", self.chunks_collection, batch)["ids"]
                batch, size = [], 0
        if batch:
            ids += self._call("insert", self.chunks_collection, batch)["ids"]
        return [int(chunk_id) for chunk_id in ids]

    def _forget_chunks(self, source: str, versions: str | None) -> None:
        expression = equals("source", source) + (f" and {versions}" if versions else "")
        self._call("delete", self.chunks_collection, filter=expression)

    def _put_record(self, record: dict) -> None:
        self._call("upsert", self.documents_collection, [{**record, "placeholder": PLACEHOLDER}])

    def _after_write(self) -> None:
        """Milvus Lite searches rows it has not flushed by scanning them, per search: 100 documents unflushed
        made a search ten times slower. A Milvus server needs no flush (and rate-limits it)."""
        connection = self._connection()
        if connection.server.lite:
            self._call("flush", self.chunks_collection)
            self._call("flush", self.documents_collection)

    # -- reading ----------------------------------------------------------------------------------------------

    def _search(self, data: list, field: str, parameters: Callable[[int], dict], k: int,
                sources: Sequence[str] | str | None, score: Callable[[float], float]) -> list[SearchHit]:
        """The k best visible chunks. Milvus filters by source inside the search; chunks of uncommitted or
        superseded versions are dropped after it, so a search that lost some asks again for more."""
        sources = [sources] if isinstance(sources, str) else sources
        if k <= 0 or (sources is not None and not sources):
            return []
        if k > MAX_TOP_K:
            raise InvalidArgument(f"k is {k}; the Milvus store returns at most {MAX_TOP_K}")
        expression = "" if sources is None else is_in("source", list(sources))
        limit = k
        while True:
            [found] = self._call("search", self.chunks_collection, data=data, anns_field=field, limit=limit,
                                 filter=expression, search_params=parameters(limit),
                                 output_fields=["source", "version"])
            hits = [{"id": hit["id"], "distance": hit["distance"], **hit["entity"]} for hit in found]
            visible = self._visible(hits)
            if len(visible) >= k or len(hits) < limit or limit == MAX_TOP_K:
                return [SearchHit(int(hit["id"]), score(hit["distance"])) for hit in visible[:k]]
            limit = min(MAX_TOP_K, 2 * limit)

    def _rows(self, ids: list[int], fields: list[str]) -> list[dict]:
        rows: list[dict] = []
        for start in range(0, len(ids), READ_BATCH):
            rows += self._call("get", self.chunks_collection, ids=ids[start:start + READ_BATCH],
                               output_fields=fields)
        return self._visible(rows)

    def _visible(self, rows: list[dict]) -> list[dict]:
        """The rows (with source and version) of their document's committed version, in their order."""
        sources = list({row["source"] for row in rows})
        if not sources:
            return []
        current = {}
        for start in range(0, len(sources), READ_BATCH):
            for record in self._call("query", self.documents_collection,
                                     filter=is_in("source", sources[start:start + READ_BATCH]),
                                     output_fields=["source", "version", "deleting"]):
                if is_committed(record):
                    current[record["source"]] = record["version"]
        return [row for row in rows if current.get(row["source"]) == row["version"]]

    def _record(self, source: str) -> dict | None:
        # A query with a quoted literal, not get(ids=...): pymilvus puts string ids into its filter unescaped.
        found = self._call("query", self.documents_collection, filter=equals("source", source),
                           output_fields=DOCUMENT_FIELDS)
        return found[0] if found else None

    def _drop_record(self, source: str) -> None:
        self._call("delete", self.documents_collection, filter=equals("source", source))

    def _records(self, expression: str) -> list[dict]:
        """Every document record matching ``expression``: one query when they fit in one (MAX_TOP_K), else
        page by page through an iterator (which Milvus Lite serves without the snapshot timestamp it lacks)."""
        [counted] = self._call("query", self.documents_collection, filter=expression, output_fields=["count(*)"])
        if counted["count(*)"] == 0:
            return []
        if counted["count(*)"] <= MAX_TOP_K:
            return self._call("query", self.documents_collection, filter=expression, output_fields=DOCUMENT_FIELDS,
                              limit=MAX_TOP_K)
        iterator = self._call("query_iterator", self.documents_collection, batch_size=READ_BATCH,
                              filter=expression, output_fields=DOCUMENT_FIELDS)
        records: list[dict] = []
        try:
            while page := self._connection().read(f"reading collection {self._name!r}", iterator.next):
                records += page
        finally:
            iterator.close()
        return records

    def _committed_records(self) -> list[dict]:
        return sorted(self._records("version > 0 and deleting == false"), key=lambda record: record["source"])
