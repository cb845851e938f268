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
import asyncio
import gc
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import orjson

from services.common.batching import plan_batches
from services.common.hardware import HardwareInfo, probe
from services.common.profiles import Profile, evaluate, select_profile
from services.common.settings import default_cache_path
from services.embed.engines import create_engine
from services.embed.model import EmbeddingModelInfo, load_model_info
from services.common.encoder_profiles import ENCODER_PROFILES
from services.embed.settings import EmbedSettings
from services.embed.tokenization import TextTokenizer

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "eval" / "scifact"
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
TARGETS = {"http_vs_torch": 0.9, "best_cpu_vs_torch": 1.5, "http_scaling": 4.0}
NOISY_PCT = 15.0  # CPU used by other processes during a measurement above which its figure is flagged


# --- CPU accounting -------------------------------------------------------------------------------------------
# Shared machines run other work; what it took during each measurement is reported next to the figure.

def machine_busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (busy = total - idle - iowait), from /proc/stat."""
    try:
        ticks = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")


def process_cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of one process (all its threads), from /proc."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU use over a span, in % of one core: this process, an optional server process, and everyone else."""

    def __init__(self, server_pid: int | None = None):
        self.server_pid = server_pid
        self._start = self._sample()

    def _sample(self) -> tuple:
        server = process_cpu_seconds(self.server_pid) if self.server_pid else 0.0
        return time.perf_counter(), time.process_time(), server, machine_busy_seconds()

    def read(self) -> dict[str, float | None]:
        start, end = self._start, self._sample()
        span = end[0] - start[0]
        own, server, everyone = (None if a is None or b is None else 100 * (b - a) / span
                                 for a, b in zip(start[1:], end[1:]))
        others = None if everyone is None or server is None else max(0.0, everyone - own - server)
        return {"own": own, "server": server if self.server_pid else None, "others": others}


def quietest(measure, retries: int):
    """Run ``measure()`` again while other processes took much CPU during it; keep the least disturbed try."""
    tries = [measure()]
    while (tries[-1].other_cpu_pct or 0) > NOISY_PCT and len(tries) <= retries:
        print(f"      (other processes used {tries[-1].other_cpu_pct:.0f}% CPU: measuring again)", flush=True)
        tries.append(measure())
    return min(tries, key=lambda r: r.other_cpu_pct or 0)


# --- texts ----------------------------------------------------------------------------------------------------

def load_texts(n: int) -> tuple[list[str], str]:
    """SciFact claims (test, then train) when the shared data is there; generated sentences otherwise."""
    texts: list[str] = []
    files = [SCIFACT / "queries.jsonl", SCIFACT / "queries_train.jsonl"]
    for path in (f for f in files if f.is_file()):
        with path.open(encoding="utf-8") as lines:
            texts += [json.loads(line)["text"] for line in lines if line.strip()]
    if not texts:
        return generated_texts(n), "generated sentences"
    source = "SciFact queries" + (" (repeated)" if len(texts) < n else "")
    return [texts[i % len(texts)] for i in range(n)], source


def generated_texts(n: int) -> list[str]:
    rng = random.Random(0)
    words = ("protein cell gene expression tumour receptor patients therapy increases reduces risk mice "
             "binding pathway mutation levels response signalling clinical trial associated with the of in").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(6, 24))).capitalize() + "." for _ in range(n)]


# --- in-process baselines -------------------------------------------------------------------------------------

@dataclass
class InProcessResult:
    name: str
    profile: str | None  # None for sentence-transformers
    device: str
    batch_size: int
    texts_per_s: float
    tokens_per_s: float
    passes: int
    seconds: float
    other_cpu_pct: float | None  # CPU other processes took meanwhile


@dataclass
class Timing:
    passes: int
    elapsed: float
    other_cpu_pct: float | None


def time_passes(one_pass, min_seconds: float) -> Timing:
    """Repeat whole passes over the texts until ``min_seconds`` have gone by."""
    passes, started, meter = 0, time.perf_counter(), CpuMeter()
    while True:
        one_pass()
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return Timing(passes, elapsed, meter.read()["others"])


@dataclass(frozen=True)
class Workload:
    """The texts every in-process row embeds, and how each row is timed."""
    texts: list[str]
    tokens: int  # over all texts, counted as the service counts usage.prompt_tokens
    min_seconds: float  # least timed seconds per row (whole passes over the texts)
    warmup_texts: int  # untimed first; a full pass meets every sequence length before the clock starts
    retries: int

    def measure(self, name: str, profile: str | None, device: str, batch: int, embed_texts) -> InProcessResult:
        embed_texts(self.texts[: self.warmup_texts])
        timing = quietest(lambda: time_passes(lambda: embed_texts(self.texts), self.min_seconds), self.retries)
        rate = timing.passes / timing.elapsed
        return InProcessResult(name, profile, device, batch, rate * len(self.texts), rate * self.tokens,
                               timing.passes, round(timing.elapsed, 3), timing.other_cpu_pct)


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


# --- the service as a subprocess ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class EmbedService:
    """``nimrag serve embed --profile ID`` on a free loopback port; always stopped on leaving the ``with``."""

    def __init__(self, profile_id: str, cache: Path, log_path: Path):
        self.profile_id, self.cache, self.log_path = profile_id, cache, log_path
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "EmbedService":
        env = {**os.environ, "NIMRAG_EMBED_CACHE_PATH": str(self.cache)}
        cmd = [sys.executable, "-m", "nimrag.cli", "serve", "embed", "--port", str(self.port),
               "--profile", self.profile_id]
        # Its own session: a Ctrl-C reaches only us, and we stop it in order in __exit__.
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT,
                                            start_new_session=True)
        return self

    def __exit__(self, *exc) -> None:
        if self.process and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def wait_ready(self, timeout_s: float) -> float:
        """Seconds until ``/v1/health/ready`` said 200 (503 while the model loads)."""
        started = time.monotonic()
        url = f"http://{HOST}:{self.port}/v1/health/ready"
        while time.monotonic() - started < timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the service exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(url, timeout=2) as response:
                    if response.status == 200:
                        return time.monotonic() - started
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass  # refused while starting, 503 while loading
            time.sleep(0.2)
        raise TimeoutError(f"the service was not ready after {timeout_s:.0f} s:\n{self.log_tail()}")

    def log_tail(self, chars: int = 3000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]


# --- the load generator ---------------------------------------------------------------------------------------
# Raw HTTP/1.1 over asyncio streams: prebuilt request bytes, Content-Length framing, a regex for the token count.
# It runs in this process, apart from the server, and its CPU use is reported per level (cli cpu%) to show that
# the server, not the client, sets the pace.

_PROMPT_TOKENS = re.compile(rb'"prompt_tokens":\s*(\d+)')


@dataclass
class LoadResult:
    profile: str
    clients: int
    seconds: float
    requests: int
    texts_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_samples: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    mean_batch: float | None = None  # texts per engine batch, from the service's metrics
    engine_busy_pct: float | None = None  # share of the window the engine was running a batch


@dataclass
class LevelState:
    """What the clients of one concurrency level share: the measuring window and what landed in it."""
    measure_from: float
    measure_until: float
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)


def build_requests(texts: list[str], model_name: str, port: int, encoding: str) -> list[bytes]:
    head = f"POST /v1/embeddings HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
    requests = []
    for text in texts:
        body = orjson.dumps({"input": text, "model": model_name, "encoding_format": encoding})
        requests.append(f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body)
    return requests


def parse_head(head: bytes) -> tuple[int, int, bool]:
    """(status, content length, whether the server will close the connection) of a response head."""
    lower = head.lower()
    start = lower.find(b"\r\ncontent-length:")
    if start < 0:
        raise ValueError("response without Content-Length")
    start += len(b"\r\ncontent-length:")
    length = int(lower[start: lower.find(b"\r\n", start)])
    return int(head[9:12]), length, b"\r\nconnection: close" in lower


async def one_request(reader, writer, request: bytes) -> tuple[int, bytes, bool]:
    writer.write(request)
    status, length, closing = parse_head(await reader.readuntil(b"\r\n\r\n"))
    return status, await reader.readexactly(length), closing


def record(state: LevelState, status: int, body: bytes, latency: float, done_at: float) -> None:
    match = _PROMPT_TOKENS.search(body, max(0, len(body) - 200)) if status == 200 else None
    if match is None:
        state.errors[f"HTTP {status}: {body[:160].decode(errors='replace')}"] += 1
    elif state.measure_from <= done_at <= state.measure_until:
        state.latencies.append(latency)
        state.tokens += int(match[1])


async def client(port: int, requests: list[bytes], offset: int, state: LevelState) -> None:
    """One keep-alive connection sending request after request until the window closes."""
    clock, i, conn = time.perf_counter, offset, None
    while clock() < state.measure_until:
        try:
            if conn is None:
                conn = await asyncio.open_connection(HOST, port)
            started = clock()
            status, body, closing = await one_request(*conn, requests[i % len(requests)])
            done = clock()
            record(state, status, body, done - started, done)
            i += 1
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            state.errors[f"{type(exc).__name__}: {exc}"[:160]] += 1
            closing = True
            await asyncio.sleep(0.05)  # no hot loop against a dead server
        if closing and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def batcher_totals(port: int) -> dict[str, float]:
    """The batcher's running totals from /v1/metrics: batches, items and engine seconds."""
    reader, writer = await asyncio.open_connection(HOST, port)
    writer.write(f"GET /v1/metrics HTTP/1.1\r\nHost: {HOST}:{port}\r\nConnection: close\r\n\r\n".encode())
    text = (await reader.read()).decode(errors="replace")
    writer.close()
    names = {"batches": "nimrag_batch_size_count", "items": "nimrag_batch_size_sum",
             "engine_s": "nimrag_batch_latency_seconds_sum"}
    found = {key: re.search(rf"^{name} (\S+)$", text, re.MULTILINE) for key, name in names.items()}
    return {key: float(m[1]) if m else 0.0 for key, m in found.items()}


async def window_sampler(service: EmbedService, state: LevelState) -> dict[str, float | None]:
    """Over the measuring window: CPU of server, client (this process) and others; the server's batching."""
    await asyncio.sleep(max(0.0, state.measure_from - time.perf_counter()))
    meter, before = CpuMeter(service.process.pid), await batcher_totals(service.port)
    await asyncio.sleep(max(0.0, state.measure_until - time.perf_counter()))
    cpu, after = meter.read(), await batcher_totals(service.port)
    batches = after["batches"] - before["batches"]
    return {**cpu, "mean_batch": (after["items"] - before["items"]) / batches if batches else None,
            "engine_busy_pct": 100 * (after["engine_s"] - before["engine_s"]) / (state.measure_until -
                                                                                  state.measure_from)}


async def run_level(service: EmbedService, requests: list[bytes], clients: int, warmup_s: float,
                    seconds: float) -> LoadResult:
    now = time.perf_counter()
    state = LevelState(now + warmup_s, now + warmup_s + seconds)
    step = max(1, len(requests) // clients)
    sampler = asyncio.ensure_future(window_sampler(service, state))
    await asyncio.gather(*(client(service.port, requests, c * step, state) for c in range(clients)))
    seen = await sampler
    lat_ms = np.array(state.latencies) * 1000 if state.latencies else np.array([np.nan])
    n = len(state.latencies)
    return LoadResult(service.profile_id, clients, seconds, n, n / seconds, state.tokens / seconds,
                      float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99)),
                      sum(state.errors.values()), dict(state.errors.most_common(5)), seen["server"], seen["own"],
                      seen["others"], seen["mean_batch"], seen["engine_busy_pct"])


def run_async(coro):
    """uvloop when installed: a leaner client loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def bench_http(profile_id: str, model_name: str, texts: list[str], args, log_path: Path) -> list[LoadResult]:
    with EmbedService(profile_id, args.cache, log_path) as service:
        ready_s = service.wait_ready(args.ready_timeout)
        print(f"  {profile_id}: ready after {ready_s:.1f} s on port {service.port}", flush=True)
        requests = build_requests(texts, model_name, service.port, args.encoding)
        results = []
        for clients in args.concurrency:
            result = quietest(lambda: run_async(run_level(service, requests, clients, args.warmup, args.seconds)),
                              args.retries)
            print(f"    {clients:>3} clients: {result.texts_per_s:8.1f} texts/s, p50 {result.p50_ms:.1f} ms, "
                  f"{result.errors} errors", flush=True)
            results.append(result)
        return results


# --- report ---------------------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def print_table(inprocess: list[InProcessResult], http: list[LoadResult]) -> None:
    header = (f"{'mode':<11}{'what':<40}{'clients':>7}{'texts/s':>9}{'tokens/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'errors':>7}{'batch':>6}{'engine%':>8}{'srv cpu%':>9}{'cli cpu%':>9}{'other%':>7}")
    print(header)
    print("-" * len(header))
    for r in inprocess:
        print(f"{'in-process':<11}{r.name + ' (' + r.device + ')':<40}{'-':>7}{r.texts_per_s:>9.1f}"
              f"{r.tokens_per_s:>9.0f}{'-':>8}{'-':>8}{'-':>7}{r.batch_size:>6}{'-':>8}{'-':>9}{'-':>9}"
              f"{noise(r.other_cpu_pct):>7}")
    for r in http:
        print(f"{'http':<11}{r.profile:<40}{r.clients:>7}{r.texts_per_s:>9.1f}{r.tokens_per_s:>9.0f}"
              f"{fmt(r.p50_ms):>8}{fmt(r.p99_ms):>8}{r.errors:>7}{fmt(r.mean_batch):>6}"
              f"{fmt(r.engine_busy_pct, '.0f'):>8}{fmt(r.server_cpu_pct, '.0f'):>9}"
              f"{fmt(r.client_cpu_pct, '.0f'):>9}{noise(r.other_cpu_pct):>7}")
    print("batch: texts per engine batch (mean over the window for http); engine%: share of the window the "
          "service's engine was running; cpu: % of one core.")
    rows = [*inprocess, *http]
    if any((r.other_cpu_pct or 0) > NOISY_PCT for r in rows):
        print(f"! other%: CPU that other processes used meanwhile; rows above {NOISY_PCT:g}% shared the machine "
              "and read low.")
    for r in (r for r in http if r.errors):
        print(f"\nerrors, {r.profile} at {r.clients} clients:")
        for message, count in r.error_samples.items():
            print(f"  {count} x {message}")


def noise(pct: float | None) -> str:
    return fmt(pct, ".0f") + ("!" if (pct or 0) > NOISY_PCT else "")


@dataclass
class Ratio:
    name: str
    value: float
    target: float | None

    @property
    def verdict(self) -> str:
        if self.target is None:
            return ""
        return "PASS" if self.value >= self.target else "MISS"


def best_torch(inprocess: list[InProcessResult], device: str) -> InProcessResult | None:
    candidates = [r for r in inprocess if r.profile is None and r.device == device]
    return max(candidates, key=lambda r: r.texts_per_s, default=None)


def compute_ratios(inprocess: list[InProcessResult], http: list[LoadResult]) -> list[Ratio]:
    ratios: list[Ratio] = []
    torch_cpu = best_torch(inprocess, "cpu")
    cpu_engines = [r for r in inprocess if r.profile is not None and r.device == "cpu"]
    if torch_cpu and cpu_engines:
        best = max(cpu_engines, key=lambda r: r.texts_per_s)
        ratios.append(Ratio(f"best CPU backend in-process ({best.profile}) / in-process torch fp32",
                            best.texts_per_s / torch_cpu.texts_per_s, TARGETS["best_cpu_vs_torch"]))
    for profile in dict.fromkeys(r.profile for r in http):
        levels = sorted((r for r in http if r.profile == profile), key=lambda r: r.clients)
        low, high = levels[0], levels[-1]
        engine = next((r for r in inprocess if r.profile == profile and r.batch_size > 1), None)
        engine_singly = next((r for r in inprocess if r.profile == profile and r.batch_size == 1), None)
        device = engine.device if engine else "cpu"
        torch_ref = best_torch(inprocess, device)
        if torch_ref:
            ratios.append(Ratio(f"{profile}: HTTP@{high.clients} / in-process torch fp32 ({device})",
                                high.texts_per_s / torch_ref.texts_per_s, TARGETS["http_vs_torch"]))
        if high is not low and low.texts_per_s:
            ratios.append(Ratio(f"{profile}: HTTP@{high.clients} / HTTP@{low.clients}",
                                high.texts_per_s / low.texts_per_s, TARGETS["http_scaling"]))
        if engine:
            ratios.append(Ratio(f"{profile}: HTTP@{high.clients} / its engine in-process (service overhead)",
                                high.texts_per_s / engine.texts_per_s, None))
        if engine and engine_singly:
            ratios.append(Ratio(f"{profile}: its engine in-process, batched / one text per call (the most "
                                f"HTTP@{high.clients} / HTTP@{low.clients} can reach here)",
                                engine.texts_per_s / engine_singly.texts_per_s, None))
    return ratios


def print_ratios(ratios: list[Ratio]) -> None:
    print("\nratios (all from this run):")
    width = max((len(r.name) for r in ratios), default=0)
    for r in ratios:
        target = f"target >= {r.target:g}  {r.verdict}" if r.target is not None else "no target"
        print(f"  {r.name:<{width}}  {r.value:6.2f}   {target}")


def write_json(path: Path, meta: dict, inprocess, http, ratios) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "inprocess": [asdict(r) for r in inprocess], "http": [asdict(r) for r in http],
               "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratios]}
    path.write_text(json.dumps(payload, indent=2))


# --- main -----------------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.embed", description=__doc__.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=8.0, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each level")
    p.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="client counts, e.g. 1,8,32")
    p.add_argument("--profiles", help="profiles to serve over HTTP, comma-separated (default: the auto-selected)")
    p.add_argument("--all-profiles", action="store_true", help="serve every compatible profile over HTTP")
    p.add_argument("--texts", type=int, default=1000, help="how many short texts")
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="exported-model cache")
    p.add_argument("--st-batch-sizes", type=int_list, default=[16, 32, 64, 128],
                   help="sentence-transformers batch sizes to try (the best one is the baseline)")
    p.add_argument("--inprocess-seconds", type=float, default=3.0, help="least timed seconds per in-process row")
    p.add_argument("--encoding", choices=["float", "base64"], default="float", help="encoding_format over HTTP")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the service")
    p.add_argument("--retries", type=int, default=2,
                   help=f"times to measure again when other processes took over {NOISY_PCT:g}%% CPU meanwhile")
    p.add_argument("--no-inprocess", action="store_true", help="HTTP only (ratios needing baselines are left out)")
    p.add_argument("--quick", action="store_true", help="smoke run: short levels and in-process timings")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.warmup, args.inprocess_seconds = 2.0, 0.5, 0.5
    args.cache = args.cache.expanduser()
    return args


def http_profiles(args, hw: HardwareInfo) -> list[Profile]:
    """The profiles to serve: --profiles, --all-profiles, or the one the service would pick itself."""
    compatible, incompatible = evaluate(ENCODER_PROFILES, hw)
    if args.all_profiles:
        return compatible
    if not args.profiles:
        return [select_profile(ENCODER_PROFILES, hw, EmbedSettings().profile).profile]
    by_id = {p.id: p for p in compatible}
    why = {p.id: "; ".join(reasons) for p, reasons in incompatible}
    wanted = [x.strip() for x in args.profiles.split(",") if x.strip()]
    missing = [f"{x} ({why.get(x, 'unknown profile')})" for x in wanted if x not in by_id]
    if missing:
        sys.exit(f"cannot serve here: {', '.join(missing)}; compatible: {', '.join(by_id)}")
    return [by_id[x] for x in wanted]


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
    # Both signals must unwind through the ``with`` that stops the service: a plain SIGTERM would skip it, and a
    # shell starting us in the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    compatible, _ = evaluate(ENCODER_PROFILES, hw)
    served = http_profiles(args, hw)
    model = load_model_info(EmbedSettings(cache_path=args.cache))
    tokenizer = TextTokenizer(model.path, model.max_tokens)
    texts, source = load_texts(args.texts)
    tokens = sum(map(len, tokenizer.encode(texts, truncate="END")))
    gpus = ", ".join(g.name for g in hw.gpus) or "no GPU"
    print(f"embedding benchmark: {model.name}; {len(texts)} {source}, {tokens / len(texts):.1f} tokens per text "
          f"on average; {hw.cpu_model} ({hw.physical_cores} cores), {gpus}", flush=True)

    work = Workload(texts, tokens, args.inprocess_seconds, 256 if args.quick else len(texts), args.retries)
    inprocess = []
    if not args.no_inprocess:
        print("in-process baselines:", flush=True)
        inprocess = run_inprocess(args, hw, model, tokenizer, work, compatible, served)
    print("over HTTP:", flush=True)
    http: list[LoadResult] = []
    for profile in served:
        log_path = RESULTS / f"embed-{stamp}-{profile.id}.server.log"
        log_path.parent.mkdir(parents=True, exist_ok=True)
        http += bench_http(profile.id, model.name, texts, args, log_path)

    print()
    print_table(inprocess, http)
    ratios = compute_ratios(inprocess, http)
    print_ratios(ratios)
    meta = {"timestamp": stamp, "model": model.name, "texts": len(texts), "text_source": source,
            "tokens_per_text": tokens / len(texts), "hardware": hw.as_dict(),
            "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    out = RESULTS / f"embed-{stamp}.json"
    write_json(out, meta, inprocess, http, ratios)
    print(f"\nresults: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the service is already stopped by then
        sys.exit(130)
