"""Hybrid retrieval: dense (FAISS) and lexical (SQLite FTS5 BM25) fused by reciprocal rank, then reranked.

Retrieval is the pipeline's own work; only the query embedding and the reranking go to the microservices.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

from pipeline.clients import ServiceClients
from pipeline.documents import Chunk

RRF_K = 60  # the constant of Cormack et al.'s reciprocal rank fusion


@dataclass
class Hit:
    chunk_id: int
    chunk: Chunk
    score: float  # the final ranking score (reranker's, or fused)
    dense_rank: int | None = None
    lexical_rank: int | None = None
    rerank_score: float | None = None


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
    threshold: float
    sources: list[str] | None = None
    mode: str = "hybrid"  # "dense", "lexical" or "hybrid"


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: each list adds 1 / (k + rank) to its ids; ties keep first-seen order."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, chunk_id in enumerate(ranking, start=1):
            scores[chunk_id] = scores.get(chunk_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda item: -item[1])


def retrieval_query(turns: list[dict], max_user_turns: int = 2) -> str:
    """What to search for in a conversation: the last question, with the one before it for follow-ups."""
    users = [t["content"] for t in turns if t["role"] == "user" and t.get("content")]
    return "\n".join(users[-max_user_turns:])


class Retriever:
    def __init__(self, clients: ServiceClients):
        self.clients = clients

    async def search(self, collection, query: str, options: SearchOptions) -> SearchResult:
        timings: dict[str, float] = {}
        started = time.perf_counter()
        dense, lexical = await asyncio.gather(self._dense(collection, query, options),
                                              self._lexical(collection, query, options))
        timings["retrieval_ms"] = elapsed_ms(started)
        fused = fuse([r for r in ([i for i, _ in dense], [i for i, _ in lexical]) if r])
        dense_rank = {cid: r for r, (cid, _) in enumerate(dense, 1)}
        lexical_rank = {cid: r for r, (cid, _) in enumerate(lexical, 1)}
        keep = options.rerank_candidates if options.rerank else options.reranker_top_k
        ids = [cid for cid, _ in fused[:keep]]
        chunks = {c.id: c.chunk for c in await asyncio.to_thread(collection.get_chunks, ids)}
        hits = [Hit(cid, chunks[cid], score, dense_rank.get(cid), lexical_rank.get(cid))
                for cid, score in fused[:keep] if cid in chunks]
        if options.rerank and hits:
            started = time.perf_counter()
            scores = await self.clients.rerank(query, [h.chunk.text for h in hits])
            timings["rerank_ms"] = elapsed_ms(started)
            for hit, score in zip(hits, scores):
                hit.rerank_score = hit.score = score
            hits = [h for h in sorted(hits, key=lambda h: -h.score) if h.score >= options.threshold]
        return SearchResult(hits[: options.reranker_top_k], timings)

    async def _dense(self, collection, query: str, options: SearchOptions) -> list[tuple[int, float]]:
        if options.mode == "lexical":
            return []
        vector = (await self.clients.embed([query], "query"))[0]
        return await asyncio.to_thread(collection.dense_search, vector, options.vdb_top_k, options.sources)

    async def _lexical(self, collection, query: str, options: SearchOptions) -> list[tuple[int, float]]:
        if options.mode == "dense":
            return []
        return await asyncio.to_thread(collection.lexical_search, query, options.vdb_top_k, options.sources)


def elapsed_ms(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 2)
