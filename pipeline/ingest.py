"""Ingestion: parse, chunk, skip what is unchanged, embed (batched, several requests in flight), store.

A file that cannot be read is reported with its reason and skipped; the rest goes on. Each document is written
in one transaction by the store, so an interrupted ingest leaves whole documents or none of them.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from pipeline.chunking import Chunker
from pipeline.clients import ServiceClients
from pipeline.documents import ParsedDocument
from pipeline.loaders import DocumentError
from pipeline.settings import PipelineSettings

FILES_IN_FLIGHT = 4  # documents parsed and embedded at once: keeps the embedder busy while the next file parses


@dataclass
class IngestItem:
    source: str
    load: Callable[[], ParsedDocument]  # blocking: parses the file or the uploaded bytes


@dataclass
class FileReport:
    source: str
    status: str  # "added", "replaced", "unchanged" or "failed"
    chunks: int = 0
    reason: str | None = None


@dataclass
class IngestReport:
    collection: str
    files: list[FileReport] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def chunks(self) -> int:
        return sum(f.chunks for f in self.files if f.status in ("added", "replaced"))

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for f in self.files:
            out[f.status] = out.get(f.status, 0) + 1
        return out

    def as_dict(self) -> dict:
        return {"collection": self.collection, "files": [asdict(f) for f in self.files], "chunks": self.chunks,
                "counts": self.counts(), "seconds": round(self.seconds, 3)}


class Ingestor:
    def __init__(self, clients: ServiceClients, settings: PipelineSettings):
        self.clients = clients
        self.settings = settings
        self._embed_slots = asyncio.Semaphore(settings.embed_concurrency)

    async def ingest(self, collection, items: list[IngestItem], chunker: Chunker,
                     on_file: Callable[[FileReport], None] | None = None) -> IngestReport:
        report = IngestReport(collection.name)
        started = time.perf_counter()
        files = asyncio.Semaphore(FILES_IN_FLIGHT)

        async def one(item: IngestItem) -> None:
            async with files:
                result = await self._ingest_one(collection, item, chunker)
            report.files.append(result)
            if on_file:
                on_file(result)

        await asyncio.gather(*(one(item) for item in items))
        report.seconds = time.perf_counter() - started
        return report

    async def _ingest_one(self, collection, item: IngestItem, chunker: Chunker) -> FileReport:
        try:
            doc = await asyncio.to_thread(item.load)
        except DocumentError as exc:
            return FileReport(item.source, "failed", reason=str(exc))
        if await asyncio.to_thread(collection.document_hash, doc.source) == doc.content_hash:
            return FileReport(doc.source, "unchanged")
        chunks = await asyncio.to_thread(chunker.split, doc)
        if not chunks:
            return FileReport(doc.source, "failed", reason="no text to index")
        vectors = await self.embed_passages([c.text for c in chunks])
        result = await asyncio.to_thread(collection.upsert_document, doc, chunks, vectors)
        return FileReport(doc.source, result.status, len(chunks))

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        size = self.settings.embed_batch_size

        async def batch(start: int) -> np.ndarray:
            async with self._embed_slots:
                return await self.clients.embed(texts[start:start + size], "passage")

        parts = await asyncio.gather(*(batch(i) for i in range(0, len(texts), size)))
        return np.concatenate(parts)
