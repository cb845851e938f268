"""Reranking quality: bi-encoder cosine against late interaction (MaxSim) on all-MiniLM-L6-v2, BEIR-style.

    python -m bench.rerank_quality                              # scifact, cranfield, squad (1,000 sampled queries)
    python -m bench.rerank_quality --sets scifact --max-queries 100

First stage: Okapi BM25 (k1=0.9, b=0.4, as BEIR/Anserini; lowercase alphanumeric tokens, Lucene's English stop
words, no stemming) over title + " " + text, top 100 per query. Those 100 are reranked by:

- ``bi-encoder``: cosine of the mean-pooled, normalized query and passage embeddings (sentence-transformers);
- ``LI-all`` / ``LI-content``: late interaction (ColBERT MaxSim) over the model's last-layer token embeddings,
  each L2-normalized: for every query token the highest cosine against the passage's tokens, averaged over the
  query tokens. ``LI-all`` keeps [CLS] and [SEP] on both sides, ``LI-content`` drops them on both sides. Padding
  never takes part. Summing instead of averaging divides every candidate of a query by the same count, so it
  ranks identically and is not a separate variant;
- ``RRF(BM25,bi)``: reciprocal-rank fusion (k=60) of the BM25 and bi-encoder ranks, for context.

For reference, ``dense`` is exact cosine search with the bi-encoder over the whole corpus (reranking a dense top
100 with the same bi-encoder would change nothing). Passages are cut to the model's 256 tokens. Embeddings come
from the service's tokenizer (``TextTokenizer``, truncate END) and the sentence-transformers modules in fp32 on CPU,
one forward pass giving both the pooled embedding and the token embeddings; they live in memory for the run
only. Metrics as pytrec_eval computes them for BEIR: nDCG@10 with gain = graded relevance, recall@k counting
relevance >= 1. Per set, the paired nDCG@10 difference of each late-interaction variant against the bi-encoder
(and of the two variants) gets a bootstrap 95% interval and a sign-flip randomization p-value over queries.
Results go to ``bench/results/rerank-quality-<timestamp>.json``.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from nimrag.pipeline.vectorstore.faiss.schema import (
    STOPWORDS,  # Lucene's English stop set (Anserini's default analyzer drops these too)
)

REPO = Path(__file__).resolve().parent.parent
EVAL = REPO.parent / "shared" / "eval"
RESULTS = REPO / "bench" / "results"
SET_FOLDERS = {"scifact": "scifact", "cranfield": "cranfield", "squad": "squad-v1.1-dev"}
BM25_K1, BM25_B = 0.9, 0.4
DEPTH = 100  # first-stage candidates per query
RRF_K = 60
ENCODE_BATCH = 32  # texts per forward pass, sorted by length so padding stays small
SEED = 0
RERANKERS = ["bi-encoder", "LI-all", "LI-content", "RRF(BM25,bi)"]
LATE_INTERACTION = {"LI-all": False, "LI-content": True}  # variant -> drop [CLS]/[SEP]
COMPARED = [("LI-all", "bi-encoder"), ("LI-content", "bi-encoder"), ("LI-content", "LI-all")]  # paired nDCG@10


# --- data -----------------------------------------------------------------------------------------------------

@dataclass
class EvalSet:
    name: str
    doc_ids: list[str]
    doc_texts: list[str]
    query_ids: list[str]
    query_texts: list[str]
    qrels: dict[str, dict[str, int]]  # query id -> {doc id: graded relevance}
    queries_available: int


def read_jsonl(folder: Path, stem: str) -> list[dict]:
    plain = folder / f"{stem}.jsonl"
    opener = (lambda: plain.open(encoding="utf-8")) if plain.is_file() else \
        (lambda: gzip.open(folder / f"{stem}.jsonl.gz", "rt", encoding="utf-8"))
    with opener() as f:
        return [json.loads(line) for line in f if line.strip()]


def read_qrels(path: Path) -> dict[str, dict[str, int]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in path.read_text(encoding="utf-8").splitlines()[1:]:  # header line
        qid, did, score = line.split("\t")
        qrels.setdefault(qid, {})[did] = int(score)
    return qrels


def load_set(name: str, max_queries: int) -> EvalSet:
    folder = EVAL / SET_FOLDERS[name]
    docs = read_jsonl(folder, "corpus")
    qrels = read_qrels(folder / "qrels.tsv")
    queries = [q for q in read_jsonl(folder, "queries") if q["_id"] in qrels]  # BEIR scores judged queries only
    available = len(queries)
    if available > max_queries:  # deterministic sample, kept in file order
        keep = np.sort(np.random.default_rng(SEED).choice(available, max_queries, replace=False))
        queries = [queries[i] for i in keep]
    return EvalSet(name, [d["_id"] for d in docs], [f"{d.get('title', '')} {d['text']}".strip() for d in docs],
                   [q["_id"] for q in queries], [q["text"] for q in queries], qrels, available)


# --- BM25 -----------------------------------------------------------------------------------------------------

def bm25_terms(text: str) -> list[str]:
    return [t for t in re.findall(r"[a-z0-9]+", text.lower()) if t not in STOPWORDS]


class BM25:
    """Okapi BM25 as a sparse doc x term matrix of per-term scores, so a query is one sparse product."""

    def __init__(self, texts: list[str]):
        counts = [Counter(bm25_terms(t)) for t in texts]
        self.vocab = {term: i for i, term in enumerate(sorted({t for c in counts for t in c}))}
        rows = np.repeat(np.arange(len(counts)), [len(c) for c in counts])
        cols = np.fromiter((self.vocab[t] for c in counts for t in c), dtype=np.int64, count=len(rows))
        tf = np.fromiter((n for c in counts for n in c.values()), dtype=np.float64, count=len(rows))
        doc_len = np.array([sum(c.values()) for c in counts], dtype=np.float64)
        df = np.bincount(cols, minlength=len(self.vocab))
        idf = np.log(1 + (len(texts) - df + 0.5) / (df + 0.5))  # Lucene's idf, never negative
        norm = BM25_K1 * (1 - BM25_B + BM25_B * doc_len / doc_len.mean())
        weights = idf[cols] * tf * (BM25_K1 + 1) / (tf + norm[rows])
        self.matrix = sp.csr_matrix((weights, (rows, cols)), shape=(len(texts), len(self.vocab)))

    def search(self, text: str, depth: int) -> np.ndarray:
        """Indices of the top ``depth`` documents that share a term with the query, best first."""
        terms = Counter(t for t in bm25_terms(text) if t in self.vocab)  # a repeated term counts again, as in Lucene
        if not terms:
            return np.empty(0, dtype=np.int64)
        query = np.zeros(len(self.vocab))
        query[[self.vocab[t] for t in terms]] = list(terms.values())
        scores = self.matrix @ query
        return top_k(scores, depth, min_score=1e-12)


def top_k(scores: np.ndarray, k: int, min_score: float = -np.inf) -> np.ndarray:
    """Indices of the k highest scores above min_score, best first (ties by index, for determinism)."""
    candidates = np.flatnonzero(scores > min_score)
    if len(candidates) > k:
        candidates = candidates[np.argpartition(-scores[candidates], k - 1)[:k]]
    return candidates[np.lexsort((candidates, -scores[candidates]))]


# --- encoder --------------------------------------------------------------------------------------------------

@dataclass
class Encoded:
    vectors: np.ndarray  # (n, dim) float32, mean-pooled and normalized: the bi-encoder embedding
    # per text (its tokens incl. [CLS]/[SEP], dim), each row L2-normalized; float32 (scifact: ~1.9 GB) because
    # numpy's float16 -> float32 conversion would cost more than the MaxSim itself
    tokens: list[np.ndarray]
    seconds: float
    cpu_seconds: float  # this process, all threads: well under threads x seconds means others took the CPU
    token_count: int


class Encoder:
    """all-MiniLM-L6-v2 as the embedding service loads and tokenizes it, run in fp32 with sentence-transformers."""

    def __init__(self, threads: int):
        import torch
        from sentence_transformers import SentenceTransformer

        from nimrag.services.embed.model import load_model_info
        from nimrag.services.embed.settings import EmbedSettings
        from nimrag.services.embed.tokenization import TextTokenizer

        torch.set_num_threads(threads)
        self._torch = torch
        self.model = load_model_info(EmbedSettings())
        self.tokenizer = TextTokenizer(self.model.path, self.model.max_tokens)
        self.st = SentenceTransformer(str(self.model.path), device="cpu", local_files_only=True).eval()

    def encode(self, texts: list[str]) -> Encoded:
        start, cpu_start = time.perf_counter(), time.process_time()
        ids = self.tokenizer.encode(texts, truncate="END")
        vectors = np.zeros((len(texts), self.model.dimension), dtype=np.float32)
        tokens: list[np.ndarray] = [np.empty(0)] * len(texts)
        order = np.argsort([len(x) for x in ids], kind="stable")
        for begin in range(0, len(order), ENCODE_BATCH):
            rows = order[begin:begin + ENCODE_BATCH]
            pooled, hidden = self._forward([ids[i] for i in rows])
            vectors[rows] = pooled
            for row, states in zip(rows, hidden):
                states = states[: len(ids[row])]
                tokens[row] = states / np.linalg.norm(states, axis=1, keepdims=True)
        return Encoded(vectors, tokens, time.perf_counter() - start, time.process_time() - cpu_start,
                       sum(map(len, ids)))

    def _forward(self, ids: list[list[int]]) -> tuple[np.ndarray, np.ndarray]:
        torch = self._torch
        width = max(map(len, ids))
        input_ids = torch.full((len(ids), width), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(ids), width), dtype=torch.long)
        for row, seq in enumerate(ids):
            input_ids[row, : len(seq)] = torch.tensor(seq)
            mask[row, : len(seq)] = 1
        features = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self.tokenizer.input_names:
            features["token_type_ids"] = torch.zeros_like(input_ids)
        with torch.inference_mode():
            out = self.st(features)
        return out["sentence_embedding"].numpy(), out["token_embeddings"].float().numpy()

    def check_against_sentence_transformers(self, texts: list[str]) -> float:
        """Least cosine between our pooled vectors and ``SentenceTransformer.encode`` (catches padding mistakes)."""
        ours = self.encode(texts).vectors
        reference = self.st.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
        return float(np.min(np.sum(ours * reference, axis=1)))


# --- scorers --------------------------------------------------------------------------------------------------

def without_specials(tokens: np.ndarray) -> np.ndarray:
    return tokens[1:-1]  # the tokenizer puts exactly one [CLS] first and one [SEP] last


def maxsim(query_tokens: np.ndarray, passages: list[np.ndarray]) -> np.ndarray:
    """Late interaction: mean over query tokens of the best cosine against each passage's tokens."""
    lengths = np.array([len(p) for p in passages])
    scores = np.full(len(passages), -np.inf)  # a passage with no tokens left ranks last
    present = np.flatnonzero(lengths)
    if len(present):
        stacked = np.concatenate([passages[i] for i in present])
        similarity = query_tokens @ stacked.T  # (query tokens, all candidate tokens)
        starts = np.concatenate(([0], np.cumsum(lengths[present])[:-1]))
        scores[present] = np.maximum.reduceat(similarity, starts, axis=1).mean(axis=0)
    return scores


def reciprocal_rank_fusion(*rankings: np.ndarray) -> np.ndarray:
    """Fused order of the same candidates ranked several ways; each ranking lists candidate positions."""
    fused = np.zeros(len(rankings[0]))
    for ranking in rankings:
        fused[ranking] += 1.0 / (RRF_K + 1 + np.arange(len(ranking)))
    return np.lexsort((np.arange(len(fused)), -fused))


def order_by(scores: np.ndarray) -> np.ndarray:
    """Candidate positions best first; ties keep the first-stage order."""
    return np.lexsort((np.arange(len(scores)), -scores))


# --- metrics --------------------------------------------------------------------------------------------------

def ndcg_at(ranked: list[str], qrel: dict[str, int], k: int = 10) -> float:
    dcg = sum(qrel.get(d, 0) / math.log2(i + 2) for i, d in enumerate(ranked[:k]))
    ideal = sorted((g for g in qrel.values() if g > 0), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg if idcg > 0 else 0.0


def recall_at(ranked: list[str], qrel: dict[str, int], k: int) -> float:
    relevant = {d for d, g in qrel.items() if g >= 1}
    return len(relevant.intersection(ranked[:k])) / len(relevant) if relevant else 0.0


def paired_difference(a: np.ndarray, b: np.ndarray, rng: np.random.Generator, draws: int = 10000) -> dict:
    """Mean of a - b over queries, its bootstrap 95% interval and a two-sided sign-flip randomization p-value."""
    diff = a - b
    boot = diff[rng.integers(0, len(diff), (draws, len(diff)))].mean(axis=1)
    flips = (rng.integers(0, 2, (draws, len(diff))) * 2 - 1) * diff
    p = (np.sum(np.abs(flips.mean(axis=1)) >= abs(diff.mean()) - 1e-12) + 1) / (draws + 1)
    return {"mean": float(diff.mean()), "ci95": [float(np.percentile(boot, 2.5)), float(np.percentile(boot, 97.5))],
            "p": float(p), "wins": int(np.sum(diff > 0)), "losses": int(np.sum(diff < 0))}


# --- one set --------------------------------------------------------------------------------------------------

def rerank_orders(query: Encoded, q: int, candidates: np.ndarray, docs: Encoded, timings: Counter) -> dict:
    """Each reranker's order of the BM25 candidates (positions into ``candidates``)."""
    start = time.perf_counter()
    bi = order_by(docs.vectors[candidates] @ query.vectors[q])
    timings["bi-encoder"] += time.perf_counter() - start
    orders = {"bi-encoder": bi}
    for name, drop in LATE_INTERACTION.items():
        start = time.perf_counter()
        q_tokens = without_specials(query.tokens[q]) if drop else query.tokens[q]
        passages = [without_specials(docs.tokens[i]) if drop else docs.tokens[i] for i in candidates]
        orders[name] = order_by(maxsim(q_tokens, passages))
        timings[name] += time.perf_counter() - start
    orders["RRF(BM25,bi)"] = reciprocal_rank_fusion(np.arange(len(candidates)), bi)
    return orders


def evaluate_set(data: EvalSet, encoder: Encoder) -> dict:
    t0 = time.perf_counter()
    index = BM25(data.doc_texts)
    bm25_seconds = time.perf_counter() - t0
    print(f"  BM25 index {bm25_seconds:.1f} s; encoding {len(data.doc_texts)} passages ...", flush=True)
    docs = encoder.encode(data.doc_texts)
    queries = encoder.encode(data.query_texts)
    print(f"  encoded in {docs.seconds:.0f} s ({docs.token_count / docs.seconds:.0f} tokens/s, "
          f"{docs.token_count / len(data.doc_texts):.0f} tokens per passage, "
          f"{docs.cpu_seconds / docs.seconds:.1f} cores busy)", flush=True)
    dense_scores = queries.vectors @ docs.vectors.T
    per_query: dict[str, dict[str, list[float]]] = {}
    timings: Counter = Counter()

    def record(system: str, ranked: list[str], qrel: dict[str, int], recall_100: bool = False) -> None:
        metrics = per_query.setdefault(system, {})
        metrics.setdefault("ndcg@10", []).append(ndcg_at(ranked, qrel))
        metrics.setdefault("recall@10", []).append(recall_at(ranked, qrel, 10))
        if recall_100:
            metrics.setdefault("recall@100", []).append(recall_at(ranked, qrel, 100))

    candidate_counts = []
    for q, (qid, text) in enumerate(zip(data.query_ids, data.query_texts)):
        qrel = data.qrels[qid]
        candidates = index.search(text, DEPTH)
        candidate_counts.append(len(candidates))
        record("BM25", [data.doc_ids[i] for i in candidates], qrel, recall_100=True)
        record("dense", [data.doc_ids[i] for i in top_k(dense_scores[q], DEPTH)], qrel, recall_100=True)
        for name, order in rerank_orders(queries, q, candidates, docs, timings).items():
            record(name, [data.doc_ids[i] for i in candidates[order]], qrel)

    rng = np.random.default_rng(SEED)
    ndcg = {system: np.array(metrics["ndcg@10"]) for system, metrics in per_query.items()}
    return {
        "queries": len(data.query_ids), "queries_available": data.queries_available, "docs": len(data.doc_ids),
        "mean": {s: {m: float(np.mean(v)) for m, v in ms.items()} for s, ms in per_query.items()},
        "paired_ndcg@10": {f"{a} - {b}": paired_difference(ndcg[a], ndcg[b], rng) for a, b in COMPARED},
        "timing": {"bm25_index_s": bm25_seconds, "encode_passages_s": docs.seconds,
                   "encode_passages_cpu_s": docs.cpu_seconds, "passage_tokens": docs.token_count,
                   "encode_queries_s": queries.seconds,
                   "query_tokens": queries.token_count, "mean_candidates": float(np.mean(candidate_counts)),
                   "score_ms_per_query": {k: 1000 * v / len(data.query_ids) for k, v in timings.items()}},
        "per_query": {"query_ids": data.query_ids, **per_query},
    }


# --- report ---------------------------------------------------------------------------------------------------

def print_table(results: dict[str, dict]) -> None:
    systems = ["BM25", "dense", *RERANKERS]
    header = f"{'set':<10} {'queries':>9} {'metric':<10}" + "".join(f"{s:>13}" for s in systems)
    print(header + "\n" + "-" * len(header))
    for name, r in results.items():
        for i, metric in enumerate(["ndcg@10", "recall@10", "recall@100"]):
            label = f"{name:<10} {r['queries']:>4}/{r['queries_available']:<4}" if i == 0 else " " * 20
            cells = "".join(f"{r['mean'][s][metric]:>13.3f}" if metric in r["mean"][s] else f"{'':>13}"
                            for s in systems)
            print(f"{label} {metric:<10}{cells}")
    if len(results) > 1:
        cells = "".join(f"{np.mean([r['mean'][s]['ndcg@10'] for r in results.values()]):>13.3f}" for s in systems)
        print(f"{'mean of sets':<20} {'ndcg@10':<10}{cells}")
    print("(reranker columns reorder the BM25 top 100, so their recall@100 is BM25's)")


def print_differences(results: dict[str, dict]) -> None:
    print("\nnDCG@10 differences, paired over queries:")
    for name, r in results.items():
        for pair, d in r["paired_ndcg@10"].items():
            p = "p<0.001" if d["p"] < 0.001 else f"p={d['p']:.3f}"  # 10,000 draws resolve no lower
            print(f"  {name:<10} {pair:<24} {d['mean']:+.3f}  95% CI [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"
                  f"  {p}  better/worse on {d['wins']}/{d['losses']} queries")


def print_costs(results: dict[str, dict]) -> None:
    print("\ncost per query of 100 candidates (this CPU, numpy fp32 scoring after encoding):")
    for name, r in results.items():
        t = r["timing"]
        encode_ms = 1000 * t["encode_passages_s"] / r["docs"] * t["mean_candidates"]
        scores = ", ".join(f"{k} {v:.2f} ms" for k, v in t["score_ms_per_query"].items())
        print(f"  {name:<10} encoding the candidates ~{encode_ms:.0f} ms "
              f"({t['passage_tokens'] / t['encode_passages_s']:.0f} tokens/s); scoring: {scores}")


# --- main -----------------------------------------------------------------------------------------------------

def add_set_arguments(p: argparse.ArgumentParser) -> None:
    """``--sets`` and ``--max-queries``, as every benchmark on the eval sets takes them."""
    p.add_argument("--sets", default="scifact,cranfield,squad", help=f"comma-separated, of {', '.join(SET_FOLDERS)}")
    p.add_argument("--max-queries", type=int, default=1000,
                   help="per set; larger sets are sampled (seed 0). Only squad has more by default (10,570)")


def parse_sets(p: argparse.ArgumentParser, text: str) -> list[str]:
    sets = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in sets if s not in SET_FOLDERS]
    if unknown:
        p.error(f"unknown sets: {', '.join(unknown)}")
    return sets


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.rerank_quality", description=__doc__.split("\n\n")[0])
    add_set_arguments(p)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1, help="torch CPU threads")
    args = p.parse_args(argv)
    args.sets = parse_sets(p, args.sets)
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    started, stamp = time.perf_counter(), time.strftime("%Y%m%d-%H%M%S")
    encoder = Encoder(args.threads)
    agreement = encoder.check_against_sentence_transformers(["a short query", "A longer passage " * 40])
    print(f"rerank quality: {encoder.model.name}, fp32 torch, {args.threads} threads; "
          f"pooled vs SentenceTransformer.encode min cosine {agreement:.6f}", flush=True)
    results = {}
    for name in args.sets:
        data = load_set(name, args.max_queries)
        print(f"{name}: {len(data.doc_ids)} passages, {len(data.query_ids)} of {data.queries_available} queries"
              + (f" (sampled, seed {SEED})" if len(data.query_ids) < data.queries_available else ""), flush=True)
        results[name] = evaluate_set(data, encoder)
    print()
    print_table(results)
    print_differences(results)
    print_costs(results)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"rerank-quality-{stamp}.json"
    meta = {"timestamp": stamp, "model": encoder.model.name, "precision": "fp32 torch", "threads": args.threads,
            "bm25": {"k1": BM25_K1, "b": BM25_B, "stopwords": "lucene-english"}, "depth": DEPTH, "rrf_k": RRF_K,
            "seed": SEED, "max_queries": args.max_queries, "check_min_cosine": agreement,
            "wall_s": time.perf_counter() - started}
    out.write_text(json.dumps({"meta": meta, "sets": results}, indent=1))
    print(f"\nresults: {out.relative_to(REPO)}  (wall {meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
