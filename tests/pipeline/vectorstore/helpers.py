"""Documents for the store tests: chunks with known texts and random unit vectors."""

from __future__ import annotations

import numpy as np

from nimrag.pipeline.documents import Chunk, Page, ParsedDocument

DIM = 16
Document = tuple[ParsedDocument, list[Chunk], np.ndarray]


def unit_vectors(rng: np.random.Generator, count: int, dimension: int = DIM) -> np.ndarray:
    vectors = rng.standard_normal((count, dimension)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def document(source: str, texts: list[str], vectors: np.ndarray, version: str = "1") -> Document:
    parsed = ParsedDocument(source=source, title=source.title(), media_type="text/plain",
                            pages=[Page(None, "\n".join(texts))], content_hash=f"{source}@{version}")
    chunks = [Chunk(source=source, index=i, text=text, page=None, start=0, end=len(text), title=source,
                    content_hash=f"{source}-{i}", metadata={"part": i}) for i, text in enumerate(texts)]
    return parsed, chunks, vectors


def random_document(rng: np.random.Generator, source: str, chunks: int, version: str = "1") -> Document:
    texts = [f"{source} part {i} version {version}" for i in range(chunks)]
    return document(source, texts, unit_vectors(rng, chunks), version)


def brute_force(ids: np.ndarray, vectors: np.ndarray, query: np.ndarray, k: int) -> list[tuple[int, float]]:
    """The exact top k of ``query`` among these (id, vector) rows."""
    scores = vectors @ query
    best = np.argsort(-scores, kind="stable")[:k]
    return [(int(ids[i]), float(scores[i])) for i in best]


def assert_same_hits(got: list[tuple[int, float]], expected: list[tuple[int, float]]) -> None:
    assert [i for i, _ in got] == [i for i, _ in expected]
    np.testing.assert_allclose([s for _, s in got], [s for _, s in expected], rtol=1e-5, atol=1e-6)


class Written:
    """What a test wrote to a collection: every live chunk id with its vector and source, for exact answers."""

    def __init__(self) -> None:
        self.rows: dict[int, tuple[str, np.ndarray]] = {}

    async def upsert(self, collection, item: Document):
        result = await collection.upsert_document(*item)
        if result.status != "unchanged":
            self.forget(item[0].source)
            self.rows.update({i: (item[0].source, v) for i, v in zip(result.chunk_ids, item[2], strict=True)})
        return result

    def forget(self, source: str) -> None:
        self.rows = {i: row for i, row in self.rows.items() if row[0] != source}

    def arrays(self, sources: list[str] | None = None) -> tuple[np.ndarray, np.ndarray]:
        kept = [(i, v) for i, (s, v) in self.rows.items() if sources is None or s in sources]
        return np.array([i for i, _ in kept], dtype=np.int64), np.array([v for _, v in kept]).reshape(-1, DIM)

    def exact(self, query: np.ndarray, k: int, sources: list[str] | None = None) -> list[tuple[int, float]]:
        return brute_force(*self.arrays(sources), query, k)

    async def fill(self, collection, rng: np.random.Generator, documents: int, chunks: int) -> None:
        for number in range(documents):
            await self.upsert(collection, random_document(rng, f"doc-{number:02d}", chunks))


async def recall_at(collection, written: Written, queries: np.ndarray, k: int) -> float:
    hits = 0
    for query in queries:
        truth = {chunk_id for chunk_id, _ in written.exact(query, k)}
        hits += len(truth & {chunk_id for chunk_id, _ in await collection.dense_search(query, k)})
    return hits / (k * len(queries))


async def check_source_filter(collection, rng: np.random.Generator, exact: bool) -> None:
    """A filtered dense search returns k chunks of the wanted documents only (the exact top k when ``exact``,
    most of it otherwise), and so does a filtered lexical search."""
    written = Written()
    await written.fill(collection, rng, documents=12, chunks=100)
    wanted = ["doc-02", "doc-05"]
    allowed = set(written.arrays(wanted)[0].tolist())
    found = 0
    for query in unit_vectors(rng, 10):
        got, expected = await collection.dense_search(query, 10, sources=wanted), written.exact(query, 10, wanted)
        assert len(got) == 10 and {i for i, _ in got} <= allowed
        if exact:
            assert_same_hits(got, expected)
        found += len({i for i, _ in got} & {i for i, _ in expected})
    assert found >= 0.9 * 100
    assert await collection.dense_search(unit_vectors(rng, 1)[0], 5, sources=[]) == []
    assert await collection.dense_search(unit_vectors(rng, 1)[0], 5, sources=["missing"]) == []
    lexical = await collection.lexical_search("part version", 50, sources=wanted)
    assert len(lexical) == 50 and {i for i, _ in lexical} <= allowed
