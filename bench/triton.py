"""Each model service through Triton against the same engine in-process: ratios, one run.

``nimrag triton serve`` (a real Triton through PyTriton, on this CPU) hosts the engines; each service is started
twice, on its in-process profile and on its Triton profile (the gateway here, the engine in Triton over gRPC),
and gets the same requests over HTTP at each client count. The ratios are Triton / in-process throughput
(texts/s, pairs/s, completions/s of a fixed length): what the extra hop (gRPC, PyTriton's shared-memory proxy, Triton's
scheduler) costs where both share one CPU. On a GPU host Triton's engines are TensorRT's, which this does not
measure.

    .venv/bin/python -m bench.triton                      # embed, rerank and llm at 1, 8 and 32 clients
    .venv/bin/python -m bench.triton --services embed --quick
"""

from __future__ import annotations

import re
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import orjson

from bench.common import (
    HttpLoad,
    LoadResult,
    Ratio,
    Service,
    args_as_json,
    bench_http,
    benchmark_parser,
    generated_texts,
    machine_line,
    post_request,
    print_ratios,
    print_table,
    run_main,
    write_results,
)
from bench.embed import embedding_load, load_texts
from bench.rerank import load_requests, ranking_load
from nimrag.services.common.hardware import probe
from nimrag.services.llm.model import DEFAULT_MODEL_NAME as LLM_MODEL
from nimrag.services.rerank.model import DEFAULT_MODEL_NAME as ENCODER_MODEL

SERVICES = ("embed", "rerank", "llm")
UNITS = {"embed": "texts", "rerank": "pairs", "llm": "completions"}  # a completion: --max-tokens tokens
_COMPLETION_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')


def completion_load(prompts: list[str], max_tokens: int, port: int) -> HttpLoad:
    """Non-streamed completions of exactly ``max_tokens`` tokens (ignore_eos): the rate counts generated tokens."""
    bodies = [orjson.dumps({"model": LLM_MODEL, "prompt": p, "max_tokens": max_tokens, "temperature": 0,
                            "ignore_eos": True}) for p in prompts]

    def reply_tokens(_: int, body: bytes) -> int | None:
        match = _COMPLETION_TOKENS.search(body)
        return int(match[1]) if match and int(match[1]) == max_tokens else None

    return HttpLoad([post_request(port, "/v1/completions", b) for b in bodies], 1, reply_tokens)


def workloads(args) -> dict[str, Callable[[int], HttpLoad]]:
    """Per service: the requests for a service on a port (the same for both backends)."""
    texts, _ = load_texts(256 if args.quick else 2048)
    requests, _ = load_requests(16 if args.quick else 64, args.passages)
    prompts = generated_texts(64, min_words=20, max_words=60, seed=3)
    return {"embed": lambda port: embedding_load(texts, ENCODER_MODEL, "base64", port),
            "rerank": lambda port: ranking_load(requests, ENCODER_MODEL, [0] * len(requests), port),
            "llm": lambda port: completion_load(prompts, args.max_tokens, port)}


def triton_env(service: str, url: str, tokenizer: Path) -> dict[str, str]:
    prefix = f"NIMRAG_{service.upper()}_"
    env = {prefix + "TRITON_URL": url}
    if service == "rerank":
        env[prefix + "TRITON_MODEL"] = "embed"  # late interaction: the bundled encoder's token embeddings
    if service == "llm":
        env |= {prefix + "TRITON_MODEL": "tensorrt_llm", prefix + "TOKENIZER": str(tokenizer)}
    return env


def compute_ratios(http: list[LoadResult]) -> list[Ratio]:
    by_key = {(r.label, r.clients): r for r in http}
    ratios = []
    for (label, clients), triton in by_key.items():
        service, _, backend = label.partition(" ")
        local = by_key.get((f"{service} in-process", clients))
        if backend != "triton" or local is None:
            continue
        if local.items_per_s:
            ratios.append(Ratio(f"{service}@{clients}: Triton / in-process ({UNITS[service]}/s)",
                                triton.items_per_s / local.items_per_s, None))
    return ratios


def parse_args(argv: list[str] | None):
    p = benchmark_parser("python -m bench.triton", __doc__, seconds=10.0, warmup=3.0, inprocess_seconds=0.0)
    p.add_argument("--services", default=",".join(SERVICES), help="comma-separated, of embed, rerank, llm")
    p.add_argument("--passages", type=int, default=10, help="passages per ranking request")
    p.add_argument("--max-tokens", type=int, default=32, help="tokens per completion")
    p.add_argument("--llm-slots", type=int, default=8, help="llama.cpp slots in Triton (as the in-process profile)")
    # The Triton server is a process of its own: its CPU shows as "other" in the rows served through it, so the
    # re-measuring of rows that shared the machine would only repeat them.
    p.set_defaults(retries=0)
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.concurrency = 4.0, 1.0, [1, 8]
    args.services = [s.strip() for s in args.services.split(",") if s.strip()]
    return args


def main(argv: list[str] | None = None) -> int:
    from nimrag.services.llm.model import default_model_path
    from tests.services.conftest import start_triton_host, stop_triton_host
    from tests.services.llm.conftest import gguf_tokenizer

    args = parse_args(argv)
    hw = probe()
    print(f"machine: {machine_line(hw)}", flush=True)
    tokenizer = gguf_tokenizer(default_model_path(), "smollm2-135m-instruct-tokenizer")
    tmp = Path(tempfile.mkdtemp(prefix="bench-triton-"))
    started = time.monotonic()
    host = start_triton_host(tmp, ["--llm-slots", str(args.llm_slots)])
    print(f"nimrag triton serve: ready after {time.monotonic() - started:.0f} s at {host.url}", flush=True)
    loads, http = workloads(args), []
    try:
        for service in args.services:
            for backend, env in (("in-process", {}), ("triton", triton_env(service, host.url, tokenizer))):
                label = f"{service} {backend}"
                served = Service(service, label, [], args.cache, tmp / f"{service}-{backend}.log", env)
                http += bench_http(served, loads[service], args, UNITS[service], drain=service != "embed")
    finally:
        stop_triton_host(host)
    print()
    print_table(http, "items", "texts or query-passage pairs per engine batch (embed, rerank)")
    print("triton rows: other% includes the Triton server's own CPU (nimrag triton serve), srv cpu% is the gateway's;"
          " in-process rows: other% is other work on the machine.")
    ratios = compute_ratios(http)
    print_ratios(ratios)
    meta = {"machine": machine_line(hw), "cpu": hw.cpu_model, "args": args_as_json(args),
            "note": "llm rows: items are completions of max_tokens tokens; tokens are generated tokens"}
    write_results("triton", meta, [], http, ratios, {"items_per_s": "items_per_s"})
    return 0


if __name__ == "__main__":
    run_main(main)
