"""Retrieval quality of the pipeline itself: dense, hybrid (RRF of dense + FTS5 BM25) and hybrid + rerank, BEIR-style.

    python -m bench.retrieval_quality                            # scifact, cranfield, squad (1,000 sampled queries)
    python -m bench.retrieval_quality --sets scifact --max-queries 50
    python -m bench.retrieval_quality --sets scifact --stores faiss,milvus --no-rerank   # store parity

Each set's corpus goes into a fresh collection (flat index, in a temporary folder) of each store ``--stores`` names
(default: faiss), each opened through the pipeline's own factory (``open_vector_store``: FAISS + SQLite, or Milvus
Lite at ``milvus.db``): one chunk per BEIR document, its text title + " " + text (as ``bench.rerank_quality``), embedded by the
real embedding service over HTTP (``input_type: passage``, ``truncate: END``, through ``ServiceClients`` in the
pipeline's batches: ``Ingestor.embed_passages``), once per set: every store gets the same vectors. No file is parsed: each document is a ``ParsedDocument`` with one
``Chunk``, its ``source`` the BEIR document id. Each query is embedded once, alone (``FixedQueryVectors``: the
int8 engine's vectors shift with what it batches them with), and that vector serves every method and store. The
queries then go through the pipeline's own ``Retriever``:

- ``lexical``: ``mode="lexical"``, the FTS5 BM25 top 100 alone (SQLite's bm25(), k1=1.2, b=0.75, Porter stemming,
  every query word OR-ed): no target, it shows what hybrid fuses with dense;
- ``dense``: ``mode="dense"``, the top ``vdb_top_k`` (100) by cosine, no reranking;
- ``hybrid``: the pipeline's default mode, RRF (k=60) of the dense and the FTS5 BM25 top 100 each, no reranking;
- ``hybrid+rerank``: the rerank service scores the fused top ``rerank_candidates`` (the pipeline's setting, 40)
  and orders them; ranks below those are the hybrid order (so its recall@100 is hybrid's). The relevance
  threshold is off (-inf) so that every candidate is ranked;
- ``rerank>=threshold``: the same reranked candidates cut where the pipeline cuts them before answering, at its
  ``relevance_threshold`` (0.4 for the bundled reranker), nothing below. Queries left with no candidate are the
  ones the pipeline answers "nothing relevant"; they are counted, with how many had a relevant passage among
  the candidates all the same.

The embedding and rerank services run as subprocesses (``nimrag serve``) on free ports with their default
(auto-selected) profiles; their logs go beside the results. Metrics are ``bench.rerank_quality``'s (pytrec_eval's
for BEIR): nDCG@10 with graded gains, recall@k counting relevance >= 1. Paired nDCG@10 differences (hybrid -
dense, hybrid+rerank - hybrid) get a bootstrap 95% interval and a sign-flip p-value over queries. Targets: dense
within 0.01 of the model's published figure where there is one (SciFact), hybrid >= dense. Results go to
``bench/results/retrieval-quality-<timestamp>.json``: ``sets`` holds the first store's results (the shape it had
with one store), ``stores`` every store's.

With several stores the same run prints each method's metrics per store and the difference of each from the first
store's; dense and hybrid nDCG@10 must agree within ``PARITY_TOLERANCE`` (0.01), else a FAIL line and exit status 1.
``--no-rerank`` leaves out the rerank pass and the off-topic calibration (most of the run's time on a CPU, and the
same for every store whose fused candidates agree).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.common import (
    REPO,
    RESULTS,
    CpuMeter,
    Service,
    fmt,
    machine_line,
    run_main,
)
from bench.rerank_quality import (
    SEED,
    SET_FOLDERS,
    EvalSet,
    add_set_arguments,
    load_set,
    ndcg_at,
    paired_difference,
    parse_sets,
    recall_at,
)
from nimrag.pipeline.clients import ServiceClients
from nimrag.pipeline.documents import Chunk, Page, ParsedDocument
from nimrag.pipeline.ingest import Ingestor
from nimrag.pipeline.retrieval import Retriever, SearchOptions
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.vectorstore import BACKENDS, open_vector_store
from nimrag.services.common.hardware import probe
from nimrag.services.common.settings import default_cache_path

DEPTH = 100  # vdb_top_k, and the depth of every ranking evaluated
METHODS = ("dense", "hybrid", "hybrid+rerank")
LEXICAL = "lexical"  # FTS5 BM25 alone: not a target, it shows what hybrid fuses with dense
THRESHOLDED = "rerank>=threshold"  # hybrid+rerank cut at the pipeline's relevance threshold, as it answers
METRICS = ("ndcg@10", "recall@10", "recall@100")
# all-MiniLM-L6-v2's published nDCG@10 per set: (figure, source). Cranfield and SQuAD are in neither BEIR nor MTEB.
PUBLISHED = {"scifact": (0.645, "MTEB, SciFact test")}
PUBLISHED_TOLERANCE = 0.01
INDEX_PROGRESS = 1024  # passages embedded between progress lines
PARITY_TOLERANCE = 0.01  # largest nDCG@10 difference between two stores for the same vectors and texts
PARITY_METHODS = ("dense", "hybrid")


class ServicesMeter:
    """CPU over a span in % of one core: this process, the services it started (together), everyone else."""

    def __init__(self, pids: list[int]):
        self.meters = [CpuMeter(pid) for pid in pids] or [CpuMeter()]

    def read(self) -> dict:
        """``own``, ``services`` (their sum), ``others``, and ``per_service``: each pid's share, in order."""
        reads = [m.read() for m in self.meters]
        services = [r["server"] for r in reads]
        total = None if None in services else sum(services)
        others = reads[0]["others"]
        if others is not None and total is not None:
            others = max(0.0, others - sum(services[1:]))  # the first meter already left its own server out
        return {"own": reads[0]["own"], "services": total, "others": others, "per_service": services}


def selected_profile(port: int) -> str | None:
    """The profile a running model service selected (its /v1/metadata)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/metadata", timeout=10) as response:
            return json.loads(response.read())["selectedModelProfileId"]
    except (OSError, ValueError, KeyError):
        return None


# --- indexing -----------------------------------------------------------------------------------------------

def document_of(doc_id: str, text: str) -> tuple[ParsedDocument, Chunk]:
    digest = hashlib.sha256(text.encode()).hexdigest()
    doc = ParsedDocument(source=doc_id, title="", media_type="text/plain", pages=[Page(None, text)],
                         content_hash=digest)
    return doc, Chunk(source=doc_id, index=0, text=text, page=None, start=0, end=len(text), content_hash=digest)


async def embed_set(data: EvalSet, ingestor: Ingestor, pids: list[int]) -> tuple[np.ndarray, dict]:
    """Every passage's vector, embedded over HTTP (the pipeline's batches and concurrency), and what it cost."""
    started, meter = time.perf_counter(), ServicesMeter(pids)
    # The service takes no empty input: an empty passage (two Cranfield documents) gets a zero vector, which no
    # query is similar to, and no words for FTS5 to match.
    present = [i for i, text in enumerate(data.doc_texts) if text.strip()]
    parts = []
    for begin in range(0, len(present), INDEX_PROGRESS):
        texts = [data.doc_texts[i] for i in present[begin:begin + INDEX_PROGRESS]]
        parts.append(await ingestor.embed_passages(texts))
        done = begin + len(texts)
        print(f"    embedded {done}/{len(present)} passages "
              f"({done / (time.perf_counter() - started):.1f}/s)", flush=True)
    embedded = np.concatenate(parts)
    vectors = np.zeros((len(data.doc_texts), embedded.shape[1]), dtype=np.float32)
    vectors[present] = embedded
    embed_s = time.perf_counter() - started
    return vectors, {"passages": len(data.doc_ids), "empty_passages": len(data.doc_ids) - len(present),
                     "embed_s": embed_s, "passages_per_s": len(present) / embed_s,
                     "embed_other_cpu_pct": meter.read()["others"]}


async def write_set(data: EvalSet, collection, vectors: np.ndarray) -> float:
    """One document per passage, through the store's contract; the seconds it took."""
    started = time.perf_counter()
    for doc_id, text, vector in zip(data.doc_ids, data.doc_texts, vectors):
        doc, chunk = document_of(doc_id, text)
        await collection.upsert_document(doc, [chunk], vector[None, :])
    return time.perf_counter() - started


# --- searching ----------------------------------------------------------------------------------------------

class FixedQueryVectors:
    """The service clients with each query's embedding fixed: the embedding service's int8 engine gives a text a
    slightly different vector (cosine ~0.995) depending on which requests it batches it with, so a query embedded
    anew per store could rank differently for that reason alone. Each query is embedded once, alone (as one user's
    search is), and every store and method gets that vector; reranking goes to the service as before."""

    def __init__(self, clients: ServiceClients):
        self.clients = clients
        self.vectors: dict[str, np.ndarray] = {}

    async def fix(self, texts: list[str]) -> None:
        for text in texts:
            if text not in self.vectors:
                self.vectors[text] = (await self.clients.embed([text], "query"))[0]

    async def embed(self, texts: list[str], input_type: str) -> np.ndarray:
        if input_type == "query" and all(text in self.vectors for text in texts):
            return np.stack([self.vectors[text] for text in texts])
        return await self.clients.embed(texts, input_type)

    async def rerank(self, query: str, passages: list[str]) -> list[float]:
        return await self.clients.rerank(query, passages)


@dataclass(frozen=True)
class Methods:
    dense: SearchOptions
    lexical: SearchOptions
    hybrid: SearchOptions
    rerank: SearchOptions


def methods(settings: PipelineSettings, rerank_candidates: int) -> Methods:
    common = {"vdb_top_k": DEPTH, "rerank_candidates": rerank_candidates, "threshold": -math.inf}
    return Methods(dense=SearchOptions(reranker_top_k=DEPTH, rerank=False, mode="dense", **common),
                   lexical=SearchOptions(reranker_top_k=DEPTH, rerank=False, mode="lexical", **common),
                   hybrid=SearchOptions(reranker_top_k=DEPTH, rerank=False, mode="hybrid", **common),
                   rerank=SearchOptions(reranker_top_k=rerank_candidates, rerank=True, mode="hybrid", **common))


def doc_ids(hits) -> list[str]:
    return [h.chunk.source for h in hits]


async def run_queries(data: EvalSet, concurrency: int, label: str, one) -> tuple[list, float]:
    """``one(query)`` for every query, ``concurrency`` at a time, in query order; prints progress."""
    slots, started, done = asyncio.Semaphore(concurrency), time.perf_counter(), 0
    step = max(1, len(data.query_texts) // 5)

    async def run(text: str):
        nonlocal done
        async with slots:
            result = await one(text)
        done += 1
        if done % step == 0 or done == len(data.query_texts):
            print(f"    {label}: {done}/{len(data.query_texts)} queries "
                  f"({time.perf_counter() - started:.0f} s)", flush=True)
        return result

    results = await asyncio.gather(*(run(text) for text in data.query_texts))
    return results, time.perf_counter() - started


async def evaluate_set(data: EvalSet, collection, retriever: Retriever, options: Methods, concurrency: int,
                       pids: list[int], threshold: float, rerank: bool = True) -> dict:
    async def first_stage(text: str) -> tuple[list[str], list[str], list[str]]:
        dense = await retriever.search([collection], text, options.dense)
        lexical = await retriever.search([collection], text, options.lexical)
        hybrid = await retriever.search([collection], text, options.hybrid)
        return doc_ids(dense.hits), doc_ids(lexical.hits), doc_ids(hybrid.hits)

    async def reranked(text: str) -> tuple[list[str], list[float], float]:
        result = await retriever.search([collection], text, options.rerank)
        return doc_ids(result.hits), [h.score for h in result.hits], result.timings_ms.get("rerank_ms", 0.0)

    meter = ServicesMeter(pids)
    first, first_s = await run_queries(data, concurrency, "dense, lexical, hybrid", first_stage)
    first_others = meter.read()["others"]
    rows = (LEXICAL, "dense", "hybrid")
    per_query: dict[str, dict[str, list[float]]] = {m: {k: [] for k in METRICS} for m in rows}
    for qid, (dense, lexical, hybrid) in zip(data.query_ids, first):
        for method, ranked in zip(rows, (lexical, dense, hybrid)):
            add_metrics(per_query[method], ranked, data.qrels[qid])
    rng = np.random.default_rng(SEED)
    result = {"queries": len(data.query_ids), "queries_available": data.queries_available, "docs": len(data.doc_ids),
              "paired_ndcg@10": {"hybrid - dense": paired_difference(np.array(per_query["hybrid"]["ndcg@10"]),
                                                                     np.array(per_query["dense"]["ndcg@10"]), rng)},
              "timing": {"first_stage_s": first_s, "first_stage_other_cpu_pct": first_others},
              "per_query": {"query_ids": data.query_ids, **per_query}}
    if rerank:
        meter = ServicesMeter(pids)
        second, rerank_s = await run_queries(data, concurrency, "hybrid + rerank", reranked)
        add_reranked(result, data, [hybrid for _, _, hybrid in first], second, threshold, rng)
        rerank_ms = [ms for _, _, ms in second]
        result["timing"].update({"rerank_pass_s": rerank_s, "rerank_other_cpu_pct": meter.read()["others"],
                                 "rerank_ms_p50": float(np.percentile(rerank_ms, 50)),
                                 "rerank_pairs_per_s": len(rerank_ms) * options.rerank.rerank_candidates / rerank_s})
    result["mean"] = {m: {k: float(np.mean(v)) for k, v in ms.items()}
                      for m, ms in result["per_query"].items() if isinstance(ms, dict)}
    return result


def add_metrics(into: dict[str, list[float]], ranked: list[str], qrel: dict[str, int]) -> None:
    into["ndcg@10"].append(ndcg_at(ranked, qrel))
    into["recall@10"].append(recall_at(ranked, qrel, 10))
    into["recall@100"].append(recall_at(ranked, qrel, DEPTH))


def add_reranked(result: dict, data: EvalSet, hybrids: list[list[str]], second: list, threshold: float,
                 rng: np.random.Generator) -> None:
    """The hybrid+rerank and rerank>=threshold rows, their paired difference and the threshold's counts."""
    per_query = result["per_query"]
    per_query.update({m: {k: [] for k in METRICS} for m in ("hybrid+rerank", THRESHOLDED)})
    nothing_relevant = missed = 0  # queries with no candidate at or above the threshold; of those, with a
    best_scores = []  # relevant passage among the reranked candidates all the same
    for qid, hybrid, (top, scores, _) in zip(data.query_ids, hybrids, second):
        qrel = data.qrels[qid]
        scored = set(top)
        reranked_ids = top + [d for d in hybrid if d not in scored]  # below the reranked: hybrid's order
        kept = [d for d, score in zip(top, scores) if score >= threshold]
        best_scores.append(max(scores, default=None))
        if not kept:
            nothing_relevant += 1
            missed += any(qrel.get(d, 0) >= 1 for d in top)
        add_metrics(per_query["hybrid+rerank"], reranked_ids, qrel)
        add_metrics(per_query[THRESHOLDED], kept, qrel)
    per_query["best_rerank_score"] = best_scores
    result["paired_ndcg@10"]["hybrid+rerank - hybrid"] = paired_difference(
        np.array(per_query["hybrid+rerank"]["ndcg@10"]), np.array(per_query["hybrid"]["ndcg@10"]), rng)
    result["threshold"] = {"value": threshold, "queries_with_nothing_at_or_above": nothing_relevant,
                           "of_those_with_a_relevant_candidate": missed}


async def off_topic_scores(name: str, args, collection, retriever: Retriever, options: Methods) -> dict:
    """The best reranker score of queries from the other sets (about other subjects) on this set's collection:
    what the relevance threshold must refuse."""
    others = [other for other in SET_FOLDERS if other != name]
    pools = [load_set(other, args.off_topic).query_texts for other in others]
    texts = [pool[i] for i in range(args.off_topic) for pool in pools if i < len(pool)][:args.off_topic]
    slots = asyncio.Semaphore(args.concurrency)

    async def best(text: str) -> float | None:
        async with slots:
            result = await retriever.search([collection], text, options.rerank)
        return max((h.score for h in result.hits), default=None)

    print(f"    off-topic: {len(texts)} queries of {', '.join(others)}", flush=True)
    return {"from": others, "best_rerank_score": list(await asyncio.gather(*(best(t) for t in texts)))}


def calibration(result: dict, thresholds=(0.3, 0.35, 0.4, 0.45, 0.5, 0.55, 0.6)) -> list[dict]:
    """Per threshold: the share of the set's own queries answered (best reranked candidate at or above it) and
    the share of the other sets' queries refused."""
    on = [score for score in result["per_query"]["best_rerank_score"] if score is not None]
    off = [score for score in result["off_topic"]["best_rerank_score"] if score is not None]
    return [{"threshold": t, "on_topic_kept": float(np.mean([x >= t for x in on])),
             "off_topic_refused": float(np.mean([x < t for x in off]))} for t in thresholds]


# --- verdicts and report ----------------------------------------------------------------------------------------

def verdicts(name: str, result: dict) -> list[dict]:
    mean = result["mean"]
    dense, hybrid = mean["dense"]["ndcg@10"], mean["hybrid"]["ndcg@10"]
    out = []
    if name in PUBLISHED:
        figure, source = PUBLISHED[name]
        out.append({"check": f"dense nDCG@10 within {PUBLISHED_TOLERANCE} of published {figure:.3f} ({source})",
                    "value": dense - figure, "verdict": "PASS" if abs(dense - figure) <= PUBLISHED_TOLERANCE
                    else "MISS"})
    else:
        out.append({"check": "dense against a published figure", "value": None,
                    "verdict": "no published all-MiniLM-L6-v2 figure for this set"})
    out.append({"check": "hybrid nDCG@10 >= dense", "value": hybrid - dense,
                "verdict": "PASS" if hybrid >= dense else "MISS"})
    return out


def print_table(results: dict[str, dict], store: str = "") -> None:
    header = f"{'set':<10} {'queries':>9}  {'method':<18}" + "".join(f"{m:>11}" for m in METRICS)
    print((f"store: {store}\n" if store else "") + header + "\n" + "-" * len(header))
    for name, r in results.items():
        for i, method in enumerate(r["mean"]):
            label = f"{name:<10} {r['queries']:>4}/{r['queries_available']:<4}" if i == 0 else " " * 20
            print(f"{label}  {method:<18}" + "".join(f"{r['mean'][method][m]:>11.3f}" for m in METRICS))
    print("(hybrid+rerank reorders the fused top rerank_candidates; below them it is hybrid's order, so its "
          "recall@100 is hybrid's. rerank>=threshold keeps only the reranked candidates scoring at least the "
          "pipeline's relevance_threshold, as the pipeline does before answering)")
    for name, r in results.items():
        if "threshold" not in r:
            continue
        t = r["threshold"]
        print(f"  {name}: {t['queries_with_nothing_at_or_above']} of {r['queries']} queries have no candidate "
              f"scoring >= {t['value']:g} (the pipeline answers 'nothing relevant'); "
              f"{t['of_those_with_a_relevant_candidate']} of those had a relevant passage among the candidates")


def print_differences_and_verdicts(results: dict[str, dict]) -> None:
    print("\nnDCG@10 differences, paired over queries:")
    for name, r in results.items():
        for pair, d in r["paired_ndcg@10"].items():
            p = "p<0.001" if d["p"] < 0.001 else f"p={d['p']:.3f}"
            print(f"  {name:<10} {pair:<24} {d['mean']:+.3f}  95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                  f"  {p}  better/worse on {d['wins']}/{d['losses']} queries")
    print("\ntargets:")
    for name, r in results.items():
        for v in r["verdicts"]:
            value = "" if v["value"] is None else f" ({v['value']:+.3f})"
            print(f"  {name:<10} {v['check']}{value}: {v['verdict']}")


def print_calibration(results: dict[str, dict]) -> None:
    calibrated = {name: r for name, r in results.items() if "off_topic" in r}
    if not calibrated:
        return
    print(f"\nrelevance threshold (pipeline: {PipelineSettings().relevance_threshold:g}): on-topic queries answered "
          "/ off-topic queries refused (their best reranked candidate below the threshold):")
    for name, r in calibrated.items():
        r["calibration"] = calibration(r)
        off = [x for x in r["off_topic"]["best_rerank_score"] if x is not None]
        print(f"  {name:<10} off-topic from {', '.join(r['off_topic']['from'])}: best score p50 "
              f"{np.percentile(off, 50):.3f}, p95 {np.percentile(off, 95):.3f}, max {max(off):.3f}")
        print("  " + " " * 10 + "".join(f"  {c['threshold']:.2f}: {c['on_topic_kept']:.2f}/{c['off_topic_refused']:.2f}"
                                         for c in r["calibration"]))


def print_costs(results: list[tuple[str, dict]], concurrency: int) -> None:
    """``results``: (set name, its results) per set and store; a set appears once per store."""
    print("\ncosts (this machine):")
    for name, r in results:
        i, t = r["index"], r["timing"]
        rerank = ("" if "rerank_pass_s" not in t else
                  f"; rerank pass {t['rerank_pass_s']:.0f} s ({t['rerank_pairs_per_s']:.1f} pairs/s, p50 "
                  f"{t['rerank_ms_p50']:.0f} ms per query at {concurrency} in flight, others "
                  f"{fmt(t['rerank_other_cpu_pct'], '.0f')}% CPU)")
        print(f"  {name:<10} {r['store']}: indexing: {i['passages_per_s']:.1f} passages/s embedded over HTTP "
              f"(other processes took {fmt(i['embed_other_cpu_pct'], '.0f')}% CPU), written in {i['write_s']:.1f} s; "
              f"dense, lexical and hybrid for all queries {t['first_stage_s']:.1f} s" + rerank)


def store_parity(by_store: dict[str, dict[str, dict]]) -> dict[str, dict]:
    """Per set and method: each later store's mean metrics minus the first store's, the queries whose nDCG@10
    differs, and whether dense and hybrid nDCG@10 agree within PARITY_TOLERANCE."""
    (base_name, base), *others = by_store.items()
    parity: dict[str, dict] = {}
    for store, results in others:
        for name, r in results.items():
            b = base[name]
            methods_ = [m for m in b["mean"] if m in r["mean"]]
            differences = {m: {k: r["mean"][m][k] - b["mean"][m][k] for k in METRICS} for m in methods_}
            differing = {m: int(np.sum(~np.isclose(r["per_query"][m]["ndcg@10"], b["per_query"][m]["ndcg@10"],
                                                   atol=1e-9))) for m in methods_}
            worst = max(abs(differences[m]["ndcg@10"]) for m in PARITY_METHODS)
            parity.setdefault(name, {})[f"{store} - {base_name}"] = {
                "difference": differences, "queries_whose_ndcg@10_differs": differing, "tolerance": PARITY_TOLERANCE,
                "verdict": "PASS" if worst <= PARITY_TOLERANCE else "FAIL"}
    return parity


def print_parity(by_store: dict[str, dict[str, dict]], parity: dict[str, dict]) -> None:
    if not parity:
        return
    stores = list(by_store)
    print(f"\nstores, nDCG@10 / recall@100 per method ({' | '.join(stores)} | difference from {stores[0]}):")
    for name, pairs in parity.items():
        for i, method in enumerate(by_store[stores[0]][name]["mean"]):
            figures = " | ".join(f"{by_store[s][name]['mean'][method]['ndcg@10']:.4f} / "
                                 f"{by_store[s][name]['mean'][method]['recall@100']:.4f}"
                                 for s in stores if method in by_store[s][name]["mean"])
            deltas = "  ".join(f"{pair}: {p['difference'][method]['ndcg@10']:+.4f} / "
                               f"{p['difference'][method]['recall@100']:+.4f} "
                               f"({p['queries_whose_ndcg@10_differs'][method]} queries differ)"
                               for pair, p in pairs.items() if method in p["difference"])
            print(f"  {name if i == 0 else '':<10} {method:<18} {figures}   {deltas}")
        for pair, p in pairs.items():
            print(f"  {name:<10} {pair}: dense and hybrid nDCG@10 within {p['tolerance']:g}: {p['verdict']}")


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.retrieval_quality", description=__doc__.split("\n\n")[0])
    add_set_arguments(p)
    p.add_argument("--rerank-candidates", type=int, default=None,
                   help="fused candidates the reranker scores (default: the pipeline's setting, 40)")
    p.add_argument("--concurrency", type=int, default=4, help="queries in flight")
    p.add_argument("--off-topic", type=int, default=100,
                   help="queries of the other sets asked of each set's collection, to calibrate the relevance "
                        "threshold (0: none)")
    p.add_argument("--embed-profile", help="the embedding service's profile (default: the one it selects)")
    p.add_argument("--rerank-profile", help="the rerank service's profile (default: the one it selects)")
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="exported-model cache of the services")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for each service")
    p.add_argument("--stores", default="faiss",
                   help=f"comma-separated, of {', '.join(BACKENDS)}: each set is evaluated on each, with the same "
                        "vectors; the first is the one differences are taken from")
    p.add_argument("--no-rerank", dest="rerank", action="store_false",
                   help="leave out the rerank pass and the off-topic calibration")
    args = p.parse_args(argv)
    args.sets = parse_sets(p, args.sets)
    args.stores = list(dict.fromkeys(s.strip() for s in args.stores.split(",") if s.strip()))
    unknown = [s for s in args.stores if s not in BACKENDS]
    if unknown or not args.stores:
        p.error(f"unknown stores: {', '.join(unknown) or '(none given)'}; of {', '.join(BACKENDS)}")
    return args


def store_settings(settings: PipelineSettings, backend: str) -> PipelineSettings:
    """The pipeline's settings with ``backend`` as its store, in the same data folder (Milvus Lite: milvus.db)."""
    return settings.model_copy(update={"vector_store": backend,
                                       "milvus_uri": str(settings.data_path / "milvus.db")})


async def evaluate_store(args, data: EvalSet, store, vectors: np.ndarray, index: dict, retriever: Retriever,
                         options: Methods, pids: list[int], threshold: float) -> dict:
    """One set on one store: a fresh collection with the set's vectors, every method, then the collection gone."""
    print(f"  store {store.backend}:", flush=True)
    collection = await store.create(data.name, int(vectors.shape[1]))
    write_s = await write_set(data, collection, vectors)
    print(f"    wrote {len(data.doc_ids)} documents in {write_s:.1f} s", flush=True)
    result = await evaluate_set(data, collection, retriever, options, args.concurrency, pids, threshold,
                                rerank=args.rerank)
    result["store"] = store.backend
    result["index"] = {**index, "write_s": write_s}
    result["verdicts"] = verdicts(data.name, result)
    if args.rerank and args.off_topic:
        result["off_topic"] = await off_topic_scores(data.name, args, collection, retriever, options)
    await store.delete(data.name)
    return result


async def evaluate_all(args, settings: PipelineSettings, pids: list[int]) -> dict[str, dict[str, dict]]:
    """Per store, per set: its results. Each set is embedded once, and every store gets those vectors."""
    clients = ServiceClients(settings)
    queries = FixedQueryVectors(clients)
    retriever, ingestor = Retriever(queries), Ingestor(clients, settings)  # type: ignore[arg-type]
    options = methods(settings, args.rerank_candidates or settings.rerank_candidates)
    by_store: dict[str, dict[str, dict]] = {backend: {} for backend in args.stores}
    try:
        async with contextlib.AsyncExitStack() as stack:
            stores = [await stack.enter_async_context(open_vector_store(store_settings(settings, backend)))
                      for backend in args.stores]
            for name in args.sets:
                data = load_set(name, args.max_queries)
                print(f"{name}: {len(data.doc_ids)} passages, {len(data.query_ids)} of {data.queries_available} "
                      "queries" + (f" (sampled, seed {SEED})" if len(data.query_ids) < data.queries_available
                                   else ""), flush=True)
                vectors, index = await embed_set(data, ingestor, pids)
                await queries.fix(data.query_texts)
                for store in stores:
                    by_store[store.backend][name] = await evaluate_store(args, data, store, vectors, index, retriever,
                                                                         options, pids, settings.relevance_threshold)
    finally:
        await clients.close()
    return by_store


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.cache = args.cache.expanduser()
    started, stamp = time.perf_counter(), time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    print(f"retrieval quality of the pipeline: {', '.join(args.sets)}; {machine_line(hw)}", flush=True)
    with contextlib.ExitStack() as stack, tempfile.TemporaryDirectory(prefix="nimrag-rq-") as tmp:
        profiles = {"embed": args.embed_profile, "rerank": args.rerank_profile}
        services = {name: stack.enter_context(Service(name, name, ["--profile", profile] if profile else [],
                                                      args.cache,
                                                      RESULTS / f"retrieval-quality-{stamp}-{name}.server.log"))
                    for name, profile in profiles.items()}
        for name, service in services.items():
            ready_s = service.wait_ready(args.ready_timeout)
            profiles[name] = selected_profile(service.port)
            print(f"  {name} service ready after {ready_s:.1f} s on port {service.port}, profile {profiles[name]}",
                  flush=True)
        settings = PipelineSettings(embed_url=f"http://127.0.0.1:{services['embed'].port}/v1",
                                    rerank_url=f"http://127.0.0.1:{services['rerank'].port}/v1",
                                    llm_url="http://127.0.0.1:9/v1", data_path=Path(tmp))
        pids = [service.process.pid for service in services.values()]
        by_store = asyncio.run(evaluate_all(args, settings, pids))
    for store, results in by_store.items():
        print()
        print_table(results, store if len(by_store) > 1 else "")
    for results in by_store.values():
        print_differences_and_verdicts(results)
        print_calibration(results)
    print_costs([(name, r) for results in by_store.values() for name, r in results.items()], args.concurrency)
    parity = store_parity(by_store)
    print_parity(by_store, parity)
    results = by_store[args.stores[0]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"retrieval-quality-{stamp}.json"
    meta = {"timestamp": stamp, "sets": args.sets, "max_queries": args.max_queries, "depth": DEPTH,
            "relevance_threshold": PipelineSettings().relevance_threshold,
            "rerank_candidates": args.rerank_candidates or PipelineSettings().rerank_candidates,
            "concurrency": args.concurrency, "profiles": profiles, "seed": SEED, "published": PUBLISHED,
            "stores": args.stores, "rerank": args.rerank, "hardware": hw.as_dict(), "machine": machine_line(hw),
            "wall_s": time.perf_counter() - started}
    out.write_text(json.dumps({"meta": meta, "sets": results, "stores": by_store, "store_parity": parity}, indent=1))
    print(f"\nresults: {out.relative_to(REPO)}  (wall {meta['wall_s']:.0f} s)")
    failed = [f"{name} {pair}" for name, pairs in parity.items() for pair, p in pairs.items() if p["verdict"] != "PASS"]
    if failed:
        print(f"FAIL: dense or hybrid nDCG@10 differ by more than {PARITY_TOLERANCE:g} between stores: "
              + ", ".join(failed))
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
