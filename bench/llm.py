"""LLM serving: streaming throughput, TTFT and inter-token latency, the service over HTTP against its own engine
in-process on the same prompts, all measured in one run.

    python -m bench.llm                          # 1, 4 and 8 streaming clients, 128 prompt + 128 output tokens
    python -m bench.llm --quick                  # smoke run: fewer requests per level, a shorter ceiling
    python -m bench.llm --concurrency 1,8 --output-tokens 256

Prompts are distinct SciFact abstracts (generated text when the data is missing), each cut to at most
``--prompt-tokens`` tokens; no prompt is sent twice on one side, so llama.cpp's prompt cache cannot make prefill
free (the cached prompt tokens are reported). Every request asks for exactly ``--output-tokens`` tokens
(``ignore_eos``, temperature 0). In-process: the engine the service would create (same profile, slots, threads,
batch tokens), one thread per client calling ``generate`` on the token ids the service's tokenizer makes of the
same text, with the sampling parameters the service derives from the same request body. Over HTTP: ``nimrag serve
llm`` as a subprocess, one keep-alive connection per client streaming ``POST /v1/completions`` (SSE), requests
back to back. The two sides never run at the same time. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import math
import os
import random
import re
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from bench.common import (
    HOST,
    NOISY_PCT,
    REPO,
    RESULTS,
    SCIFACT,
    CpuMeter,
    Service,
    args_as_json,
    fmt,
    generated_texts,
    int_list,
    machine_line,
    noise,
    post_request,
    quietest,
    read_jsonl,
    run_async,
    run_main,
    served_profiles,
)
from nimrag.services.common.errors import APIError
from nimrag.services.common.hardware import HardwareInfo, probe
from nimrag.services.common.profiles import Profile
from nimrag.services.common.settings import default_cache_path
from nimrag.services.llm.engines import create_engine
from nimrag.services.llm.engines.base import LLMEngine, SamplingParams
from nimrag.services.llm.model import LLMModelInfo, load_model_info
from nimrag.services.llm.profiles import LLM_PROFILES
from nimrag.services.llm.protocol import CompletionRequest
from nimrag.services.llm.sampling import sampling_params
from nimrag.services.llm.settings import LLMSettings

TARGETS = {"http_vs_inprocess": 0.9, "ttft_overhead_ms": 20.0}
CEILING_TRIES, CEILING_TEXTS = 3, 7  # tries per ceiling figure (1 with --quick); texts they need


# --- prompts --------------------------------------------------------------------------------------------------

def source_texts(n: int, min_words: int) -> tuple[list[str], str]:
    """``n`` distinct texts of at least ``min_words`` words: SciFact abstracts (title first), fixed shuffle."""
    docs = [f"{d.get('title', '')}. {d['text']}".strip() for d in read_jsonl(SCIFACT / "corpus.jsonl.gz")]
    docs = [d for d in dict.fromkeys(docs) if len(d.split()) >= min_words]
    random.Random(0).shuffle(docs)
    if len(docs) >= n:
        return docs[:n], "SciFact abstracts"
    return generated_texts(n, min_words=min_words, max_words=2 * min_words, seed=3), "generated text"


def fit(engine: LLMEngine, text: str, max_tokens: int) -> tuple[str, list[int]]:
    """The longest word prefix of ``text`` within ``max_tokens`` tokens, and its token ids."""
    words = text.split()
    lo, hi, best = 1, len(words), None
    while lo <= hi:
        mid = (lo + hi) // 2
        ids = engine.tokenize(" ".join(words[:mid]))
        if len(ids) <= max_tokens:
            lo, best = mid + 1, (" ".join(words[:mid]), ids)
        else:
            hi = mid - 1
    if best is None:
        raise ValueError(f"even one word of a prompt is over {max_tokens} tokens")
    return best


@dataclass(frozen=True)
class Prompt:
    text: str
    ids: list[int]


@dataclass(frozen=True)
class Plan:
    """Which prompts each measurement uses: a warm-up block, then per level and prompt set one block per try.
    Both sides use the same blocks in the same order, so a level's first try sees the same prompts on both; a
    retry takes fresh ones. A prompt never reaches one engine twice (it would come from llama.cpp's prompt cache):
    rounds that restart both sides reuse the one set, interleaved rounds each have their own."""
    warmup: list[Prompt]
    levels: dict[int, list[list[Prompt]]]  # clients -> blocks: set 0's tries, then set 1's, ...
    tries: int

    def blocks(self, clients: int, prompt_set: int) -> Iterator[list[Prompt]]:
        return iter(self.levels[clients][prompt_set * self.tries:(prompt_set + 1) * self.tries])


def level_requests(clients: int, per_level: int) -> int:
    """At least ``per_level``, the same number for every client."""
    return -(-per_level // clients) * clients


def make_plan(engine: LLMEngine, args) -> tuple[Plan, list[str], str]:
    """The plan's prompts, fitted to --prompt-tokens, and the texts the ceiling uses (none of the plan's)."""
    tries, sets = 1 + args.retries, args.rounds if args.interleave else 1
    sizes = [max(args.concurrency)] + [level_requests(c, args.requests) for c in args.concurrency
                                       for _ in range(sets * tries)]
    texts, source = source_texts(sum(sizes) + CEILING_TEXTS, min_words=args.prompt_tokens)
    prompts = [Prompt(*fit(engine, t, args.prompt_tokens)) for t in texts[:sum(sizes)]]
    blocks, start = [], 0
    for size in sizes:
        blocks.append(prompts[start:start + size])
        start += size
    per_level = sets * tries
    levels = {c: blocks[1 + i * per_level: 1 + (i + 1) * per_level] for i, c in enumerate(args.concurrency)}
    return Plan(blocks[0], levels, tries), texts[sum(sizes):], source


def request_body(model_name: str, text: str, max_tokens: int) -> dict:
    """One streaming completion of exactly ``max_tokens`` tokens, greedy."""
    return {"model": model_name, "prompt": text, "max_tokens": max_tokens, "temperature": 0.0, "stream": True,
            "stream_options": {"include_usage": True}, "nvext": {"ignore_eos": True}}


def params_for(engine: LLMEngine, model_name: str, max_tokens: int) -> SamplingParams:
    """The sampling parameters the service derives from the same request body."""
    request = CompletionRequest.model_validate(request_body(model_name, "", max_tokens))
    return sampling_params(request, max_tokens, engine.info)


# --- what one level measured ----------------------------------------------------------------------------------

@dataclass
class Stream:
    """One request: when it was sent, when each piece of text arrived, and what the engine reported."""
    started: float
    pieces: list[float] = field(default_factory=list)
    ended: float = 0.0
    prompt_tokens: int = 0
    tokens: int = 0
    cached: int = 0


@dataclass
class Sample:
    """One try at one level: its streams, what failed, and the CPU everyone used meanwhile."""
    streams: list[Stream]
    errors: Counter
    cpu: dict
    output_tokens: int
    server_ttft: tuple[float, float] = (0.0, 0.0)  # the service's own TTFT histogram over the try: sum, count

    def __post_init__(self) -> None:
        bad = [s for s in self.streams if not s.pieces or s.tokens != self.output_tokens]
        for s in bad:
            self.errors[f"{s.tokens} tokens in {len(s.pieces)} pieces, {self.output_tokens} asked for"] += 1
        self.streams = [s for s in self.streams if all(s is not b for b in bad)]

    @property
    def span(self) -> float:
        return max(s.ended for s in self.streams) - min(s.started for s in self.streams) if self.streams else 0.0

    @property
    def tokens_per_s(self) -> float:
        return sum(s.tokens for s in self.streams) / self.span if self.span else 0.0

    @property
    def other_cpu_pct(self) -> float | None:
        return self.cpu.get("others")


@dataclass
class LevelResult:
    """One side at one level, over every round (each round's quietest try)."""
    side: str  # "in-process" or "http"
    clients: int
    requests: int
    seconds: float  # summed over rounds
    output_tokens: int
    tokens_per_s: float  # all output tokens over all rounds' seconds
    round_tokens_per_s: list[float]
    ttft_p50_ms: float
    ttft_p90_ms: float
    itl_p50_ms: float
    itl_p90_ms: float
    itl_p99_ms: float
    prompt_tokens: float  # mean per request
    cached_prompt_tokens: float  # mean per request
    errors: int
    error_samples: dict[str, int]
    own_cpu_pct: float | None  # this process: the engine in-process, the client over HTTP
    server_cpu_pct: float | None
    other_cpu_pct: float | None  # the most any round saw
    server_ttft_mean_ms: float | None  # the service's own TTFT (arrival to first token), mean


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def summarize(side: str, clients: int, samples: list[Sample]) -> LevelResult:
    streams = [s for sample in samples for s in sample.streams]
    errors = sum((sample.errors for sample in samples), Counter())
    ttft = [s.pieces[0] - s.started for s in streams]
    itl = [float(g) for s in streams for g in np.diff(s.pieces)]
    seconds = sum(sample.span for sample in samples)
    tokens = sum(s.tokens for s in streams)

    def mean(values: list[float | None]) -> float | None:
        known = [v for v in values if v is not None]
        return float(np.mean(known)) if known else None

    def cpu(key: str) -> float | None:  # weighted by each try's length
        if not seconds or any(sample.cpu.get(key) is None for sample in samples):
            return None
        return sum(sample.cpu[key] * sample.span for sample in samples) / seconds

    ttft_sum, ttft_count = (sum(sample.server_ttft[i] for sample in samples) for i in (0, 1))
    others = [sample.other_cpu_pct for sample in samples if sample.other_cpu_pct is not None]
    return LevelResult(side, clients, len(streams), round(seconds, 3), tokens, tokens / seconds if seconds else 0.0,
                       [round(sample.tokens_per_s, 2) for sample in samples], pct(ttft, 50), pct(ttft, 90),
                       pct(itl, 50), pct(itl, 90), pct(itl, 99), mean([s.prompt_tokens for s in streams]),
                       mean([s.cached for s in streams]), sum(errors.values()), dict(errors.most_common(5)),
                       cpu("own"), cpu("server"), max(others) if others else None,
                       1000 * ttft_sum / ttft_count if ttft_count else None)


class Quiet:
    """Before each measurement, wait for a second in which other processes used under half of ``NOISY_PCT``
    (llama.cpp's threads meet after every step, so one core taken by others slows both): at most ``each`` seconds
    a time and ``budget`` seconds over the run. Then ``quietest``: measured again (fresh prompts) when others
    still took over ``NOISY_PCT``, and the least disturbed try kept."""

    def __init__(self, each: float, budget: float, retries: int):
        self.each, self.budget, self.retries = each, budget, retries

    def wait(self, server_pid: int | None = None) -> None:
        deadline, said = time.monotonic() + min(self.each, self.budget), False
        while time.monotonic() < deadline:
            meter, started = CpuMeter(server_pid), time.monotonic()
            time.sleep(1.0)
            self.budget -= time.monotonic() - started
            others = meter.read()["others"]
            if others is None or others < NOISY_PCT / 2:
                return
            if not said:
                print(f"      (other processes use {others:.0f}% CPU: waiting up to "
                      f"{min(self.each, self.budget):.0f} s)", flush=True)
                said = True

    def measure(self, measure, server_pid: int | None = None):
        return quietest(lambda: (self.wait(server_pid), measure())[1], self.retries)


# --- in-process -----------------------------------------------------------------------------------------------

@contextmanager
def engine_log(path: Path) -> Iterator[None]:
    """llama.cpp logs every request to file descriptor 2: into a file while the engine runs in this process."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with path.open("ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def run_streams(engine: LLMEngine, prompts: list[Prompt], clients: int, params: SamplingParams) -> Sample:
    """``clients`` threads, each calling ``generate`` on its share of the prompts back to back."""
    clock, streams, errors = time.perf_counter, [], Counter()
    start = threading.Barrier(clients)

    def worker(mine: list[Prompt]) -> None:
        start.wait()
        for prompt in mine:
            stream = Stream(clock(), prompt_tokens=len(prompt.ids))

            def emit(delta, pieces=stream.pieces) -> bool:
                if delta.text:
                    pieces.append(clock())
                return False

            try:
                finished = engine.generate(prompt.ids, params, emit)
            except APIError as exc:  # what the service would answer as an error: counted, the client goes on
                errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
                continue
            stream.ended, stream.tokens = clock(), finished.completion_tokens
            stream.cached = finished.cached_prompt_tokens
            streams.append(stream)

    meter = CpuMeter()
    with ThreadPoolExecutor(clients) as pool:
        for future in [pool.submit(worker, prompts[c::clients]) for c in range(clients)]:
            future.result()  # anything else the engine raised, raised here
    return Sample(streams, errors, meter.read(), params.max_tokens)


@dataclass
class Ceiling:
    """The engine alone on this machine: one long prompt's prefill, one stream's decode."""
    prefill_prompt_tokens: int
    prefill_tokens_per_s: float  # median over the tries
    prefill_tries: list[float]
    decode_tokens: int
    decode_tokens_per_s: float  # median over the tries
    decode_tries: list[float]
    other_cpu_pct: float | None


def measure_ceiling(engine: LLMEngine, model_name: str, texts: list[str], args, tries: int) -> Ceiling:
    """Prefill: a long distinct prompt with max_tokens=1, prompt tokens over the whole call. Decode: one stream,
    tokens after the first over the time from the first piece to the last."""
    meter, prefill, decode, long_prompt = CpuMeter(), [], [], []
    for i in range(tries):
        # Several abstracts joined: one prompt of --prefill-tokens tokens, distinct from every other.
        _, long_prompt = fit(engine, " ".join(texts[i:] + texts[:i]) * 4, args.prefill_tokens)
        started = time.perf_counter()
        engine.generate(long_prompt, params_for(engine, model_name, 1), lambda _: False)
        prefill.append(round(len(long_prompt) / (time.perf_counter() - started), 1))
    for i in range(tries):
        _, ids = fit(engine, texts[tries + i], args.prompt_tokens)
        sample = run_streams(engine, [Prompt("", ids)], 1, params_for(engine, model_name, args.decode_tokens))
        if sample.errors or not sample.streams or len(sample.streams[0].pieces) < 2:
            raise RuntimeError(f"the decode ceiling failed: {dict(sample.errors)}")
        s = sample.streams[0]
        decode.append(round((s.tokens - 1) / (s.pieces[-1] - s.pieces[0]), 2))
    return Ceiling(len(long_prompt), float(np.median(prefill)), prefill, args.decode_tokens,
                   float(np.median(decode)), decode, meter.read()["others"])


def warm_up(engine: LLMEngine, model_name: str, plan: Plan, args) -> None:
    """As the service does before it says ready (one token), then a round at the most clients."""
    engine.generate(engine.tokenize("Hello"), SamplingParams(max_tokens=1, temperature=0.0), lambda _: False)
    run_streams(engine, plan.warmup, len(plan.warmup), params_for(engine, model_name, args.warmup_tokens))


@contextmanager
def loaded_engine(profile: Profile, model: LLMModelInfo, hw: HardwareInfo, log_path: Path) -> Iterator[LLMEngine]:
    """The engine the service would create for ``profile``, loaded in this process (its log to ``log_path``)."""
    with engine_log(log_path):
        engine = create_engine(profile, model, LLMSettings(), hw)
        engine.load()
        try:
            yield engine
        finally:
            engine.close()


def first_round(engine: LLMEngine, profile: Profile, model: LLMModelInfo, hw: HardwareInfo, args,
                quiet: Quiet) -> tuple[Plan, str, Ceiling]:
    """On the first engine loaded: the plan (the engine's tokenizer), a warm-up, then the ceiling."""
    info = engine.info
    print(f"  engine {engine.name}: {info.slots} slots, {info.context_length} tokens each, "
          f"{profile.resolved_threads(hw)} threads, {profile.max_batch_tokens} batch tokens", flush=True)
    plan, ceiling_texts, source = make_plan(engine, args)
    warm_up(engine, model.name, plan, args)
    print("  ceiling ...", flush=True)
    quiet.wait()
    ceiling = measure_ceiling(engine, model.name, ceiling_texts, args, 1 if args.quick else CEILING_TRIES)
    print(f"    prefill {ceiling.prefill_tokens_per_s:.0f} tokens/s ({ceiling.prefill_prompt_tokens} tokens), "
          f"decode {ceiling.decode_tokens_per_s:.1f} tokens/s (one stream)", flush=True)
    return plan, source, ceiling


def inprocess_side(engine: LLMEngine, model_name: str, args):
    params = params_for(engine, model_name, args.output_tokens)
    return lambda prompts, clients: run_streams(engine, prompts, clients, params)


def measure_level(side: str, measure, plan: Plan, clients: int, prompt_set: int, quiet: Quiet,
                  server_pid: int | None = None) -> Sample:
    blocks = plan.blocks(clients, prompt_set)
    sample = quiet.measure(lambda: measure(next(blocks), clients), server_pid)
    print(f"    {sample_line(side, clients, sample)}", flush=True)
    return sample


# --- over HTTP ------------------------------------------------------------------------------------------------
# A lean raw-HTTP/1.1 streaming client: chunked transfer decoding and SSE events split by hand, orjson per event,
# so the client takes little of the CPU the server needs.

async def read_chunk(reader: asyncio.StreamReader) -> bytes | None:
    size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
    data = await reader.readexactly(size + 2)
    return data[:-2] if size else None


async def stream_completion(reader, writer, request: bytes, stream: Stream) -> str | None:
    """Send one streaming request and follow its events; an error message, or None when it went well."""
    clock = time.perf_counter
    writer.write(request)
    head = (await reader.readuntil(b"\r\n\r\n")).lower()
    if b"transfer-encoding: chunked" not in head:
        start = head.find(b"content-length:") + len(b"content-length:")
        body = await reader.readexactly(int(head[start:head.find(b"\r\n", start)]))
        return f"HTTP {int(head[9:12])}: {body[:160].decode(errors='replace')}"
    buffer, error, done = b"", None, False
    while (chunk := await read_chunk(reader)) is not None:
        now = clock()
        buffer += chunk
        while (end := buffer.find(b"\n\n")) >= 0:
            event, buffer = buffer[6:end], buffer[end + 2:]  # after "data: "
            if event == b"[DONE]":
                done = True
                continue
            data = orjson.loads(event)
            if "error" in data:
                error = f"in-stream error: {data['error'].get('message', '')}"[:160]
            elif data.get("usage"):
                usage = data["usage"]
                stream.prompt_tokens, stream.tokens = usage["prompt_tokens"], usage["completion_tokens"]
                stream.cached = usage["prompt_tokens_details"]["cached_tokens"]
            elif data["choices"] and data["choices"][0]["text"]:
                stream.pieces.append(now)
    stream.ended = clock()
    return error or (None if done else "stream ended without [DONE]")


async def http_streams(port: int, requests: list[bytes], prompt_tokens: list[int],
                       clients: int) -> tuple[list[Stream], Counter]:
    streams, errors = [], Counter()
    conns = [await asyncio.open_connection(HOST, port) for _ in range(clients)]

    async def client(c: int) -> None:
        conn = conns[c]
        for i in range(c, len(requests), clients):
            stream = Stream(time.perf_counter())
            try:
                if conn is None:
                    conn = await asyncio.open_connection(HOST, port)
                error = await stream_completion(*conn, requests[i], stream)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:160]
                conn[1].close()
                conn = None
            if error is None and stream.prompt_tokens != prompt_tokens[i]:
                error = f"the service made {stream.prompt_tokens} prompt tokens, in-process {prompt_tokens[i]}"
            if error:
                errors[error] += 1
            else:
                streams.append(stream)
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client(c) for c in range(clients)))
    return streams, errors


def server_ttft_totals(port: int) -> tuple[float, float]:
    """The service's own TTFT histogram so far (sum of seconds, count), from /v1/metrics."""
    with urllib.request.urlopen(f"http://{HOST}:{port}/v1/metrics", timeout=10) as response:
        text = response.read().decode(errors="replace")
    found = [re.search(rf"^\S*time_to_first_token_seconds_{key} (\S+)$", text, re.MULTILINE) for key in ("sum", "count")]
    return tuple(float(m[1]) if m else 0.0 for m in found)


def http_level(service: Service, model_name: str, prompts: list[Prompt], clients: int, max_tokens: int) -> Sample:
    body = (lambda p: orjson.dumps(request_body(model_name, p.text, max_tokens)))
    requests = [post_request(service.port, "/v1/completions", body(p)) for p in prompts]
    before = server_ttft_totals(service.port)
    meter = CpuMeter(service.process.pid)
    streams, errors = run_async(http_streams(service.port, requests, [len(p.ids) for p in prompts], clients))
    cpu, after = meter.read(), server_ttft_totals(service.port)
    return Sample(streams, errors, cpu, max_tokens, (after[0] - before[0], after[1] - before[1]))


@contextmanager
def warm_service(profile: Profile, model: LLMModelInfo, plan: Plan, args, log_path: Path) -> Iterator[Service]:
    """A fresh service (an empty prompt cache), warmed up as the in-process engine was."""
    with Service("llm", profile.id, ["--profile", profile.id], args.cache, log_path) as service:
        ready_s = service.wait_ready(args.ready_timeout)
        print(f"  nimrag serve llm --profile {profile.id}: ready after {ready_s:.1f} s on port {service.port}",
              flush=True)
        warm = http_level(service, model.name, plan.warmup, len(plan.warmup), args.warmup_tokens)
        if warm.errors:
            raise RuntimeError(f"the warm-up round failed: {dict(warm.errors)}\n{service.log_tail()}")
        yield service


def http_side(service: Service, model_name: str, args):
    return lambda prompts, clients: http_level(service, model_name, prompts, clients, args.output_tokens)


# --- report ---------------------------------------------------------------------------------------------------

@dataclass
class Check:
    name: str
    clients: int
    value: float
    target: float
    higher_is_better: bool
    noisy: bool  # other processes took over NOISY_PCT during a try behind it: the verdict is not to be trusted

    @property
    def verdict(self) -> str:
        met = not math.isnan(self.value) and (self.value >= self.target if self.higher_is_better
                                              else self.value <= self.target)
        return ("PASS" if met else "MISS") + ("!" if self.noisy else "")


def sample_line(side: str, clients: int, r: Sample) -> str:
    ttft = [x.pieces[0] - x.started for x in r.streams]
    itl = [float(g) for x in r.streams for g in np.diff(x.pieces)]
    return (f"{side:>10} {clients} clients: {r.tokens_per_s:6.1f} tokens/s, TTFT p50 {pct(ttft, 50):.1f} ms, "
            f"ITL p50 {pct(itl, 50):.1f} ms, {sum(r.errors.values())} errors, other processes "
            f"{fmt(r.other_cpu_pct, '.0f')}% CPU")


def checks_for(inprocess: LevelResult, http: LevelResult) -> list[Check]:
    ratio = http.tokens_per_s / inprocess.tokens_per_s if inprocess.tokens_per_s else float("nan")
    noisy = any((r.other_cpu_pct or 0) > NOISY_PCT for r in (inprocess, http))
    return [Check("HTTP / in-process output tokens/s", http.clients, ratio, TARGETS["http_vs_inprocess"], True, noisy),
            Check("TTFT p50 overhead, ms", http.clients, http.ttft_p50_ms - inprocess.ttft_p50_ms,
                  TARGETS["ttft_overhead_ms"], False, noisy)]


def print_level(a: LevelResult, b: LevelResult, checks: list[Check]) -> None:
    ratio, overhead = checks
    rounds = len(a.round_tokens_per_s)
    print(f"\n{a.clients} concurrent streaming client{'s' if a.clients > 1 else ''}: {a.requests} / {b.requests} "
          f"requests (in-process / http) over {rounds} round{'s' if rounds > 1 else ''}, "
          f"{a.prompt_tokens:.1f} / {b.prompt_tokens:.1f} prompt tokens (cached {a.cached_prompt_tokens:.1f} / "
          f"{b.cached_prompt_tokens:.1f}) and {a.output_tokens // max(1, a.requests)} output tokens each")
    per_round = (lambda r: ", ".join(f"{x:.1f}" for x in r.round_tokens_per_s))
    round_ratios = ", ".join(f"{y / x:.3f}" for x, y in zip(a.round_tokens_per_s, b.round_tokens_per_s) if x)
    rows = [("", "in-process", "http", "http vs in-process", "target", ""),
            ("output tokens/s", f"{a.tokens_per_s:.1f}", f"{b.tokens_per_s:.1f}", f"{ratio.value:.3f}x",
             f">= {ratio.target:g}x", ratio.verdict),
            ("  per round", per_round(a), per_round(b), round_ratios, "", ""),
            ("TTFT p50 / p90, ms", f"{a.ttft_p50_ms:.1f} / {a.ttft_p90_ms:.1f}",
             f"{b.ttft_p50_ms:.1f} / {b.ttft_p90_ms:.1f}", f"{overhead.value:+.1f} ms at p50",
             f"<= {overhead.target:g} ms", overhead.verdict),
            ("  service's own TTFT, mean ms", "", fmt(b.server_ttft_mean_ms), "", "", ""),
            ("ITL p50 / p90 / p99, ms", f"{a.itl_p50_ms:.2f} / {a.itl_p90_ms:.2f} / {a.itl_p99_ms:.1f}",
             f"{b.itl_p50_ms:.2f} / {b.itl_p90_ms:.2f} / {b.itl_p99_ms:.1f}",
             f"{b.itl_p50_ms - a.itl_p50_ms:+.2f} ms at p50", "", ""),
            ("CPU %: own / server / others", f"{fmt(a.own_cpu_pct, '.0f')} / - / {noise(a.other_cpu_pct)}",
             f"{fmt(b.own_cpu_pct, '.0f')} / {fmt(b.server_cpu_pct, '.0f')} / {noise(b.other_cpu_pct)}", "", "", ""),
            ("errors", str(a.errors), str(b.errors), "", "", "")]
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    for row in rows:
        print("  " + "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in
                               enumerate(zip(row, widths))).rstrip())
    for r in (a, b):
        for message, count in r.error_samples.items():
            print(f"  {r.side} error: {count} x {message}")


def print_report(profile: Profile, ceiling: Ceiling, inprocess: list[LevelResult],
                 http: list[LevelResult]) -> list[Check]:
    print(f"\n=== {profile.id} ===")
    print(f"ceiling, the engine alone in-process: prefill {ceiling.prefill_tokens_per_s:.1f} tokens/s (one "
          f"{ceiling.prefill_prompt_tokens}-token prompt, max_tokens 1; tries "
          f"{', '.join(f'{x:.0f}' for x in ceiling.prefill_tries)}), decode {ceiling.decode_tokens_per_s:.1f} "
          f"tokens/s (one stream of {ceiling.decode_tokens} tokens; tries "
          f"{', '.join(f'{x:.1f}' for x in ceiling.decode_tries)}); other processes "
          f"{noise(ceiling.other_cpu_pct)}% CPU")
    checks = []
    for a, b in zip(inprocess, http):
        level_checks = checks_for(a, b)
        print_level(a, b, level_checks)
        checks += level_checks
    print("\nCPU: % of one core; own is this process (the engine in-process, the client over HTTP). ITL: the gap "
          "between consecutive streamed pieces of text (one token each here). The service's own TTFT: its "
          "time_to_first_token_seconds histogram, from the request's arrival in the handler.")
    if any((r.other_cpu_pct or 0) > NOISY_PCT for r in [*inprocess, *http]):
        print(f"! others: the most CPU other processes used during a round; above {NOISY_PCT:g}% the machine was "
              "shared, figures read low and a verdict marked ! is not to be trusted: run again.")
    return checks


def write_json(name: str, meta: dict, runs: list[dict]) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"meta": meta, "profiles": runs}, indent=2))
    print(f"\nresults: {path.relative_to(REPO)}")
    return path


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # Not benchmark_parser: levels here are counted in requests, not seconds.
    p = argparse.ArgumentParser(prog="python -m bench.llm", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke run: one round of 4 requests per level, short ceiling")
    p.add_argument("--concurrency", type=int_list, default=[1, 4, 8], help="streaming client counts, e.g. 1,4,8")
    p.add_argument("--rounds", type=int, help="in-process then HTTP, this many times; figures pool the rounds "
                                              "(default 2; 1 with --quick)")
    p.add_argument("--interleave", action="store_true",
                   help="keep the engine and the service loaded and take turns level by level (only one works at "
                        "a time) instead of stopping each side before the other starts")
    p.add_argument("--requests", type=int, help="requests per level and round, at least one per client "
                                                "(default 8; 4 with --quick)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="prompt length, at most (whole words)")
    p.add_argument("--output-tokens", type=int, default=128, help="tokens every request generates (ignore_eos)")
    p.add_argument("--warmup-tokens", type=int, default=16, help="tokens per request of the warm-up round")
    p.add_argument("--prefill-tokens", type=int, help="the prefill ceiling's prompt (default 1024; 512 with --quick)")
    p.add_argument("--decode-tokens", type=int, help="the decode ceiling's stream (default 256; 128 with --quick)")
    p.add_argument("--profiles", help="profiles to measure, comma-separated (default: the auto-selected)")
    p.add_argument("--all-profiles", action="store_true", help="every compatible profile")
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="the service's cache folder")
    p.add_argument("--ready-timeout", type=float, default=300.0, help="seconds to wait for the service")
    p.add_argument("--retries", type=int, default=1,
                   help=f"times to measure a level again when other processes took over {NOISY_PCT:g}%% CPU "
                        "meanwhile (fresh prompts each time)")
    p.add_argument("--quiet-wait", type=float, default=10.0,
                   help="seconds to wait at most before each measurement for other processes to go quiet")
    p.add_argument("--quiet-budget", type=float,
                   help="seconds of such waiting over the whole run (default 90; 20 with --quick)")
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.requests = args.requests or (4 if args.quick else 8)
    args.prefill_tokens = args.prefill_tokens or (512 if args.quick else 1024)
    args.decode_tokens = args.decode_tokens or (128 if args.quick else 256)
    args.quiet_budget = (20.0 if args.quick else 90.0) if args.quiet_budget is None else args.quiet_budget
    args.cache = args.cache.expanduser()
    return args


def bench_profile(profile: Profile, model: LLMModelInfo, hw: HardwareInfo, args, quiet: Quiet, stamp: str) -> dict:
    """By default, rounds of: every level in-process, the engine stopped; then every level over HTTP, the service
    stopped. With --interleave, the engine and the service stay loaded and take turns level by level (the idle one
    uses no CPU): slow drift on a shared machine then falls on both sides alike."""
    samples: dict[tuple[str, int], list[Sample]] = {(side, c): [] for side in ("in-process", "http")
                                                    for c in args.concurrency}
    engine_log_path = RESULTS / f"llm-{stamp}-{profile.id}.inprocess.log"
    server_log = (lambda n: RESULTS / f"llm-{stamp}-{profile.id}-{n}.server.log")
    if args.interleave:
        with loaded_engine(profile, model, hw, engine_log_path) as engine:
            plan, source, ceiling = first_round(engine, profile, model, hw, args, quiet)
            with warm_service(profile, model, plan, args, server_log("interleaved")) as service:
                sides = {"in-process": (inprocess_side(engine, model.name, args), None),
                         "http": (http_side(service, model.name, args), service.process.pid)}
                for clients in args.concurrency:
                    for n in range(args.rounds):
                        for side in (sides if n % 2 == 0 else reversed(sides)):  # each side first in turn
                            measure, pid = sides[side]
                            samples[side, clients].append(measure_level(side, measure, plan, clients, n, quiet, pid))
    else:
        plan = source = ceiling = None
        for n in range(args.rounds):
            print(f"{profile.id}, round {n + 1} of {args.rounds}, in-process:", flush=True)
            with loaded_engine(profile, model, hw, engine_log_path) as engine:
                if plan is None:
                    plan, source, ceiling = first_round(engine, profile, model, hw, args, quiet)
                else:
                    warm_up(engine, model.name, plan, args)
                measure = inprocess_side(engine, model.name, args)
                for clients in args.concurrency:
                    samples["in-process", clients].append(measure_level("in-process", measure, plan, clients, 0,
                                                                        quiet))
            gc.collect()  # the engine's memory and threads, before the service starts
            print(f"{profile.id}, round {n + 1} of {args.rounds}, over HTTP:", flush=True)
            with warm_service(profile, model, plan, args, server_log(f"round{n + 1}")) as service:
                measure = http_side(service, model.name, args)
                for clients in args.concurrency:
                    samples["http", clients].append(measure_level("http", measure, plan, clients, 0, quiet,
                                                                  service.process.pid))
    a = [summarize("in-process", c, samples["in-process", c]) for c in args.concurrency]
    b = [summarize("http", c, samples["http", c]) for c in args.concurrency]
    checks = print_report(profile, ceiling, a, b)
    return {"profile": profile.id, "prompt_source": source, "ceiling": asdict(ceiling),
            "inprocess": [asdict(r) for r in a], "http": [asdict(r) for r in b],
            "checks": [{**asdict(c), "verdict": c.verdict} for c in checks]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started, stamp = time.monotonic(), time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    settings = LLMSettings()
    model = load_model_info(settings)
    served = served_profiles(args, LLM_PROFILES, hw, settings.profile)
    print(f"LLM benchmark: {model.name} ({model.path.name}); prompts of at most {args.prompt_tokens} tokens, "
          f"{args.output_tokens} output tokens; {args.rounds} round(s) of {args.requests} requests per level; "
          f"{machine_line(hw)}", flush=True)
    quiet = Quiet(args.quiet_wait, args.quiet_budget, args.retries)
    runs = [bench_profile(profile, model, hw, args, quiet, stamp) for profile in served]
    meta = {"timestamp": stamp, "model": model.name, "model_path": str(model.path), "hardware": hw.as_dict(),
            "targets": TARGETS, "seconds": round(time.monotonic() - started, 1), "args": args_as_json(args)}
    write_json(f"llm-{stamp}", meta, runs)
    print(f"took {meta['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    run_main(main)
