"""Reranking throughput: the service over HTTP against its own scorer in-process, all measured in one run.

    python -m bench.rerank                        # default scorer and a cross-encoder, 1, 8 and 32 clients
    python -m bench.rerank --quick                # smoke run: 4 requests of 5 passages, short levels
    python -m bench.rerank --no-cross-encoder     # the default service only
    python -m bench.rerank --profiles onnx-cpu-int8
    NIMRAG_RERANK_SCORER=bi-encoder python -m bench.rerank   # the service's settings apply in-process too

Each request ranks 20 SciFact abstracts (title + text) against one SciFact claim: the claim's relevant abstracts
and random ones (fixed seed); generated text when the data is missing. In-process: the scorer the service runs,
on the same requests one after another (prepare, then the batches the service plans for one request's items).
Over HTTP each client POSTs ``/v1/ranking`` back to back on a keep-alive connection. Rates count pairs (passages
scored) per second. The cross-encoder is assembled from the bundled encoder with an untrained head: real
architecture and cost, meaningless scores. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import gc
import random
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import orjson

from bench.common import (
    RESULTS,
    SCIFACT,
    HttpLoad,
    InProcessResult,
    LoadResult,
    Ratio,
    Service,
    Workload,
    args_as_json,
    bench_http,
    benchmark_parser,
    generated_texts,
    levels_by_label,
    machine_line,
    post_request,
    print_ratios,
    print_table,
    read_jsonl,
    run_main,
    scaling_ratio,
    served_profiles,
    write_results,
)
from nimrag.services.common.batching import plan_batches
from nimrag.services.common.hardware import HardwareInfo, probe
from nimrag.services.common.profiles import Profile
from nimrag.services.embed.model import default_model_path
from nimrag.services.rerank.model import RerankModelInfo, load_model_info
from nimrag.services.rerank.profiles import RERANK_PROFILES
from nimrag.services.rerank.scorers import Prepared, Scorer, create_scorer
from nimrag.services.rerank.settings import RerankSettings

TARGETS = {"http_vs_inprocess": 0.9}
JSON_KEYS = {"items_per_s": "pairs_per_s"}
BATCH_NOTE = ("items per engine batch (encoder scorers: the query and each passage, cross-encoder: a pair); "
              "in-process: as planned for one request, http: mean over the window")


# --- requests -------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RankRequest:
    query: str
    passages: list[str]


def relevant_docs() -> dict[str, list[str]]:
    """SciFact's judged-relevant abstracts per claim (test and train qrels)."""
    relevant = defaultdict(list)
    for path in (SCIFACT / "qrels.tsv", SCIFACT / "qrels_train.tsv"):
        rows = path.read_text(encoding="utf-8").splitlines()[1:] if path.is_file() else []
        for query, doc, score in (row.split("\t") for row in rows if row.strip()):
            if int(score) > 0:
                relevant[query].append(doc)
    return relevant


def scifact_requests(n: int, passages: int) -> list[RankRequest]:
    """The first ``n`` claims, each with its relevant abstracts topped up with random ones, shuffled."""
    docs = {d["_id"]: f"{d.get('title', '')} {d['text']}".strip() for d in read_jsonl(SCIFACT / "corpus.jsonl.gz")}
    claims = read_jsonl(SCIFACT / "queries.jsonl") + read_jsonl(SCIFACT / "queries_train.jsonl")
    if len(docs) < passages or not claims:
        return []
    relevant, rng, ids = relevant_docs(), random.Random(0), list(docs)
    requests = []
    for claim in (claims[i % len(claims)] for i in range(n)):
        chosen = [d for d in relevant.get(claim["_id"], []) if d in docs][:passages]
        chosen += rng.sample([d for d in ids if d not in chosen], passages - len(chosen))
        rng.shuffle(chosen)
        requests.append(RankRequest(claim["text"], [docs[d] for d in chosen]))
    return requests


def load_requests(n: int, passages: int) -> tuple[list[RankRequest], str]:
    requests = scifact_requests(n, passages)
    if requests:
        return requests, "SciFact claims and abstracts"
    # About as long as SciFact abstracts (~200 words), so the cost per pair is comparable.
    queries = generated_texts(n, seed=1)
    texts = generated_texts(n * passages, min_words=120, max_words=260, seed=2)
    return [RankRequest(q, texts[i * passages:(i + 1) * passages]) for i, q in enumerate(queries)], "generated text"


# --- in-process -----------------------------------------------------------------------------------------------

def service_batches(prepared: Prepared, profile: Profile) -> list[list[int]]:
    """One request's items cut into engine batches as the service's batcher cuts them."""
    return plan_batches(prepared.costs, profile.max_batch_items, profile.max_batch_tokens, profile.max_padding_ratio)


def rank(scorer: Scorer, profile: Profile, request: RankRequest) -> None:
    """Score one request as the service does: prepare, the batches it plans for these items, scores in order."""
    prepared = scorer.prepare(request.query, request.passages, "END")
    results = [None] * len(prepared.items)
    for batch in service_batches(prepared, profile):
        for i, result in zip(batch, scorer.run_batch([prepared.items[i] for i in batch])):
            results[i] = result
    scorer.scores(results)


def planned_batch_size(prepared: list[Prepared], profile: Profile) -> int:
    """Items per engine batch, as the service cuts one request's items at a time."""
    batches = sum(len(service_batches(p, profile)) for p in prepared)
    return round(sum(len(p.items) for p in prepared) / batches)


def bench_inprocess(scorer: Scorer, profile: Profile, work: Workload, batch_size: int) -> InProcessResult:
    def rank_all(requests: list[RankRequest]) -> None:
        for request in requests:
            rank(scorer, profile, request)

    return work.measure(label(scorer.model, profile), profile.id, profile.device, batch_size, rank_all)


def label(model: RerankModelInfo, profile: Profile) -> str:
    return f"{model.scorer} {profile.id}"


# --- over HTTP ------------------------------------------------------------------------------------------------
# A reply is good when it ranks every passage; its tokens are the request's, counted in-process by the same scorer.

def ranking_load(requests: list[RankRequest], model_name: str, tokens: list[int], port: int) -> HttpLoad:
    bodies = [orjson.dumps({"model": model_name, "query": {"text": r.query},
                            "passages": [{"text": p} for p in r.passages], "truncate": "END"}) for r in requests]
    passages = [len(r.passages) for r in requests]

    def reply_tokens(i: int, body: bytes) -> int | None:
        return tokens[i] if body.count(b'"index"') == passages[i] else None

    return HttpLoad([post_request(port, "/v1/ranking", body) for body in bodies], passages[0], reply_tokens)


def service_for(model: RerankModelInfo, profile: Profile, args, log_path: Path) -> Service:
    # No --model for the bundled default: served by that name, with its own length limit.
    options = ["--profile", profile.id] + ([] if model.path == default_model_path() else ["--model", str(model.path)])
    return Service("rerank", label(model, profile), options, args.cache, log_path)


# --- one scorer, one profile ----------------------------------------------------------------------------------

def bench_profile(model: RerankModelInfo, profile: Profile, requests: list[RankRequest], hw: HardwareInfo, args,
                  log_path: Path) -> tuple[InProcessResult, list[LoadResult]]:
    """The scorer in-process, then the service on the same requests."""
    print(f"  {label(model, profile)} in-process ...", flush=True)
    scorer = create_scorer(model, profile, profile.resolved_threads(hw), args.cache)
    scorer.warm_up()
    prepared = [scorer.prepare(r.query, r.passages, "END") for r in requests]
    tokens = [p.tokens for p in prepared]
    work = Workload(requests, sum(len(r.passages) for r in requests), sum(tokens), args.inprocess_seconds, 1,
                    args.retries)
    inprocess = bench_inprocess(scorer, profile, work, planned_batch_size(prepared, profile))
    print(f"    {inprocess.items_per_s:8.1f} pairs/s", flush=True)
    del scorer  # its memory and threads, before the service starts
    gc.collect()
    http = bench_http(service_for(model, profile, args, log_path),
                      lambda port: ranking_load(requests, model.name, tokens, port), args, "pairs", drain=True)
    return inprocess, http


def cross_encoder_model(args) -> Path:
    """--cross-encoder-model, or the bundled encoder with an untrained one-logit head, assembled once."""
    if args.cross_encoder_model:
        return args.cross_encoder_model.expanduser()
    target = args.cache / "bench" / "minilm-cross-encoder"
    if not (target / "config.json").is_file():
        from tests.services.rerank.conftest import build_cross_encoder

        print(f"  assembling a cross-encoder in {target} ...", flush=True)
        build_cross_encoder(target)
    return target


# --- report ---------------------------------------------------------------------------------------------------

def compute_ratios(inprocess: list[InProcessResult], http: list[LoadResult]) -> list[Ratio]:
    ratios: list[Ratio] = []
    for name, levels in levels_by_label(http).items():
        high = levels[-1]
        alone = next((r for r in inprocess if r.name == name), None)
        if alone and alone.items_per_s:
            ratios.append(Ratio(f"{name}: HTTP@{high.clients} / in-process", high.items_per_s / alone.items_per_s,
                                TARGETS["http_vs_inprocess"]))
        ratios += scaling_ratio(name, levels, None)
    return ratios


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser("python -m bench.rerank", __doc__, seconds=20.0, warmup=3.0, inprocess_seconds=10.0)
    p.add_argument("--requests", type=int, help="how many distinct requests (default 16; 4 with --quick)")
    p.add_argument("--passages", type=int, help="passages per request (default 20; 5 with --quick)")
    p.add_argument("--cross-encoder", action=argparse.BooleanOptionalAction, default=True,
                   help="also serve a cross-encoder (the default model is always served)")
    p.add_argument("--cross-encoder-model", type=Path,
                   help="the cross-encoder folder (default: assembled from the bundled encoder, untrained head)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.inprocess_seconds = 3.0, 0.5, 0.0
    args.requests = args.requests or (4 if args.quick else 16)
    args.passages = args.passages or (5 if args.quick else 20)
    args.cache = args.cache.expanduser()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    served = served_profiles(args, RERANK_PROFILES, hw, RerankSettings().profile)
    requests, source = load_requests(args.requests, args.passages)
    print(f"reranking benchmark: {len(requests)} requests of 1 query and {args.passages} passages ({source}); "
          f"{machine_line(hw)}", flush=True)
    models = [load_model_info(RerankSettings())]
    if args.cross_encoder:
        models.append(load_model_info(RerankSettings(model=str(cross_encoder_model(args)))))

    rows: list[InProcessResult | LoadResult] = []
    for model in models:
        for profile in served:
            log_path = RESULTS / f"rerank-{stamp}-{model.scorer}-{profile.id}.server.log"
            inprocess, http = bench_profile(model, profile, requests, hw, args, log_path)
            rows += [inprocess, *http]

    inprocess = [r for r in rows if isinstance(r, InProcessResult)]
    http = [r for r in rows if isinstance(r, LoadResult)]
    print()
    print_table(rows, "pairs", BATCH_NOTE)
    ratios = compute_ratios(inprocess, http)
    print_ratios(ratios)
    meta = {"timestamp": stamp, "requests": len(requests), "passages_per_request": args.passages,
            "source": source, "models": {m.scorer: {"name": m.name, "path": str(m.path), "max_tokens": m.max_tokens}
                                         for m in models},
            "hardware": hw.as_dict(), "args": args_as_json(args)}
    write_results(f"rerank-{stamp}", meta, inprocess, http, ratios, JSON_KEYS)
    return 0


if __name__ == "__main__":
    run_main(main)
