"""The FAISS + SQLite backend behind the store contract: the synchronous Catalog and Collection, run in worker
threads so that no call blocks the event loop (a search waits on SQLite and FAISS; opening may rebuild an
index)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from nimrag.pipeline.documents import Chunk, ParsedDocument
from nimrag.pipeline.vectorstore.base import (
    ChunkId,
    CollectionInfo,
    CollectionOptions,
    DocumentInfo,
    SearchHit,
    StoredChunk,
    UpsertResult,
    VectorCollection,
    VectorStore,
    validate_options,
)
from nimrag.pipeline.vectorstore.faiss.catalog import Catalog
from nimrag.pipeline.vectorstore.faiss.collection import Collection


class FaissCollection(VectorCollection):
    """A Collection's async face. ``engine`` is the Collection itself, for the FAISS backend's extras
    (stats, verify, flush, snapshot)."""

    def __init__(self, engine: Collection) -> None:
        self.engine = engine

    @property
    def name(self) -> str:
        return self.engine.name

    @property
    def dimension(self) -> int:
        return self.engine.dimension

    async def upsert_document(self, document: ParsedDocument, chunks: Sequence[Chunk], vectors: np.ndarray, *,
                              metadata: dict | None = None, size_bytes: int | None = None,
                              force: bool = False) -> UpsertResult:
        return await asyncio.to_thread(self.engine.upsert_document, document, chunks, vectors, metadata=metadata,
                                       size_bytes=size_bytes, force=force)

    async def delete_document(self, source: str) -> bool:
        return await asyncio.to_thread(self.engine.delete_document, source)

    async def document_hash(self, source: str) -> str | None:
        return await asyncio.to_thread(self.engine.document_hash, source)

    async def list_documents(self) -> list[DocumentInfo]:
        return await asyncio.to_thread(self.engine.list_documents)

    async def dense_search(self, vector: np.ndarray, k: int,
                           sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        return await asyncio.to_thread(self.engine.dense_search, vector, k, sources)

    async def lexical_search(self, query: str, k: int,
                             sources: Sequence[str] | str | None = None) -> list[SearchHit]:
        return await asyncio.to_thread(self.engine.lexical_search, query, k, sources)

    async def get_chunks(self, ids: Iterable[ChunkId]) -> list[StoredChunk]:
        return await asyncio.to_thread(self.engine.get_chunks, list(ids))

    async def get_vectors(self, ids: Sequence[ChunkId]) -> np.ndarray:
        return await asyncio.to_thread(self.engine.get_vectors, ids)

    async def info(self) -> CollectionInfo:
        return await asyncio.to_thread(self.engine.info)


class FaissVectorStore(VectorStore):
    """Collections in folders under ``root`` (see nimrag.pipeline.vectorstore.faiss.catalog)."""

    backend = "faiss"

    def __init__(self, root: Path | str, *, use_gpu: bool = True, persist_interval_s: float = 30.0) -> None:
        self.catalog = Catalog(root, use_gpu=use_gpu, persist_interval_s=persist_interval_s)

    async def create(self, name: str, dimension: int, *, options: CollectionOptions | None = None,
                     metadata: dict | None = None) -> FaissCollection:
        index = validate_options(options).index
        return FaissCollection(await asyncio.to_thread(self.catalog.create, name, dimension, index, metadata))

    async def open(self, name: str) -> FaissCollection:
        return FaissCollection(await asyncio.to_thread(self.catalog.open, name))

    async def exists(self, name: str) -> bool:
        return await asyncio.to_thread(self.catalog.exists, name)

    async def list(self) -> list[CollectionInfo]:
        return await asyncio.to_thread(self.catalog.list)

    async def delete(self, name: str) -> None:
        await asyncio.to_thread(self.catalog.delete, name)

    async def close(self) -> None:
        await asyncio.to_thread(self.catalog.close)
