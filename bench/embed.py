"""Embedding throughput: the service over HTTP against in-process baselines, all measured in one run.

    python -m bench.embed                         # default profile over HTTP at 1, 8 and 32 clients
    python -m bench.embed --quick                 # smoke run, about 2 s per level
    python -m bench.embed --all-profiles          # every compatible profile over HTTP
    python -m bench.embed --profiles torch-cuda-fp16

Baselines: sentence-transformers ``encode`` in fp32 (best of several batch sizes), and each profile's engine
called directly on all texts at once (sorted by length and cut as the service's batcher cuts a round; a server
fed one text per request only ever sees a round's worth, so this is its ceiling). Over HTTP each client sends
one short text per request, back to back on a keep-alive connection. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import gc
import re
import time
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
    int_list,
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
from nimrag.services.common.encoder_profiles import ENCODER_PROFILES
from nimrag.services.common.hardware import HardwareInfo, probe
from nimrag.services.common.profiles import Profile, evaluate
from nimrag.services.embed.engines import create_engine
from nimrag.services.embed.model import EmbeddingModelInfo, load_model_info
from nimrag.services.embed.settings import EmbedSettings
from nimrag.services.embed.tokenization import TextTokenizer

TARGETS = {"http_vs_torch": 0.9, "best_cpu_vs_torch": 1.5, "http_scaling": 4.0}
JSON_KEYS = {"items_per_s": "texts_per_s", "label": "profile"}  # the names results have always had


# --- texts ----------------------------------------------------------------------------------------------------

def load_texts(n: int) -> tuple[list[str], str]:
    """SciFact claims (test, then train) when the shared data is there; generated sentences otherwise."""
    texts = [q["text"] for name in ("queries.jsonl", "queries_train.jsonl") for q in read_jsonl(SCIFACT / name)]
    if not texts:
        return generated_texts(n), "generated sentences"
    source = "SciFact queries" + (" (repeated)" if len(texts) < n else "")
    return [texts[i % len(texts)] for i in range(n)], source


# --- in-process baselines -------------------------------------------------------------------------------------

def bench_sentence_transformers(model: EmbeddingModelInfo, work: Workload, device: str, batch_sizes: list[int],
                                threads: int) -> list[InProcessResult]:
    """``SentenceTransformer.encode`` in fp32 at each batch size (it sorts by length itself)."""
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    st = SentenceTransformer(str(model.path), device=device, local_files_only=True)
    results = []
    for batch in batch_sizes:
        def encode(texts: list[str]) -> None:
            st.encode(texts, batch_size=batch, convert_to_numpy=True, show_progress_bar=False)

        results.append(work.measure(f"sentence-transformers fp32 bs={batch}", None, device, batch, encode))
    del st
    gc.collect()
    return results


def bench_engine(profile: Profile, model: EmbeddingModelInfo, tokenizer: TextTokenizer, hw: HardwareInfo,
                 cache: Path, work: Workload, one_at_a_time: bool) -> list[InProcessResult]:
    """The service's engine called directly: tokenize, plan batches as the batcher does, embed. With
    ``one_at_a_time`` also one text per call: what batching can gain at most on this machine."""
    engine = create_engine(profile, model, tokenizer, profile.resolved_threads(hw), cache)
    engine.warm_up()

    def embed(texts: list[str]) -> None:
        ids = tokenizer.encode(texts, truncate="END")
        for batch in plan_batches([len(x) for x in ids], profile.max_batch_items, profile.max_batch_tokens,
                                  profile.max_padding_ratio):
            engine.embed([ids[i] for i in batch])

    def embed_singly(texts: list[str]) -> None:
        for ids in tokenizer.encode(texts, truncate="END"):
            engine.embed([ids])

    results = [work.measure(f"engine {profile.id}", profile.id, profile.device, profile.max_batch_items, embed)]
    if one_at_a_time:
        results.append(work.measure(f"engine {profile.id} bs=1", profile.id, profile.device, 1, embed_singly))
    del engine
    gc.collect()
    return results


# --- over HTTP ------------------------------------------------------------------------------------------------
# One short text per request; a regex reads the token count off each reply.

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":\s*(\d+)')


def prompt_tokens(_: int, body: bytes) -> int | None:
    match = _PROMPT_TOKENS.search(body, max(0, len(body) - 200))
    return int(match[1]) if match else None


def embedding_load(texts: list[str], model_name: str, encoding: str, port: int) -> HttpLoad:
    requests = [post_request(port, "/v1/embeddings",
                             orjson.dumps({"input": text, "model": model_name, "encoding_format": encoding}))
                for text in texts]
    return HttpLoad(requests, 1, prompt_tokens)


def bench_profile_http(profile: Profile, model_name: str, texts: list[str], args, log_path: Path) -> list[LoadResult]:
    service = Service("embed", profile.id, ["--profile", profile.id], args.cache, log_path)
    return bench_http(service, lambda port: embedding_load(texts, model_name, args.encoding, port), args, "texts")


# --- report ---------------------------------------------------------------------------------------------------

def best_torch(inprocess: list[InProcessResult], device: str) -> InProcessResult | None:
    candidates = [r for r in inprocess if r.profile is None and r.device == device]
    return max(candidates, key=lambda r: r.items_per_s, default=None)


def compute_ratios(inprocess: list[InProcessResult], http: list[LoadResult]) -> list[Ratio]:
    ratios: list[Ratio] = []
    torch_cpu = best_torch(inprocess, "cpu")
    cpu_engines = [r for r in inprocess if r.profile is not None and r.device == "cpu"]
    if torch_cpu and cpu_engines:
        best = max(cpu_engines, key=lambda r: r.items_per_s)
        ratios.append(Ratio(f"best CPU backend in-process ({best.profile}) / in-process torch fp32",
                            best.items_per_s / torch_cpu.items_per_s, TARGETS["best_cpu_vs_torch"]))
    for profile, levels in levels_by_label(http).items():
        low, high = levels[0], levels[-1]
        engine = next((r for r in inprocess if r.profile == profile and r.batch_size > 1), None)
        engine_singly = next((r for r in inprocess if r.profile == profile and r.batch_size == 1), None)
        device = engine.device if engine else "cpu"
        torch_ref = best_torch(inprocess, device)
        if torch_ref:
            ratios.append(Ratio(f"{profile}: HTTP@{high.clients} / in-process torch fp32 ({device})",
                                high.items_per_s / torch_ref.items_per_s, TARGETS["http_vs_torch"]))
        ratios += scaling_ratio(profile, levels, TARGETS["http_scaling"])
        if engine:
            ratios.append(Ratio(f"{profile}: HTTP@{high.clients} / its engine in-process (service overhead)",
                                high.items_per_s / engine.items_per_s, None))
        if engine and engine_singly:
            ratios.append(Ratio(f"{profile}: its engine in-process, batched / one text per call (the most "
                                f"HTTP@{high.clients} / HTTP@{low.clients} can reach here)",
                                engine.items_per_s / engine_singly.items_per_s, None))
    return ratios


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = benchmark_parser("python -m bench.embed", __doc__, seconds=8.0, warmup=1.5, inprocess_seconds=3.0)
    p.add_argument("--texts", type=int, default=1000, help="how many short texts")
    p.add_argument("--st-batch-sizes", type=int_list, default=[16, 32, 64, 128],
                   help="sentence-transformers batch sizes to try (the best one is the baseline)")
    p.add_argument("--encoding", choices=["float", "base64"], default="float", help="encoding_format over HTTP")
    p.add_argument("--no-inprocess", action="store_true", help="HTTP only (ratios needing baselines are left out)")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.inprocess_seconds = 2.0, 0.5, 0.5
    args.cache = args.cache.expanduser()
    return args


def run_inprocess(args, hw: HardwareInfo, model: EmbeddingModelInfo, tokenizer: TextTokenizer, work: Workload,
                  compatible: list[Profile], served: list[Profile]) -> list[InProcessResult]:
    threads = max(1, hw.physical_cores or hw.logical_cores)
    results = []
    for device in ["cpu", *sorted({p.device for p in served} - {"cpu"})]:
        print(f"  sentence-transformers fp32 on {device} ...", flush=True)
        results += bench_sentence_transformers(model, work, device, args.st_batch_sizes, threads)
    # Every compatible CPU profile, plus the served ones (for the service-overhead ratio).
    for profile in [p for p in compatible if p.device == "cpu" or p in served]:
        print(f"  engine {profile.id} ...", flush=True)
        results += bench_engine(profile, model, tokenizer, hw, args.cache, work, one_at_a_time=profile in served)
    return results


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    compatible, _ = evaluate(ENCODER_PROFILES, hw)
    served = served_profiles(args, ENCODER_PROFILES, hw, EmbedSettings().profile)
    model = load_model_info(EmbedSettings(cache_path=args.cache))
    tokenizer = TextTokenizer(model.path, model.max_tokens)
    texts, source = load_texts(args.texts)
    tokens = sum(map(len, tokenizer.encode(texts, truncate="END")))
    print(f"embedding benchmark: {model.name}; {len(texts)} {source}, {tokens / len(texts):.1f} tokens per text "
          f"on average; {machine_line(hw)}", flush=True)

    work = Workload(texts, len(texts), tokens, args.inprocess_seconds, 256 if args.quick else len(texts),
                    args.retries)
    inprocess = []
    if not args.no_inprocess:
        print("in-process baselines:", flush=True)
        inprocess = run_inprocess(args, hw, model, tokenizer, work, compatible, served)
    print("over HTTP:", flush=True)
    http: list[LoadResult] = []
    for profile in served:
        http += bench_profile_http(profile, model.name, texts, args,
                                   RESULTS / f"embed-{stamp}-{profile.id}.server.log")

    print()
    print_table([*inprocess, *http], "texts", "texts per engine batch (mean over the window for http)")
    ratios = compute_ratios(inprocess, http)
    print_ratios(ratios)
    meta = {"timestamp": stamp, "model": model.name, "texts": len(texts), "text_source": source,
            "tokens_per_text": tokens / len(texts), "hardware": hw.as_dict(), "args": args_as_json(args)}
    write_results(f"embed-{stamp}", meta, inprocess, http, ratios, JSON_KEYS)
    return 0


if __name__ == "__main__":
    run_main(main)
