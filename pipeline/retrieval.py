"""Hybrid retrieval: dense and lexical (BM25) searches of the store fused by reciprocal rank, then reranked.

Several collections are searched as one: each adds its dense and lexical rankings to one fusion (ranks, not
scores, so collections compare fairly), and the fused candidates of all of them are reranked together.
Retrieval is the pipeline's own work; only the query embedding and the reranking go to the microservices.

Spans: ``retrieval`` (the query's embedding, then ``retrieval.dense`` and ``retrieval.lexical`` per collection and
``retrieval.fusion``), then ``rerank``, both children of the span current at the search (the request's).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

import numpy as np
from opentelemetry import trace

from nimrag.pipeline.clients import ServiceClients
from nimrag.pipeline.documents import Chunk
from nimrag.pipeline.vectorstore.base import ChunkId, SearchHit, VectorCollection

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion
tracer = trace.get_tracer("nimrag.pipeline")


@dataclass
class Hit:
    collection: VectorCollection  # the collection the chunk is in
    chunk_id: ChunkId
    chunk: Chunk
    score: float  # the final ranking score (reranker's, or fused)
    dense_rank: int | None = None
    lexical_rank: int | None = None
    rerank_score: float | None = None

    @property
    def collection_name(self) -> str:
        return self.collection.name


@dataclass
class SearchResult:
    hits: list[Hit]
    timings_ms: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class SearchOptions:
    vdb_top_k: int
    reranker_top_k: int
    rerank: bool
    rerank_candidates: int
    threshold: float  # on the reranker's score
    sources: list[str] | None = None
    mode: str = "hybrid"  # "dense", "lexical" or "hybrid"


def fuse(rankings: list[list[Hashable]], k: int = RRF_K) -> list[tuple[Hashable, float]]:
    """Reciprocal rank fusion: each list adds 1 / (k + rank) to its ids; ties keep first-seen order."""
    scores: dict[Hashable, float] = {}
    for ranking in rankings:
        for rank, key in enumerate(ranking, start=1):
            scores[key] = scores.get(key, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def retrieval_query(turns: list[dict], max_user_turns: int = 2) -> str:
    """What to search for in a conversation: the last question, with the one before it for follow-ups."""
    users = [t["content"] for t in turns if t["role"] == "user" and t.get("content")]
    return "\n".join(users[-max_user_turns:])


class Retriever:
    def __init__(self, clients: ServiceClients):
        self.clients = clients

    async def search(self, collections: Sequence[VectorCollection], query: str, options: SearchOptions) -> SearchResult:
        """The best chunks of ``collections`` for ``query``; a chunk is keyed (collection's position, id)."""
        timings: dict[str, float] = {}
        with tracer.start_as_current_span("retrieval", attributes={
                "nimrag.retrieval.mode": options.mode, "nimrag.retrieval.collections": len(collections),
                "nimrag.retrieval.top_k": options.vdb_top_k}) as span:
            hits = await self._candidates(collections, query, options, timings)
            span.set_attribute("nimrag.retrieval.candidates", len(hits))
        if options.rerank and hits:
            started = time.perf_counter()
            with tracer.start_as_current_span("rerank", attributes={"nimrag.rerank.candidates": len(hits)}) as span:
                scores = await self.clients.rerank(query, [h.chunk.text for h in hits])
                timings["rerank_ms"] = elapsed_ms(started)
                for hit, score in zip(hits, scores):
                    hit.rerank_score = hit.score = score
                hits = [h for h in sorted(hits, key=lambda h: -h.score) if h.score >= options.threshold]
                span.set_attribute("nimrag.rerank.kept", len(hits))
        return SearchResult(hits[: options.reranker_top_k], timings)

    async def _candidates(self, collections: Sequence[VectorCollection], query: str, options: SearchOptions,
                          timings: dict[str, float]) -> list[Hit]:
        """Dense and lexical rankings of every collection, fused; the chunks of the best, in fused order."""
        started = time.perf_counter()
        vector, lexical = await asyncio.gather(
            self._query_vector(query, options),
            asyncio.gather(*[self._lexical(c, query, options) for c in collections]))
        dense = await asyncio.gather(*[self._dense(c, vector, options) for c in collections])
        timings["retrieval_ms"] = elapsed_ms(started)
        with tracer.start_as_current_span("retrieval.fusion"):
            rankings = [[(i, cid) for cid, _ in found] for per_kind in (dense, lexical)
                        for i, found in enumerate(per_kind)]
            dense_rank = {(i, cid): r for i, found in enumerate(dense) for r, (cid, _) in enumerate(found, 1)}
            lexical_rank = {(i, cid): r for i, found in enumerate(lexical) for r, (cid, _) in enumerate(found, 1)}
            keep = options.rerank_candidates if options.rerank else options.reranker_top_k
            candidates = fuse([r for r in rankings if r])[:keep]
        chunks = await self._chunks(collections, [key for key, _ in candidates])
        return [Hit(collections[key[0]], key[1], chunks[key], score, dense_rank.get(key), lexical_rank.get(key))
                for key, score in candidates if key in chunks]

    async def _query_vector(self, query: str, options: SearchOptions) -> np.ndarray | None:
        """The query's embedding (once, whatever the number of collections); none for a lexical search."""
        return None if options.mode == "lexical" else (await self.clients.embed([query], "query"))[0]

    @staticmethod
    async def _dense(collection: VectorCollection, vector: np.ndarray | None,
                     options: SearchOptions) -> list[SearchHit]:
        if vector is None:
            return []
        with tracer.start_as_current_span("retrieval.dense", attributes={"nimrag.collection": collection.name}):
            return await collection.dense_search(vector, options.vdb_top_k, options.sources)

    @staticmethod
    async def _lexical(collection: VectorCollection, query: str, options: SearchOptions) -> list[SearchHit]:
        if options.mode == "dense":
            return []
        with tracer.start_as_current_span("retrieval.lexical", attributes={"nimrag.collection": collection.name}):
            return await collection.lexical_search(query, options.vdb_top_k, options.sources)

    @staticmethod
    async def _chunks(collections: Sequence[VectorCollection],
                      keys: list[tuple[int, ChunkId]]) -> dict[tuple[int, ChunkId], Chunk]:
        """The chunks of these (collection position, id) keys; a chunk deleted meanwhile is left out."""
        wanted: dict[int, list[ChunkId]] = {}
        for i, chunk_id in keys:
            wanted.setdefault(i, []).append(chunk_id)
        found = await asyncio.gather(*[collections[i].get_chunks(ids) for i, ids in wanted.items()])
        return {(i, stored.id): stored.chunk for i, stored_chunks in zip(wanted, found) for stored in stored_chunks}


async def hit_vectors(hits: list[Hit]) -> np.ndarray:
    """The stored vectors of the hits, one row per hit in order, read from each hit's collection."""
    positions: dict[str, list[int]] = {}
    for position, hit in enumerate(hits):
        positions.setdefault(hit.collection_name, []).append(position)
    found = await asyncio.gather(*[hits[where[0]].collection.get_vectors([hits[p].chunk_id for p in where])
                                   for where in positions.values()])
    rows: list[np.ndarray | None] = [None] * len(hits)
    for where, vectors in zip(positions.values(), found):
        for position, vector in zip(where, vectors):
            rows[position] = vector
    return np.stack(rows)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
