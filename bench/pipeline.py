"""The RAG pipeline end to end: ingest throughput against the embedding service's own, search latency at 10k and
100k chunks, and the latency of streamed answers broken down by stage, all measured in one run.

    python -m bench.pipeline            # about 9 minutes on a quiet 2-core machine
    python -m bench.pipeline --quick    # smoke run, about 3 minutes

The whole platform runs as ``nimrag up`` runs it (``Platform``: embed, rerank, LLM, then the pipeline, each a
subprocess, here on free ports, with the collections in a temporary folder). Three parts:

- **ingest**: SciFact abstracts (title, blank line, abstract) written as .txt files, uploaded to ``POST
  /v1/documents`` with ``blocking: true``, 16 files per request one request after another, as ``nimrag ingest``
  sends them, into a new collection: chunks/s over the uploads. Against it, the embedding service's own rate on
  the very chunk texts the pipeline stored, sent the way the pipeline sends a document's chunks when it has many
  (``Ingestor.embed_passages``: ``embed_batch_size`` texts per request, ``embed_concurrency`` requests in flight,
  ``input_type: passage``), and, as a diagnosis, the same texts in one request per document with
  ``FILES_IN_FLIGHT`` in flight (the "small" side: how the pipeline sent them before its documents shared
  requests; the service's own dynamic batching then merges what arrives together). The three alternate every
  ``--piece-files`` files, so
  that load from other processes, which drifts by the minute on a shared machine, weighs on all of them alike.
  Ratio target: ingest / embed >= 0.8. Each round uses new documents.
- **search**: collections of N synthetic chunks written in-process with the store (``Collection.upsert_document``,
  1,000 chunks per document) at the pipeline's data folder: texts are SciFact abstracts cut to 1,100 characters
  (about one 256-token chunk) and reused in turn; vectors are the real embeddings of the ingested chunks, each
  copy with Gaussian noise of norm about 0.5 added and normalized again (cosine to its original about 0.9).
  Measured: ``POST /v1/search`` (hybrid, no rerank, the pipeline's ``vdb_top_k``), one client, SciFact test claims
  as queries, and in this process ``Collection.dense_search`` with the same claims embedded once (k =
  ``vdb_top_k``; also with FAISS held to one OpenMP thread) and ``Collection.lexical_search`` (FTS5). Flat
  indexes at each size, HNSW at the largest.
- **answers**: ``POST /v1/generate`` streaming, on the first ingested collection, SciFact claims as questions,
  the pipeline's default retrieval (hybrid + rerank); 1 user, then 4 users each sending questions back to back.
  Per stage, the p50 of the ``metrics`` the final SSE chunk carries (``retrieval_ms``, ``rerank_ms``,
  ``llm_ttft_ms``, ``llm_ms``, ``total_ms``; ``other_ms`` is total minus the three, mostly prompt packing with the
  LLM's /tokenize), and the client's time to first answer token.

CPU that other processes (not the platform, not this one) took during each part is reported beside it: timings
on a shared machine read slow when it is high. Results go to ``bench/results/pipeline-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import faiss
import httpx
import numpy as np

from bench.common import (
    REPO,
    RESULTS,
    SCIFACT,
    batcher_totals,
    fmt,
    free_port,
    machine_line,
    read_jsonl,
    run_main,
)
from bench.retrieval_quality import ServicesMeter, selected_profile
from nimrag.pipeline.clients import ServiceClients
from nimrag.pipeline.documents import Chunk, Page, ParsedDocument
from nimrag.pipeline.ingest import FILES_IN_FLIGHT, Ingestor
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore.faiss import Catalog
from nimrag.platform import Platform
from nimrag.rag_cli import UPLOAD_BATCH_FILES
from nimrag.services.common.hardware import probe

INGEST_TARGET = 0.8
SYNTHETIC_TEXT_CHARS = 1100
SYNTHETIC_NOISE_NORM = 0.5
CHUNKS_PER_SYNTHETIC_DOC = 1000
ASK_LIMIT = 3  # questions per answer wanted, at most, while some find nothing relevant
ANSWER_STAGES = ("retrieval_ms", "rerank_ms", "llm_ttft_ms", "llm_ms", "other_ms", "total_ms")


# --- data -----------------------------------------------------------------------------------------------------

@dataclass
class SciFact:
    docs: list[dict]  # corpus records, the ones judged for a test claim first
    claims: list[str]  # test claims, in file order
    claim_docs: list[set[str]]  # the documents judged relevant to each claim

    def claims_answerable_from(self, docs: list[dict]) -> list[str]:
        """The claims whose judged documents are all among ``docs``, in file order."""
        present = {d["_id"] for d in docs}
        return [claim for claim, judged in zip(self.claims, self.claim_docs) if judged and judged <= present]


def load_scifact() -> SciFact:
    corpus = read_jsonl(SCIFACT / "corpus.jsonl.gz")
    claims = read_jsonl(SCIFACT / "queries.jsonl")
    if not corpus or not claims:
        raise SystemExit(f"bench.pipeline needs the SciFact set under {SCIFACT}")
    judged: dict[str, None] = {}
    per_claim: dict[str, set[str]] = {}
    for line in (SCIFACT / "qrels.tsv").read_text(encoding="utf-8").splitlines()[1:]:
        claim, doc, _ = line.split("\t")
        judged.setdefault(doc)
        per_claim.setdefault(claim, set()).add(doc)
    by_id = {d["_id"]: d for d in corpus}
    first = [by_id[i] for i in judged if i in by_id]
    rest = [d for d in corpus if d["_id"] not in judged]
    return SciFact(first + rest, [q["text"] for q in claims], [per_claim.get(q["_id"], set()) for q in claims])


def write_documents(docs: list[dict], folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for doc in docs:
        path = folder / f"scifact-{doc['_id']}.txt"
        path.write_text(f"{doc['title'].strip()}\n\n{doc['text'].strip()}\n", encoding="utf-8")
        paths.append(path)
    return paths


def percentile(values: list[float], q: float) -> float | None:
    return float(np.percentile(values, q)) if values else None


# --- the platform -----------------------------------------------------------------------------------------------

class Bench:
    """The running platform and what every part needs: URLs, the store seen from this process, CPU meters."""

    def __init__(self, platform: Platform, data_path: Path, args):
        self.platform, self.args = platform, args
        self.ports = platform.ports
        self.url = f"http://127.0.0.1:{self.ports['pipeline']}"
        self.settings = PipelineSettings(embed_url=f"http://127.0.0.1:{self.ports['embed']}/v1",
                                         rerank_url=f"http://127.0.0.1:{self.ports['rerank']}/v1",
                                         llm_url=f"http://127.0.0.1:{self.ports['llm']}/v1", data_path=data_path)
        self.catalog = Catalog(data_path / "collections", use_gpu=False)
        self.http = httpx.Client(base_url=self.url, timeout=None)

    def meter(self) -> ServicesMeter:
        return ServicesMeter([s.process.pid for s in self.platform.running])

    def cpu_by_process(self, reading: dict) -> dict[str, float | None]:
        """A ServicesMeter reading by name: each service, this process (``bench``) and everyone else."""
        names = [s.name for s in self.platform.running]
        return {**dict(zip(names, reading["per_service"])), "bench": reading["own"], "others": reading["others"]}

    def embed_totals(self) -> dict[str, float]:
        return asyncio.run(batcher_totals(self.ports["embed"]))

    def create_collection(self, name: str, index_kind: str = "flat") -> None:
        response = self.http.post("/v1/collections", json={"collection_name": name, "index_kind": index_kind})
        response.raise_for_status()

    def close(self) -> None:
        self.http.close()
        self.catalog.close()


def start_platform(data_path: Path) -> Platform:
    ports = {name: free_port() for name in ("embed", "rerank", "llm", "pipeline")}
    quiet = {f"NIMRAG_{name.upper()}_LOG_LEVEL": "WARNING" for name in ports}
    return Platform(ports=ports, env={**quiet, "NIMRAG_PIPELINE_DATA_PATH": str(data_path)})


# --- ingest ---------------------------------------------------------------------------------------------------

@dataclass
class Span:
    """What one side of a comparison added up over its timed pieces: seconds, the embedding engine's batches
    (from its /v1/metrics) and CPU per process (% of one core, weighted by the pieces' seconds)."""
    seconds: float = 0.0
    texts: int = 0
    batches: float = 0.0
    items: float = 0.0
    engine_s: float = 0.0
    cpu_seconds: dict = field(default_factory=dict)

    def add(self, seconds: float, texts: int, before: dict, after: dict, cpu: dict) -> None:
        self.seconds += seconds
        self.texts += texts
        self.batches += after["batches"] - before["batches"]
        self.items += after["items"] - before["items"]
        self.engine_s += after["engine_s"] - before["engine_s"]
        for name, pct in cpu.items():
            if pct is not None:
                self.cpu_seconds[name] = self.cpu_seconds.get(name, 0.0) + pct * seconds

    @property
    def rate(self) -> float:
        return self.texts / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        return {"seconds": self.seconds, "chunks": self.texts, "chunks_per_s": self.rate,
                "mean_batch": self.items / self.batches if self.batches else None,
                "engine_busy_pct": 100 * self.engine_s / self.seconds if self.seconds else None,
                "cpu_pct": {k: v / self.seconds for k, v in self.cpu_seconds.items()} if self.seconds else {}}


@dataclass
class IngestRound:
    round: int
    documents: int
    failed: int
    pieces: int
    ratio: float
    ingest: dict  # Span.summary() of each side
    embed: dict
    small_request_texts: int  # diagnosis: texts per request as the pipeline sends them (chunks per document)
    small: dict  # the embedding service fed such requests from this process


def timed(bench: Bench, span: Span, texts: int, work, *args) -> object:
    """Run ``work(*args)`` (returning (result, seconds), or a result timed here) and add it to ``span``."""
    before, meter, started = bench.embed_totals(), bench.meter(), time.perf_counter()
    outcome = work(*args)
    elapsed = time.perf_counter() - started
    result, seconds = outcome if isinstance(outcome, tuple) else (outcome, elapsed)
    span.add(seconds, texts, before, bench.embed_totals(), bench.cpu_by_process(meter.read()))
    return result


def upload(bench: Bench, paths: list[Path], collection: str) -> list[dict]:
    """``nimrag ingest``'s requests: 16 files each, blocking, one after another."""
    data = json.dumps({"collection_name": collection, "blocking": True})
    reports = []
    for start in range(0, len(paths), UPLOAD_BATCH_FILES):
        batch = paths[start:start + UPLOAD_BATCH_FILES]
        files = [("documents", (p.name, p.read_bytes(), "text/plain")) for p in batch]
        response = bench.http.post("/v1/documents", data={"data": data}, files=files)
        response.raise_for_status()
        reports += response.json()["result"]["files"]
    return reports


def stored_texts(bench: Bench, collection: str, sources: set[str]) -> list[str]:
    """The texts of the chunks the pipeline stored for ``sources``, read through the store from this process."""
    stored = bench.catalog.open(collection)
    return [c.chunk.text for c in stored.get_chunks(stored.indexed_ids()) if c.chunk.source in sources]


async def embed_like_ingestor(settings: PipelineSettings, texts: list[str]) -> tuple[np.ndarray, float]:
    """The texts through ``Ingestor.embed_passages`` (its batches and concurrency), timed after a warm-up."""
    clients = ServiceClients(settings)
    try:
        await clients.embed(["warm-up"], "passage")
        started = time.perf_counter()
        vectors = await Ingestor(clients, settings).embed_passages(texts)
        return vectors, time.perf_counter() - started
    finally:
        await clients.close()


def embed_texts(settings: PipelineSettings, texts: list[str]) -> tuple[np.ndarray, float]:
    return asyncio.run(embed_like_ingestor(settings, texts))


def ingest_round(bench: Bench, number: int, docs: list[dict], folder: Path,
                 piece_files: int) -> tuple[IngestRound, np.ndarray]:
    """Ingest ``docs`` in pieces of ``piece_files`` files; after each piece, the embedding service alone on the
    chunk texts the piece stored, then the same in requests as small as the pipeline's. Interleaving keeps
    both sides under the same load from other processes, which drifts by the minute on a shared machine."""
    name = f"ingest-{number}"
    paths = write_documents(docs, folder / name)
    bench.create_collection(name)
    sides = {"ingest": Span(), "embed": Span(), "small": Span()}
    reports, vectors, pieces, per_doc = [], [], 0, 1
    for start in range(0, len(paths), piece_files):
        piece = paths[start:start + piece_files]
        done = timed(bench, sides["ingest"], 0, upload, bench, piece, name)
        reports += done
        sources = {r["source"] for r in done if r["status"] in ("added", "replaced")}
        texts = stored_texts(bench, name, sources)
        sides["ingest"].texts += sum(r["chunks"] for r in done if r["status"] in ("added", "replaced"))
        vectors.append(timed(bench, sides["embed"], len(texts), embed_texts, bench.settings, texts))
        # requests of one document's chunks (the mean so far), FILES_IN_FLIGHT in flight: what small requests
        # alone cost, without the pipeline's own work
        added = sum(r["status"] in ("added", "replaced") for r in reports)
        per_doc = max(1, round(sides["ingest"].texts / max(1, added)))
        small = bench.settings.model_copy(update={"embed_batch_size": per_doc,
                                                  "embed_concurrency": FILES_IN_FLIGHT})
        timed(bench, sides["small"], len(texts), embed_texts, small, texts)
        pieces += 1
    failed = sum(r["status"] == "failed" for r in reports)
    ingest, embed, small_side = (sides[k].summary() for k in ("ingest", "embed", "small"))
    result = IngestRound(number, len(docs), failed, pieces, ingest["chunks_per_s"] / embed["chunks_per_s"],
                         ingest, embed, per_doc, small_side)
    print(f"  round {number}: {len(docs)} files in {pieces} pieces -> {ingest['chunks']} chunks in "
          f"{ingest['seconds']:.1f} s = {ingest['chunks_per_s']:.1f} chunks/s; embed service on the same texts "
          f"{embed['chunks_per_s']:.1f} chunks/s; ratio {result.ratio:.3f}; in requests of {per_doc}, "
          f"{FILES_IN_FLIGHT} in flight: {small_side['chunks_per_s']:.1f} chunks/s (others "
          f"{fmt(ingest['cpu_pct'].get('others'), '.0f')}% / {fmt(embed['cpu_pct'].get('others'), '.0f')}% CPU)",
          flush=True)
    return result, np.concatenate(vectors)


# --- search ---------------------------------------------------------------------------------------------------

@dataclass
class LatencyRow:
    what: str
    chunks: int
    index: str
    requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    server_retrieval_p50_ms: float | None = None  # the pipeline's own timings_ms.retrieval_ms (HTTP rows)
    hnsw_recall_at_k: float | None = None  # HNSW top-k against the flat (exact) top-k on the same vectors
    other_cpu_pct: float | None = None


def synthetic_texts(docs: list[dict]) -> list[str]:
    texts = []
    for doc in docs:
        text = f"{doc['title'].strip()} {doc['text'].strip()}"
        if len(text) > SYNTHETIC_TEXT_CHARS:
            text = text[:SYNTHETIC_TEXT_CHARS].rsplit(" ", 1)[0]
        texts.append(text)
    return texts


def synthetic_vectors(base: np.ndarray, start: int, count: int, rng: np.random.Generator) -> np.ndarray:
    rows = base[np.arange(start, start + count) % len(base)]
    noise = rng.standard_normal(rows.shape).astype(np.float32) * (SYNTHETIC_NOISE_NORM / np.sqrt(base.shape[1]))
    vectors = rows + noise
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def build_collection(bench: Bench, name: str, kind: str, size: int, texts: list[str], base: np.ndarray) -> float:
    """Write ``size`` synthetic chunks, 1,000 per document, the same ones in the same order for every collection
    (so chunk ids match across collections); persist the index. Returns the seconds it took."""
    started, rng = time.perf_counter(), np.random.default_rng(0)
    collection = bench.catalog.create(name, base.shape[1], kind)
    for start in range(0, size, CHUNKS_PER_SYNTHETIC_DOC):
        count = min(CHUNKS_PER_SYNTHETIC_DOC, size - start)
        source = f"synthetic-{start // CHUNKS_PER_SYNTHETIC_DOC:04d}"
        chunks = [Chunk(source, i, texts[(start + i) % len(texts)], None, 0, len(texts[(start + i) % len(texts)]))
                  for i in range(count)]
        doc = ParsedDocument(source, source, "text/plain", [Page(None, "")], f"{name}-{start}")
        collection.upsert_document(doc, chunks, synthetic_vectors(base, start, count, rng))
    collection.flush()
    return time.perf_counter() - started


def time_dense(collection, queries: np.ndarray, k: int) -> tuple[list[float], list[list[int]]]:
    collection.dense_search(queries[0], k)  # warm
    latencies, results = [], []
    for query in queries:
        started = time.perf_counter()
        hits = collection.dense_search(query, k)
        latencies.append(1000 * (time.perf_counter() - started))
        results.append([chunk_id for chunk_id, _ in hits])
    return latencies, results


def row(what: str, chunks: int, index: str, latencies: list[float], others: float | None, **extra) -> LatencyRow:
    return LatencyRow(what, chunks, index, len(latencies), percentile(latencies, 50), percentile(latencies, 99),
                      float(np.mean(latencies)), other_cpu_pct=others, **extra)


def bench_lexical(bench: Bench, name: str, size: int, kind: str, claims: list[str]) -> LatencyRow:
    """``Collection.lexical_search`` (FTS5 BM25) in this process: the other half of a hybrid search."""
    collection, k = bench.catalog.open(name), bench.settings.vdb_top_k
    collection.lexical_search(claims[-1], k)
    latencies, meter = [], bench.meter()
    for claim in claims:
        started = time.perf_counter()
        collection.lexical_search(claim, k)
        latencies.append(1000 * (time.perf_counter() - started))
    r = row("lexical_search (FTS5) in-process", size, kind, latencies, meter.read()["others"])
    print(f"  {r.what:<44} {kind:<5} {size:>7,} chunks: p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms", flush=True)
    return r


def bench_dense(bench: Bench, name: str, size: int, kind: str, queries: np.ndarray,
                exact: list[list[int]] | None) -> tuple[list[LatencyRow], list[list[int]]]:
    collection, k = bench.catalog.open(name), bench.settings.vdb_top_k
    rows, threads = [], faiss.omp_get_max_threads()
    meter = bench.meter()
    latencies, results = time_dense(collection, queries, k)
    recall = None
    if exact is not None:
        recall = float(np.mean([len(set(a) & set(b)) / max(len(b), 1) for a, b in zip(results, exact)]))
    rows.append(row(f"dense_search in-process, FAISS {threads} threads", size, kind, latencies,
                    meter.read()["others"], hnsw_recall_at_k=recall))
    faiss.omp_set_num_threads(1)
    try:
        meter = bench.meter()
        latencies, _ = time_dense(collection, queries, k)
        rows.append(row("dense_search in-process, FAISS 1 thread", size, kind, latencies, meter.read()["others"]))
    finally:
        faiss.omp_set_num_threads(threads)
    for r in rows:
        print(f"  {r.what:<44} {kind:<5} {size:>7,} chunks: p50 {r.p50_ms:.2f} ms, p99 {r.p99_ms:.2f} ms"
              + (f", recall@{k} vs exact {r.hnsw_recall_at_k:.3f}" if r.hnsw_recall_at_k is not None else ""),
              flush=True)
    return rows, results


def bench_http_search(bench: Bench, name: str, size: int, kind: str, claims: list[str], requests: int) -> LatencyRow:
    def search(query: str) -> dict:
        response = bench.http.post("/v1/search", json={"query": query, "collection_name": name,
                                                       "search_mode": "hybrid", "enable_reranker": False})
        response.raise_for_status()
        return response.json()

    search(claims[-1])  # the pipeline opens the collection (loads its index) on the first search
    search(claims[-2])
    latencies, server = [], []
    meter = bench.meter()
    for i in range(requests):
        started = time.perf_counter()
        body = search(claims[i % len(claims)])
        latencies.append(1000 * (time.perf_counter() - started))
        server.append(body["timings_ms"]["retrieval_ms"])
    r = row("POST /v1/search hybrid, no rerank", size, kind, latencies, meter.read()["others"],
            server_retrieval_p50_ms=percentile(server, 50))
    print(f"  {r.what:<44} {kind:<5} {size:>7,} chunks: p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms "
          f"(pipeline's retrieval_ms p50 {r.server_retrieval_p50_ms:.1f})", flush=True)
    return r


async def embed_queries(settings: PipelineSettings, claims: list[str]) -> np.ndarray:
    clients = ServiceClients(settings)
    try:
        return await clients.embed(claims, "query")
    finally:
        await clients.close()


def search_part(bench: Bench, data: SciFact, base: np.ndarray, args) -> tuple[list[LatencyRow], dict]:
    texts = synthetic_texts(data.docs)
    queries = asyncio.run(embed_queries(bench.settings, data.claims))
    rows, builds = [], {}
    plan = [(size, "flat") for size in args.sizes] + [(args.hnsw_size, "hnsw")]
    exact: dict[int, list[list[int]]] = {}
    for size, kind in plan:
        name = f"synthetic-{kind}-{size}"
        seconds = build_collection(bench, name, kind, size, texts, base)
        builds[name] = seconds
        print(f"  wrote {name}: {size:,} chunks in {seconds:.1f} s ({size / seconds:.0f} chunks/s)", flush=True)
        dense_rows, results = bench_dense(bench, name, size, kind, queries, exact.get(size))
        if kind == "flat":
            exact[size] = results
        rows += dense_rows
        if kind == "flat":  # the same texts in every collection: FTS5 does not depend on the vector index
            rows.append(bench_lexical(bench, name, size, kind, data.claims[:args.search_requests]))
        rows.append(bench_http_search(bench, name, size, kind, data.claims, args.search_requests))
        bench.catalog.open(name).close()
    return rows, builds


# --- answers --------------------------------------------------------------------------------------------------

@dataclass
class Answer:
    metrics: dict
    client_ttft_ms: float | None
    client_total_ms: float
    completion_tokens: int | None
    prompt_tokens: int | None = None
    citations: int | None = None  # sources the answer was given (0: the pipeline found nothing relevant)
    error: str | None = None
    guardrails: dict | None = None  # the policy's verdict, when one ran


@dataclass
class AnswerLevel:
    users: int
    requests: int  # answers with sources (the ones the figures describe)
    errors: int
    seconds: float
    p50_ms: dict[str, float | None] = field(default_factory=dict)  # per stage, from the final chunk's metrics
    client_ttft_p50_ms: float | None = None
    client_ttft_p99_ms: float | None = None
    client_total_p50_ms: float | None = None
    completion_tokens_mean: float | None = None
    prompt_tokens_mean: float | None = None
    no_context: int = 0  # questions the pipeline found nothing relevant for (no LLM call), not in the figures
    no_context_total_p50_ms: float | None = None
    other_cpu_pct: float | None = None
    error_samples: list[str] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)


async def ask(client: httpx.AsyncClient, question: str, collection: str, max_tokens: int,
              extra: dict | None = None) -> Answer:
    body = {"messages": [{"role": "user", "content": question}], "collection_name": collection, "stream": True,
            "max_tokens": max_tokens, **(extra or {})}
    started, first, metrics, usage, error, citations = time.perf_counter(), None, None, None, None, None
    verdict = None
    async with client.stream("POST", "/v1/generate", json=body) as response:
        if response.status_code != 200:
            text = (await response.aread()).decode(errors="replace")
            return Answer({}, None, 1000 * (time.perf_counter() - started), None, f"HTTP {response.status_code}: "
                          f"{text[:200]}")
        async for line in response.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:
                error = str(chunk["error"])[:200]
                continue
            if "citations" in chunk:
                citations = chunk["citations"].get("total_results")
            choice = (chunk.get("choices") or [{}])[0]
            if first is None and choice.get("delta", {}).get("content"):
                first = time.perf_counter()
            if "metrics" in chunk:
                metrics, usage = chunk["metrics"] or {}, chunk.get("usage") or {}
                verdict = chunk.get("guardrails")
    total = time.perf_counter() - started
    if metrics is None and error is None:
        error = "no final chunk with metrics"
    metrics = dict(metrics or {})
    if "total_ms" in metrics:
        metrics["other_ms"] = metrics["total_ms"] - sum(metrics.get(k, 0.0)
                                                        for k in ("retrieval_ms", "rerank_ms", "llm_ms"))
    return Answer(metrics, None if first is None else 1000 * (first - started), 1000 * total,
                  (usage or {}).get("completion_tokens"), (usage or {}).get("prompt_tokens"), citations, error,
                  verdict)


async def answer_level(bench: Bench, users: int, per_user: int, questions: list[str], collection: str,
                       max_tokens: int) -> AnswerLevel:
    """Each user asks its own questions back to back until ``per_user`` of them got sources (an answer the
    pipeline finds nothing relevant for skips the LLM: it is counted, and not in the per-stage figures), at most
    ``ASK_LIMIT`` x ``per_user`` questions."""
    span = ASK_LIMIT * per_user
    async with httpx.AsyncClient(base_url=bench.url, timeout=None) as client:
        await ask(client, questions[-1], collection, max_tokens)  # warm: opens the collection, loads what is lazy
        meter, started = bench.meter(), time.perf_counter()

        async def user(number: int) -> list[Answer]:
            answers: list[Answer] = []
            for question in questions[number * span:(number + 1) * span]:
                answers.append(await ask(client, question, collection, max_tokens))
                if sum(a.error is None and bool(a.citations) for a in answers) >= per_user:
                    break
            return answers

        answers = [a for batch in await asyncio.gather(*(user(u) for u in range(users))) for a in batch]
        seconds, others = time.perf_counter() - started, meter.read()["others"]
    good = [a for a in answers if a.error is None and a.citations]
    errors = [a for a in answers if a.error is not None]
    level = AnswerLevel(users, len(good), len(errors), seconds, other_cpu_pct=others,
                        error_samples=[a.error for a in errors][:3],
                        no_context=sum(a.error is None and not a.citations for a in answers),
                        answers=[asdict(a) for a in answers])
    level.p50_ms = {stage: percentile([a.metrics[stage] for a in good if stage in a.metrics], 50)
                    for stage in ANSWER_STAGES}
    ttft = [a.client_ttft_ms for a in good if a.client_ttft_ms is not None]
    level.client_ttft_p50_ms, level.client_ttft_p99_ms = percentile(ttft, 50), percentile(ttft, 99)
    level.client_total_p50_ms = percentile([a.client_total_ms for a in good], 50)
    tokens = [a.completion_tokens for a in good if a.completion_tokens is not None]
    level.completion_tokens_mean = float(np.mean(tokens)) if tokens else None
    prompts = [a.prompt_tokens for a in good if a.prompt_tokens is not None]
    level.prompt_tokens_mean = float(np.mean(prompts)) if prompts else None
    level.no_context_total_p50_ms = percentile([a.client_total_ms for a in answers
                                                if a.error is None and not a.citations], 50)
    stages = ", ".join(f"{k.removesuffix('_ms')} {fmt(v, '.0f')}" for k, v in level.p50_ms.items())
    print(f"  {users} user(s): {len(good)} answers with sources, {level.no_context} 'nothing relevant', "
          f"{len(errors)} errors; p50 ms {stages}; client TTFT p50 {fmt(level.client_ttft_p50_ms, '.0f')} ms",
          flush=True)
    return level


# --- report ---------------------------------------------------------------------------------------------------

def print_report(rounds: list[IngestRound], rows: list[LatencyRow], levels: list[AnswerLevel], args) -> dict:
    print("\ningest (chunks/s; embed: the embedding service alone on the same chunk texts, the pipeline's batches; "
          "small: the same in requests of one document's chunks, as the pipeline sends them):")
    print(f"{'round':>5} {'files':>6} {'pieces':>6} {'chunks':>7} {'ingest s':>9} {'ingest/s':>9} {'embed/s':>8} "
          f"{'small/s':>8} {'ratio':>6} {'batch ing/emb/sm':>17} {'busy% ing/emb/sm':>17} {'other% ing/emb/sm':>18}")
    for r in rounds:
        sides = (r.ingest, r.embed, r.small)
        batch = "/".join(fmt(x["mean_batch"]) for x in sides)
        busy = "/".join(fmt(x["engine_busy_pct"], ".0f") for x in sides)
        others = "/".join(fmt(x["cpu_pct"].get("others"), ".0f") for x in sides)
        print(f"{r.round:>5} {r.documents:>6} {r.pieces:>6} {r.ingest['chunks']:>7} {r.ingest['seconds']:>9.1f} "
              f"{r.ingest['chunks_per_s']:>9.1f} {r.embed['chunks_per_s']:>8.1f} {r.small['chunks_per_s']:>8.1f} "
              f"{r.ratio:>6.3f} {batch:>17} {busy:>17} {others:>18}")
    for r in rounds:
        def shares(cpu: dict) -> str:
            return ", ".join(f"{k} {fmt(cpu.get(k), '.0f')}" for k in ("embed", "pipeline", "bench", "others"))
        print(f"  round {r.round} CPU, % of one core: ingesting: {shares(r.ingest['cpu_pct'])}; embed service alone: "
              f"{shares(r.embed['cpu_pct'])}")
    print("batch: texts per embedding-engine batch; busy%: share of the time the engine was running; other%: CPU of "
          "other processes (not the platform, not this one)")
    chunks = sum(r.ingest["chunks"] for r in rounds)
    ingest_s = sum(r.ingest["seconds"] for r in rounds)
    texts, embed_s = sum(r.embed["chunks"] for r in rounds), sum(r.embed["seconds"] for r in rounds)
    ratio = (chunks / ingest_s) / (texts / embed_s)
    verdict = "PASS" if ratio >= INGEST_TARGET else "MISS"
    print(f"all rounds: ingest {chunks / ingest_s:.1f} chunks/s, embed service {texts / embed_s:.1f} chunks/s, "
          f"ratio {ratio:.3f}  target >= {INGEST_TARGET}  {verdict}")

    print("\nsearch latency (ms; k = vdb_top_k; HTTP: one client, hybrid, no rerank):")
    print(f"{'what':<46}{'index':<6}{'chunks':>8}{'n':>5}{'p50':>9}{'p99':>9}{'srv p50':>9}{'recall':>8}"
          f"{'other%':>7}")
    for r in rows:
        print(f"{r.what:<46}{r.index:<6}{r.chunks:>8,}{r.requests:>5}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
              f"{fmt(r.server_retrieval_p50_ms):>9}{fmt(r.hnsw_recall_at_k, '.3f'):>8}"
              f"{fmt(r.other_cpu_pct, '.0f'):>7}")
    print("srv p50: the pipeline's own retrieval_ms (query embedding + dense + FTS5, concurrently); recall: HNSW "
          "top-k against the flat index's exact top-k on the same vectors")

    print(f"\nanswers (POST /v1/generate streaming, max_tokens {args.max_tokens}; p50 ms per stage from the final "
          "chunk's metrics):")
    print(f"{'users':>5}{'answers':>8}{'nothing':>8}{'errors':>7}"
          + "".join(f"{s.removesuffix('_ms'):>11}" for s in ANSWER_STAGES)
          + f"{'TTFT p50':>10}{'TTFT p99':>10}{'prompt':>8}{'tokens':>8}{'other%':>7}")
    for level in levels:
        print(f"{level.users:>5}{level.requests:>8}{level.no_context:>8}{level.errors:>7}"
              + "".join(f"{fmt(level.p50_ms.get(s), '.0f'):>11}" for s in ANSWER_STAGES)
              + f"{fmt(level.client_ttft_p50_ms, '.0f'):>10}{fmt(level.client_ttft_p99_ms, '.0f'):>10}"
              f"{fmt(level.prompt_tokens_mean, '.0f'):>8}{fmt(level.completion_tokens_mean, '.0f'):>8}"
              f"{fmt(level.other_cpu_pct, '.0f'):>7}")
        for sample in level.error_samples:
            print(f"      error: {sample}")
    print("answers: with sources, the ones the figures describe; nothing: questions for which no passage reached "
          "the relevance threshold (answered without the LLM, left out); TTFT: the client's time to the first "
          "answer token; other: total minus retrieval, rerank and llm (fetching chunks, packing the prompt with the "
          "LLM's /tokenize); prompt / tokens: mean prompt / completion tokens; other%: CPU of other processes")
    return {"ratio": ratio, "target": INGEST_TARGET, "verdict": verdict}


# --- main -----------------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one small ingest round, 10k chunks only, "
                                                        "few answers")
    p.add_argument("--docs", type=int, help="files per ingest round (default 200; quick 100)")
    p.add_argument("--rounds", type=int, help="ingest rounds (default 2; quick 1)")
    p.add_argument("--sizes", type=int_list, help="flat collection sizes (default 10000,100000; quick 10000)")
    p.add_argument("--hnsw-size", type=int, help="HNSW collection size (default 100000; quick 10000)")
    p.add_argument("--search-requests", type=int, help="HTTP searches per collection (default 150; quick 40)")
    p.add_argument("--answers", type=int, help="answers at 1 user (default 6; quick 2)")
    p.add_argument("--answers-per-user", type=int, help="answers per user at 4 users (default 2; quick 1)")
    p.add_argument("--max-tokens", type=int, default=128, help="answer length asked for")
    p.add_argument("--piece-files", type=int, default=48,
                   help="files ingested between two measurements of the embedding service alone (interleaved)")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the platform")
    p.add_argument("--skip", type=lambda text: {x.strip() for x in text.split(",") if x.strip()}, default=set(),
                   help="parts to leave out: search, answers (ingest always runs: the others need it)")
    args = p.parse_args(argv)
    defaults = {"docs": (200, 100), "rounds": (2, 1), "sizes": ([10000, 100000], [10000]),
                "hnsw_size": (100000, 10000), "search_requests": (150, 40), "answers": (6, 2),
                "answers_per_user": (2, 1)}
    if args.skip - {"search", "answers"}:
        p.error(f"--skip takes search and answers, not {', '.join(sorted(args.skip - {'search', 'answers'}))}")
    for key, (full, quick) in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, stamp = time.perf_counter(), time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    data = load_scifact()
    needed = args.docs * args.rounds
    if needed > len(data.docs):
        raise SystemExit(f"--docs x --rounds = {needed}, but SciFact has {len(data.docs)} abstracts")
    print(f"pipeline benchmark: {machine_line(hw)}; faiss {faiss.__version__} with {faiss.omp_get_max_threads()} "
          f"OpenMP threads; {os.cpu_count()} CPUs", flush=True)
    with tempfile.TemporaryDirectory(prefix="nimrag-bench-pipeline-") as tmp:
        folder = Path(tmp)
        platform = start_platform(folder / "data")
        try:
            t0 = time.perf_counter()
            platform.start(timeout_s=args.ready_timeout)
            profiles = {name: selected_profile(platform.ports[name]) for name in ("embed", "rerank", "llm")}
            print(f"platform ready after {time.perf_counter() - t0:.1f} s on ports {platform.ports}; profiles "
                  f"{profiles}", flush=True)
            bench = Bench(platform, folder / "data", args)
            try:
                print("ingest:", flush=True)
                rounds, vectors = [], []
                for number in range(1, args.rounds + 1):
                    docs = data.docs[(number - 1) * args.docs: number * args.docs]
                    result, embedded = ingest_round(bench, number, docs, folder / "files", args.piece_files)
                    rounds.append(result)
                    vectors.append(embedded)
                rows, builds, levels = [], {}, []
                if "search" not in args.skip:
                    print("search:", flush=True)
                    rows, builds = search_part(bench, data, np.concatenate(vectors), args)
                if "answers" not in args.skip:
                    print("answers:", flush=True)
                    questions = data.claims_answerable_from(data.docs[:args.docs])
                    second = ASK_LIMIT * args.answers  # the 4-user level asks other questions
                    levels = [asyncio.run(answer_level(bench, 1, args.answers, questions, "ingest-1",
                                                       args.max_tokens)),
                              asyncio.run(answer_level(bench, 4, args.answers_per_user, questions[second:],
                                                       "ingest-1", args.max_tokens))]
            finally:
                bench.close()
        finally:
            platform.stop()
    ingest = print_report(rounds, rows, levels, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"pipeline-{stamp}.json"
    meta = {"timestamp": stamp, "quick": args.quick, "args": {**vars(args), "skip": sorted(args.skip)},
            "hardware": hw.as_dict(),
            "faiss_threads": faiss.omp_get_max_threads(), "profiles": profiles, "synthetic": {
                "texts": f"SciFact title + abstract cut to {SYNTHETIC_TEXT_CHARS} chars, reused in turn",
                "vectors": f"real embeddings of the ingested chunks + Gaussian noise of norm ~{SYNTHETIC_NOISE_NORM}, "
                           "normalized", "chunks_per_document": CHUNKS_PER_SYNTHETIC_DOC, "build_s": builds},
            "wall_s": time.perf_counter() - started}
    out.write_text(json.dumps({"meta": meta, "ingest": {"rounds": [asdict(r) for r in rounds], **ingest},
                               "search": [asdict(r) for r in rows], "answers": [asdict(level) for level in levels]},
                              indent=2))
    print(f"\nresults: {out.relative_to(REPO)}  (wall {meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    run_main(main)
