"""Ingestion: parse, chunk, skip what is unchanged, embed (batched, several requests in flight), store.

A file that cannot be read is reported with its reason and skipped; the rest goes on. Any other failure (the
embedding service gone, a store error) stops the ingest: the files not done by then are reported failed with
that error, so every file is accounted for, and the error is raised. Each document is written in one transaction
by the store, so an interrupted ingest leaves whole documents or none of them.
"""

from __future__ import annotations

import asyncio
import time
import unicodedata
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import PureWindowsPath

import numpy as np

from nimrag.pipeline.chunking import Chunker
from nimrag.pipeline.clients import ServiceClients
from nimrag.pipeline.documents import ParsedDocument
from nimrag.pipeline.loaders import DocumentError
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore.base import VectorCollection

# Documents between parsing and storing at once. Enough that their passages fill the embedder's batches while
# it is busy (most files make one or two chunks), few enough to bound memory on a large folder.
FILES_IN_FLIGHT = 32
MAX_NAME_CHARS = 1024
MAX_NAME_PART_CHARS = 255


def checked_document_name(raw: str) -> str:
    """A document's name as a relative POSIX path ("a/notes.md"): backslashes read as '/', '.' and empty parts
    dropped. Names are only ever names, never paths on disk; still, an absolute path, a drive, '..' or a control
    character is refused (ValueError saying why), so that a name reads the same wherever it is shown."""
    text = raw.replace("\\", "/")
    parts = [part.strip() for part in text.split("/")]
    parts = [part for part in parts if part not in ("", ".")]
    if any(unicodedata.category(char) == "Cc" for char in text):
        raise ValueError("it holds a control character")
    if text.startswith("/") or PureWindowsPath(text).drive:
        raise ValueError("it is an absolute path; send a relative one")
    if ".." in parts:
        raise ValueError("'..' is not allowed")
    if not parts:
        raise ValueError("it is empty")
    if len(text) > MAX_NAME_CHARS or any(len(part) > MAX_NAME_PART_CHARS for part in parts):
        raise ValueError(f"longer than {MAX_NAME_CHARS} characters, or {MAX_NAME_PART_CHARS} in one part")
    return "/".join(parts)


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


class _Job:
    """One caller's passages: their vectors fill in as the requests carrying them come back."""

    def __init__(self, texts: list[str]):
        self.texts = texts
        self.rows: list[np.ndarray | None] = [None] * len(texts)
        self.missing = len(texts)
        self.future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()

    def put(self, index: int, vector: np.ndarray) -> None:
        self.rows[index] = vector
        self.missing -= 1
        if not self.missing and not self.future.done():
            self.future.set_result(np.stack(self.rows))


class PassageBatcher:
    """Embeds the passages of all documents in flight in shared requests of up to ``batch_size``, with at most
    ``slots`` requests out. A request leaves as soon as a slot is free, carrying everything waiting by then: a
    lone small file is embedded at once, and while the embedder is busy the passages of many one-chunk files
    gather into the large batches it runs fastest."""

    def __init__(self, embed: Callable[[list[str]], Awaitable[np.ndarray]], batch_size: int, slots: int):
        self._embed = embed
        self._batch_size = batch_size
        self._free = slots
        self._waiting: deque[tuple[_Job, int]] = deque()
        self._sending: set[asyncio.Task] = set()

    async def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.empty((0, 0), dtype=np.float32)
        job = _Job(texts)
        self._waiting.extend((job, i) for i in range(len(texts)))
        self._dispatch()
        return await job.future

    async def close(self) -> None:
        for task in self._sending:
            task.cancel()
        await asyncio.gather(*self._sending, return_exceptions=True)

    def _dispatch(self) -> None:
        while self._free:
            batch: list[tuple[_Job, int]] = []
            while self._waiting and len(batch) < self._batch_size:
                piece = self._waiting.popleft()
                if not piece[0].future.done():  # its caller failed or was cancelled meanwhile
                    batch.append(piece)
            if not batch:
                return
            self._free -= 1
            task = asyncio.create_task(self._send(batch))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    async def _send(self, batch: list[tuple[_Job, int]]) -> None:
        try:
            vectors = await self._embed([job.texts[i] for job, i in batch])
        except Exception as exc:  # noqa: BLE001 - each caller whose passage was in the batch gets the error
            for job, _ in batch:
                if not job.future.done():
                    job.future.set_exception(exc)
        else:
            for (job, i), vector in zip(batch, vectors, strict=True):
                job.put(i, vector)
        finally:
            self._free += 1
            self._dispatch()


class Ingestor:
    def __init__(self, clients: ServiceClients, settings: PipelineSettings):
        self.clients = clients
        self.settings = settings
        self._batcher = PassageBatcher(lambda texts: clients.embed(texts, "passage", settings.ingest_backoff_max_s),
                                       settings.embed_batch_size, settings.embed_concurrency)
        self._parses = asyncio.Semaphore(settings.max_concurrent_parses)  # each may inflate to max_inflated_bytes

    async def close(self) -> None:
        await self._batcher.close()

    async def ingest(self, collection: VectorCollection, items: list[IngestItem], chunker: Chunker,
                     on_file: Callable[[FileReport], Awaitable[None]] | None = None) -> IngestReport:
        """Every item gets a FileReport (through ``on_file`` as it is done, and in the report). A failure that is
        not the file's own stops the ingest: the files not started by then fail with it, then it is raised."""
        report = IngestReport(collection.name)
        started = time.perf_counter()
        files = asyncio.Semaphore(FILES_IN_FLIGHT)
        stopped_by: list[Exception] = []

        async def one(item: IngestItem) -> None:
            async with files:
                if stopped_by:
                    result = FileReport(item.source, "failed", reason=f"not indexed: ingest stopped: {stopped_by[0]}")
                else:
                    try:
                        result = await self._ingest_one(collection, item, chunker)
                    except Exception as exc:  # noqa: BLE001 - reported for this file, raised once all are reported
                        stopped_by.append(exc)
                        result = FileReport(item.source, "failed", reason=f"not indexed: {exc}")
            report.files.append(result)
            if on_file:
                await on_file(result)

        await asyncio.gather(*(one(item) for item in items))
        report.seconds = time.perf_counter() - started
        if stopped_by:
            raise stopped_by[0]
        return report

    async def _ingest_one(self, collection: VectorCollection, item: IngestItem, chunker: Chunker) -> FileReport:
        try:
            async with self._parses:
                doc = await asyncio.to_thread(item.load)
        except DocumentError as exc:  # its reason only: the report names the file already
            return FileReport(item.source, "failed", reason=exc.reason)
        if await collection.document_hash(doc.source) == doc.content_hash:
            return FileReport(doc.source, "unchanged")
        chunks = await asyncio.to_thread(chunker.split, doc)
        if not chunks:
            return FileReport(doc.source, "failed", reason="no text to index")
        vectors = await self.embed_passages([c.text for c in chunks])
        result = await collection.upsert_document(doc, chunks, vectors)
        return FileReport(doc.source, result.status, len(chunks))

    async def embed_passages(self, texts: list[str]) -> np.ndarray:
        """Vectors for ``texts``, in requests shared with every other document being ingested."""
        return await self._batcher.embed(texts)
