"""The pipeline's one vector-store contract: collections of documents' chunks with their vectors, text and
metadata; dense and lexical search with a document filter. Backends (nimrag.pipeline.vectorstore.faiss, Milvus)
implement it; retrieval, ingestion, answers and the service use nothing else. In the spirit of the NVIDIA RAG Blueprint's
``VDBRag``, but small, typed and async.

Rules every backend keeps (tests/pipeline/vectorstore/test_contract.py checks them on each backend):

- Every method is a coroutine and never blocks the event loop: a backend with blocking work (SQLite, FAISS, a
  synchronous client) runs it in a thread itself.
- Chunk ids are opaque ints (a backend's own primary keys): callers only hand back ids a search returned.
- A document (its ``source``) is written all-or-nothing: after an upsert or a delete, searches and reads see all
  of its new chunks or none, never a mix of old and new.
- ``sources=None`` searches every document; an empty sequence matches nothing; a str is one source.
- Scores: higher is better. Dense scores are inner products (cosine for normalized vectors); lexical scores are
  BM25-like and comparable within one result list only (the retriever fuses ranks, not scores).
- Collection names follow ``COLLECTION_NAME`` (checked by ``validate_name``, with its message) on every backend:
  a backend whose engine has stricter names maps them, invisibly to callers.
- Errors are the ``StoreError`` subclasses below, never an engine's own exceptions.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, NamedTuple

import numpy as np

from nimrag.pipeline.documents import Chunk, ParsedDocument

if TYPE_CHECKING:
    from typing_extensions import Self

ChunkId = int  # opaque: a backend's own key for a stored chunk
IndexType = Literal["flat", "hnsw", "ivf"]
INDEX_TYPES: tuple[str, ...] = ("flat", "hnsw", "ivf")
COLLECTION_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")


# --- errors -------------------------------------------------------------------------------------------------

class StoreError(Exception):
    """Base of every error a store raises."""


class InvalidArgument(StoreError, ValueError):
    """A caller passed something the store cannot take."""


class InvalidCollectionName(InvalidArgument):
    pass


class InvalidCollectionOptions(InvalidArgument):
    """Options a backend cannot honour (an unknown index type)."""


class DimensionMismatch(InvalidArgument):
    pass


class InvalidDocument(InvalidArgument):
    """Chunks that do not belong to the document, repeated chunk indexes, or vectors that do not match them."""


class CollectionNotFound(StoreError, LookupError):
    """No such collection, or it was deleted while a caller held it."""


class CollectionExists(StoreError):
    pass


class CollectionClosed(StoreError):
    """The store (or the collection) was closed."""


class IncompatibleCollection(StoreError):
    """The collection was written by a store with another schema."""


class StoreBusy(StoreError):
    """Another writer held the collection longer than the backend waits."""


class StoreUnavailable(StoreError):
    """The store's engine cannot be reached (a database server down)."""


# --- records ------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class CollectionOptions:
    """How a collection is built, chosen at creation. ``index``: "flat" searches exactly; "hnsw" (a graph) and
    "ivf" (inverted lists) are approximate. Each backend maps them to its own engine's indexes (FAISS
    IndexFlatIP / IndexHNSWFlat / IndexIVFFlat; Milvus FLAT / HNSW / IVF_FLAT)."""
    index: IndexType = "flat"


@dataclass(frozen=True)
class CollectionInfo:
    name: str
    dimension: int
    documents: int
    chunks: int
    created: str  # ISO 8601, UTC
    metadata: dict = field(default_factory=dict)
    options: CollectionOptions = field(default_factory=CollectionOptions)


@dataclass(frozen=True)
class DocumentInfo:
    source: str
    title: str
    media_type: str
    content_hash: str
    chunks: int
    bytes: int
    ingested_at: str  # ISO 8601, UTC
    metadata: dict = field(default_factory=dict)


@dataclass(frozen=True)
class UpsertResult:
    status: Literal["added", "replaced", "unchanged"]
    chunks: int
    chunk_ids: tuple[ChunkId, ...] = ()  # empty when unchanged


@dataclass(frozen=True)
class StoredChunk:
    id: ChunkId
    chunk: Chunk


class SearchHit(NamedTuple):
    """One search result; a tuple, so ``for chunk_id, score in hits`` reads it."""
    id: ChunkId
    score: float


# --- checks every backend shares ----------------------------------------------------------------------------

def validate_name(name: object) -> str:
    if not isinstance(name, str) or not COLLECTION_NAME.fullmatch(name):
        raise InvalidCollectionName(
            f"invalid collection name {name!r}: 1-64 of A-Z a-z 0-9 _ . -, starting with a letter or digit")
    return name


def validate_dimension(dimension: object) -> int:
    if not isinstance(dimension, int) or isinstance(dimension, bool) or dimension <= 0:
        raise InvalidArgument(f"dimension must be a positive integer, not {dimension!r}")
    return dimension


def validate_options(options: object) -> CollectionOptions:
    if options is None:
        return CollectionOptions()
    if not isinstance(options, CollectionOptions) or options.index not in INDEX_TYPES:
        index = getattr(options, "index", options)
        raise InvalidCollectionOptions(f"index kind {index!r} is not one of {', '.join(INDEX_TYPES)}")
    return options


def checked_vectors(vectors: np.ndarray, rows: int, dimension: int, collection: str) -> np.ndarray:
    """A document's vectors as a contiguous float32 (rows, dimension) matrix, or the error saying what is wrong."""
    matrix = np.asarray(vectors, dtype=np.float32)
    if rows == 0 and matrix.size == 0:
        return np.empty((0, dimension), dtype=np.float32)
    if matrix.ndim != 2 or matrix.shape[1] != dimension:
        raise DimensionMismatch(f"vectors of shape {matrix.shape}; collection {collection!r} has dimension "
                                f"{dimension}")
    if matrix.shape[0] != rows:
        raise InvalidDocument(f"{rows} chunks but {matrix.shape[0]} vectors")
    if not np.isfinite(matrix).all():
        raise InvalidDocument("vectors must be finite")
    return np.ascontiguousarray(matrix)


def check_chunks(document: ParsedDocument, chunks: Sequence[Chunk]) -> None:
    """Every chunk is the document's, each index once."""
    for chunk in chunks:
        if chunk.source != document.source:
            raise InvalidDocument(f"chunk of {chunk.source!r} given with document {document.source!r}")
    if len({chunk.index for chunk in chunks}) != len(chunks):
        raise InvalidDocument(f"{document.source!r}: chunk indexes repeat")


def checked_query(vector: np.ndarray, dimension: int, collection: str) -> np.ndarray:
    """A query vector as a contiguous float32 (1, dimension) matrix, or the error saying what is wrong."""
    query = np.asarray(vector, dtype=np.float32)
    query = query.reshape(1, -1) if query.ndim == 1 else query
    if query.shape != (1, dimension):
        raise DimensionMismatch(f"query of shape {np.shape(vector)}; collection {collection!r} has dimension "
                                f"{dimension}")
    if not np.isfinite(query).all():
        raise InvalidArgument("query vector must be finite")
    return np.ascontiguousarray(query)


# --- the contract -------------------------------------------------------------------------------------------

class VectorCollection(ABC):
    """One collection, as handed out by its VectorStore. Safe to use from many tasks at once. Once the
    collection is deleted every call raises CollectionNotFound; once the store is closed, CollectionClosed."""

    @property
    @abstractmethod
    def name(self) -> str: ...

    @property
    @abstractmethod
    def dimension(self) -> int: ...

    @abstractmethod
    async def upsert_document(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray, *,
                              metadata: dict | None = None, size_bytes: int | None = None,
                              force: bool = False) -> UpsertResult:
        """Add ``document`` with its chunks (one float32 row of ``vectors`` per chunk), or replace every chunk
        it had, atomically. The same content hash again is "unchanged" and writes nothing, unless ``force``.
        ``metadata`` is the document's (JSON-serializable); ``size_bytes`` defaults to its pages' UTF-8 size.
        Raises DimensionMismatch, InvalidDocument, InvalidArgument (metadata not JSON), StoreBusy."""

    @abstractmethod
    async def delete_document(self, source: str) -> bool:
        """Remove a document and all its chunks; False if the collection did not have it."""

    @abstractmethod
    async def document_hash(self, source: str) -> str | None:
        """The stored content hash of ``source`` (None if absent): checked before embedding a file again."""

    @abstractmethod
    async def list_documents(self) -> list[DocumentInfo]:
        """Every document, ordered by source."""

    @abstractmethod
    async def dense_search(self, vector: np.ndarray, k: int,
                           sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        """The k chunks nearest ``vector`` (shape (dimension,) or (1, dimension)) by inner product, best first.
        A filter restricts the search itself (never search-then-filter: a filter does not starve the top k).
        k <= 0 gives []. Raises DimensionMismatch, InvalidArgument (a non-finite vector)."""

    @abstractmethod
    async def lexical_search(self, query: str, k: int,
                             sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        """The k chunks best matching the words of ``query`` (BM25 over chunk text; English stop words left
        out unless the query has nothing else), best first. Any text is taken as words, never as query
        syntax; a query without words gives []."""

    @abstractmethod
    async def get_chunks(self, ids: Iterable[ChunkId]) -> list[StoredChunk]:
        """The chunks with these ids, in the order given, repeats dropped; ids no longer stored are skipped."""

    @abstractmethod
    async def get_vectors(self, ids: Sequence[ChunkId]) -> np.ndarray:
        """Float32 array (len(ids), dimension): the stored vector of each id in order, zeros for one not stored."""

    @abstractmethod
    async def info(self) -> CollectionInfo: ...


class VectorStore(ABC):
    """The collections of one backend. ``open`` is cheap once a collection was opened: call it per request."""

    backend: str  # the NIMRAG_PIPELINE_VECTOR_STORE value that selects it

    @abstractmethod
    async def create(self, name: str, dimension: int, *, options: CollectionOptions | None = None,
                     metadata: dict | None = None) -> VectorCollection:
        """Create an empty collection, atomically. Raises InvalidCollectionName, InvalidArgument (dimension),
        InvalidCollectionOptions, CollectionExists."""

    @abstractmethod
    async def open(self, name: str) -> VectorCollection:
        """An existing collection. Raises InvalidCollectionName, CollectionNotFound."""

    @abstractmethod
    async def exists(self, name: str) -> bool:
        """Raises InvalidCollectionName."""

    @abstractmethod
    async def list(self) -> list[CollectionInfo]:
        """Every collection, ordered by name."""

    @abstractmethod
    async def delete(self, name: str) -> None:
        """Delete a collection and everything in it, atomically. Raises CollectionNotFound."""

    @abstractmethod
    async def close(self) -> None:
        """Release the store (persisting what a backend caches). Idempotent."""

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()
