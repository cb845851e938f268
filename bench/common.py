"""What the throughput benchmarks share: CPU metering, in-process timing, the service as a subprocess, a lean
raw-HTTP load generator, and the table, ratios and JSON they report.

Rates are counted in ``items`` (texts for embeddings, query-passage pairs for reranking); each benchmark names
its unit when printing and writing results.
"""

from __future__ import annotations

import argparse
import asyncio
import gzip
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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.profiles import Profile, evaluate, select_profile
from nimrag.services.common.settings import default_cache_path

REPO = Path(__file__).resolve().parent.parent
SCIFACT = REPO.parent / "shared" / "eval" / "scifact"
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
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

def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file, gzipped or not; none when it is missing."""
    if not path.is_file():
        return []
    with (gzip.open(path, "rt", encoding="utf-8") if path.suffix == ".gz" else path.open(encoding="utf-8")) as f:
        return [json.loads(line) for line in f if line.strip()]


def generated_texts(n: int, min_words: int = 6, max_words: int = 24, seed: int = 0) -> list[str]:
    """Sentences of biomedical-sounding words, for when the SciFact data is missing."""
    rng = random.Random(seed)
    words = ("protein cell gene expression tumour receptor patients therapy increases reduces risk mice "
             "binding pathway mutation levels response signalling clinical trial associated with the of in").split()
    return [" ".join(rng.choice(words) for _ in range(rng.randint(min_words, max_words))).capitalize() + "."
            for _ in range(n)]


# --- in-process timing ----------------------------------------------------------------------------------------

@dataclass
class InProcessResult:
    name: str
    profile: str | None  # None for a library baseline (sentence-transformers)
    device: str
    batch_size: int
    items_per_s: float
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
    """Repeat whole passes over the inputs until ``min_seconds`` have gone by."""
    passes, started, meter = 0, time.perf_counter(), CpuMeter()
    while True:
        one_pass()
        passes += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return Timing(passes, elapsed, meter.read()["others"])


@dataclass(frozen=True)
class Workload:
    """The inputs every in-process row processes (texts, or rerank requests), and how each row is timed."""
    inputs: list
    items: int  # what the rate counts, over all inputs: texts, or query-passage pairs
    tokens: int  # over all inputs, counted as the service counts them
    min_seconds: float  # least timed seconds per row (whole passes over the inputs)
    warmup_inputs: int  # processed untimed first
    retries: int

    def measure(self, name: str, profile: str | None, device: str, batch: int, process) -> InProcessResult:
        """Time ``process(inputs)``, the work under test, in whole passes over all inputs."""
        process(self.inputs[: self.warmup_inputs])
        timing = quietest(lambda: time_passes(lambda: process(self.inputs), self.min_seconds), self.retries)
        rate = timing.passes / timing.elapsed
        return InProcessResult(name, profile, device, batch, rate * self.items, rate * self.tokens,
                               timing.passes, round(timing.elapsed, 3), timing.other_cpu_pct)


# --- the service as a subprocess ------------------------------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


class Service:
    """``nimrag serve SERVICE OPTIONS`` on a free loopback port; always stopped on leaving the ``with``."""

    def __init__(self, service: str, label: str, options: list[str], cache: Path, log_path: Path,
                 env: dict[str, str] | None = None):
        self.service, self.label, self.options = service, label, options
        self.cache, self.log_path, self.env = cache, log_path, env or {}
        self.port = free_port()
        self.process: subprocess.Popen | None = None

    def __enter__(self) -> "Service":
        env = {**os.environ, f"NIMRAG_{self.service.upper()}_CACHE_PATH": str(self.cache), **self.env}
        cmd = [sys.executable, "-m", "nimrag.cli", "serve", self.service, "--port", str(self.port), *self.options]
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
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
# Raw HTTP/1.1 over asyncio streams: prebuilt request bytes, Content-Length framing, a cheap check of each reply.
# It runs in this process, apart from the server, and its CPU use is reported per level (cli cpu%) to show that
# the server, not the client, sets the pace.

@dataclass(frozen=True)
class HttpLoad:
    """Prebuilt requests, and how to read a 200 reply: ``reply_tokens(i, body)`` is the token count that a good
    reply to request ``i`` stands for, None when the reply is not what was asked for."""
    requests: list[bytes]
    items_per_request: int
    reply_tokens: Callable[[int, bytes], int | None]


@dataclass
class LoadResult:
    label: str  # what was served
    clients: int
    seconds: float
    requests: int
    items_per_s: float
    tokens_per_s: float
    p50_ms: float
    p99_ms: float
    errors: int
    error_samples: dict[str, int] = field(default_factory=dict)
    server_cpu_pct: float | None = None
    client_cpu_pct: float | None = None
    other_cpu_pct: float | None = None
    mean_batch: float | None = None  # items per engine batch, from the service's metrics
    engine_busy_pct: float | None = None  # share of the window the engine was running a batch


@dataclass
class LevelState:
    """What the clients of one concurrency level share: the measuring window and what landed in it.

    No request is sent after ``measure_until``. With ``drain`` the window instead runs on to the last answer and
    counts every answer: where the server answers a round of requests at once, seconds apart, a fixed window
    would count whole rounds or none."""
    measure_from: float
    measure_until: float
    drain: bool = False
    last_done: float = 0.0
    latencies: list[float] = field(default_factory=list)
    tokens: int = 0
    errors: Counter = field(default_factory=Counter)

    def counts(self, done_at: float) -> bool:
        return self.measure_from <= done_at and (self.drain or done_at <= self.measure_until)

    @property
    def window_end(self) -> float:
        return max(self.last_done, self.measure_from) if self.drain else self.measure_until


def post_request(port: int, path: str, body: bytes) -> bytes:
    head = f"POST {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nContent-Type: application/json\r\n"
    return f"{head}Content-Length: {len(body)}\r\n\r\n".encode() + body


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


def record(state: LevelState, status: int, body: bytes, tokens: int | None, latency: float, done_at: float) -> None:
    if tokens is None:
        state.errors[f"HTTP {status}: {body[:160].decode(errors='replace')}"] += 1
    elif state.counts(done_at):
        state.latencies.append(latency)
        state.tokens += tokens
        state.last_done = max(state.last_done, done_at)


async def client(port: int, load: HttpLoad, offset: int, state: LevelState) -> None:
    """One keep-alive connection sending request after request until the window closes."""
    clock, i, conn, n = time.perf_counter, offset, None, len(load.requests)
    while clock() < state.measure_until:
        try:
            if conn is None:
                conn = await asyncio.open_connection(HOST, port)
            started = clock()
            status, body, closing = await one_request(*conn, load.requests[i % n])
            done = clock()
            record(state, status, body, load.reply_tokens(i % n, body) if status == 200 else None,
                   done - started, done)
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


async def window_sampler(service: Service, state: LevelState, clients_done: asyncio.Event) -> dict[str, float | None]:
    """Over the measuring window: CPU of server, client (this process) and others; the server's batching."""
    await asyncio.sleep(max(0.0, state.measure_from - time.perf_counter()))
    meter, before = CpuMeter(service.process.pid), await batcher_totals(service.port)
    if state.drain:
        await clients_done.wait()
    else:
        await asyncio.sleep(max(0.0, state.measure_until - time.perf_counter()))
    cpu, after = meter.read(), await batcher_totals(service.port)
    batches = after["batches"] - before["batches"]
    window = state.window_end - state.measure_from
    return {**cpu, "mean_batch": (after["items"] - before["items"]) / batches if batches else None,
            "engine_busy_pct": 100 * (after["engine_s"] - before["engine_s"]) / window if window else None}


async def run_level(service: Service, load: HttpLoad, clients: int, warmup_s: float, seconds: float,
                    drain: bool = False) -> LoadResult:
    now = time.perf_counter()
    state = LevelState(now + warmup_s, now + warmup_s + seconds, drain)
    step = max(1, len(load.requests) // clients)
    clients_done = asyncio.Event()
    sampler = asyncio.ensure_future(window_sampler(service, state, clients_done))
    await asyncio.gather(*(client(service.port, load, c * step, state) for c in range(clients)))
    clients_done.set()
    seen = await sampler
    lat_ms = np.array(state.latencies) * 1000 if state.latencies else np.array([np.nan])
    n, window = len(state.latencies), state.window_end - state.measure_from
    per_s = 1 / window if window else 0.0
    return LoadResult(service.label, clients, round(window, 3), n, n * load.items_per_request * per_s,
                      state.tokens * per_s, float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99)),
                      sum(state.errors.values()), dict(state.errors.most_common(5)), seen["server"], seen["own"],
                      seen["others"], seen["mean_batch"], seen["engine_busy_pct"])


def run_async(coro):
    """uvloop when installed: a leaner client loop."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def bench_http(service: Service, build_load: Callable[[int], HttpLoad], args, unit: str,
               drain: bool = False) -> list[LoadResult]:
    """Start the service, then measure each of ``args.concurrency`` (the quietest of a few tries)."""
    with service:
        ready_s = service.wait_ready(args.ready_timeout)
        print(f"  {service.label}: ready after {ready_s:.1f} s on port {service.port}", flush=True)
        load = build_load(service.port)
        if drain:  # a drained level has no warm-up of its own: one unmeasured run first
            run_async(run_level(service, load, 1, 0.0, args.warmup, drain=True))
        results = []
        for clients in args.concurrency:
            warmup = 0.0 if drain else args.warmup
            result = quietest(lambda: run_async(run_level(service, load, clients, warmup, args.seconds, drain)),
                              args.retries)
            print(f"    {clients:>3} clients: {result.items_per_s:8.1f} {unit}/s, p50 {result.p50_ms:.1f} ms, "
                  f"{result.errors} errors", flush=True)
            results.append(result)
        return results


# --- report ---------------------------------------------------------------------------------------------------

def fmt(value: float | None, spec: str = ".1f") -> str:
    return "-" if value is None or value != value else format(value, spec)


def noise(pct: float | None) -> str:
    return fmt(pct, ".0f") + ("!" if (pct or 0) > NOISY_PCT else "")


def table_row(r: InProcessResult | LoadResult) -> str:
    if isinstance(r, InProcessResult):
        return (f"{'in-process':<11}{r.name + ' (' + r.device + ')':<40}{'-':>7}{r.items_per_s:>9.1f}"
                f"{r.tokens_per_s:>9.0f}{'-':>8}{'-':>8}{'-':>7}{r.batch_size:>6}{'-':>8}{'-':>9}{'-':>9}"
                f"{noise(r.other_cpu_pct):>7}")
    return (f"{'http':<11}{r.label:<40}{r.clients:>7}{r.items_per_s:>9.1f}{r.tokens_per_s:>9.0f}"
            f"{fmt(r.p50_ms):>8}{fmt(r.p99_ms):>8}{r.errors:>7}{fmt(r.mean_batch):>6}"
            f"{fmt(r.engine_busy_pct, '.0f'):>8}{fmt(r.server_cpu_pct, '.0f'):>9}"
            f"{fmt(r.client_cpu_pct, '.0f'):>9}{noise(r.other_cpu_pct):>7}")


def print_table(rows: Sequence[InProcessResult | LoadResult], unit: str, batch_note: str) -> None:
    """One line per row, in the order given; ``batch_note`` says what the batch column counts."""
    rate = f"{unit}/s"
    header = (f"{'mode':<11}{'what':<40}{'clients':>7}{rate:>9}{'tokens/s':>9}{'p50 ms':>8}{'p99 ms':>8}"
              f"{'errors':>7}{'batch':>6}{'engine%':>8}{'srv cpu%':>9}{'cli cpu%':>9}{'other%':>7}")
    print(header)
    print("-" * len(header))
    for r in rows:
        print(table_row(r))
    print(f"batch: {batch_note}; engine%: share of the window the service's engine was running; cpu: % of one "
          "core.")
    if any((r.other_cpu_pct or 0) > NOISY_PCT for r in rows):
        print(f"! other%: CPU that other processes used meanwhile; rows above {NOISY_PCT:g}% shared the machine "
              "and read low.")
    for r in (r for r in rows if isinstance(r, LoadResult) and r.errors):
        print(f"\nerrors, {r.label} at {r.clients} clients:")
        for message, count in r.error_samples.items():
            print(f"  {count} x {message}")


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


def levels_by_label(http: list[LoadResult]) -> dict[str, list[LoadResult]]:
    """Each served label's levels, fewest clients first."""
    return {label: sorted((r for r in http if r.label == label), key=lambda r: r.clients)
            for label in dict.fromkeys(r.label for r in http)}


def scaling_ratio(label: str, levels: list[LoadResult], target: float | None) -> list[Ratio]:
    """HTTP at the most clients / at the fewest, where more than one level was measured."""
    low, high = levels[0], levels[-1]
    if high is low or not low.items_per_s:
        return []
    return [Ratio(f"{label}: HTTP@{high.clients} / HTTP@{low.clients}", high.items_per_s / low.items_per_s, target)]


def print_ratios(ratios: list[Ratio]) -> None:
    print("\nratios (all from this run):")
    width = max((len(r.name) for r in ratios), default=0)
    for r in ratios:
        target = f"target >= {r.target:g}  {r.verdict}" if r.target is not None else "no target"
        print(f"  {r.name:<{width}}  {r.value:6.2f}   {target}")


def as_json(row, keys: dict[str, str]) -> dict:
    """A result row as a dict, its fields renamed by ``keys`` (e.g. items_per_s -> texts_per_s)."""
    return {keys.get(k, k): v for k, v in asdict(row).items()}


def write_results(name: str, meta: dict, inprocess: list, http: list, ratios: list[Ratio],
                  keys: dict[str, str]) -> Path:
    """``bench/results/<name>.json``; prints where it went."""
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "inprocess": [as_json(r, keys) for r in inprocess],
               "http": [as_json(r, keys) for r in http],
               "ratios": [{**asdict(r), "verdict": r.verdict} for r in ratios]}
    path.write_text(json.dumps(payload, indent=2))
    print(f"\nresults: {path.relative_to(REPO)}")
    return path


def args_as_json(args: argparse.Namespace) -> dict[str, Any]:
    return {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}


def machine_line(hw: HardwareInfo) -> str:
    gpus = ", ".join(g.name for g in hw.gpus) or "no GPU"
    return f"{hw.cpu_model} ({hw.physical_cores} cores), {gpus}"


# --- command line ---------------------------------------------------------------------------------------------

def int_list(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def benchmark_parser(prog: str, doc: str, seconds: float, warmup: float,
                     inprocess_seconds: float) -> argparse.ArgumentParser:
    """A parser with the options every throughput benchmark takes; defaults are the benchmark's own."""
    p = argparse.ArgumentParser(prog=prog, description=doc.split("\n\n")[0])
    p.add_argument("--seconds", type=float, default=seconds, help="measured seconds per concurrency level")
    p.add_argument("--warmup", type=float, default=warmup, help="unmeasured seconds before each level")
    p.add_argument("--concurrency", type=int_list, default=[1, 8, 32], help="client counts, e.g. 1,8,32")
    p.add_argument("--profiles", help="profiles to serve over HTTP, comma-separated (default: the auto-selected)")
    p.add_argument("--all-profiles", action="store_true", help="serve every compatible profile over HTTP")
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="exported-model cache")
    p.add_argument("--inprocess-seconds", type=float, default=inprocess_seconds,
                   help="least timed seconds per in-process row")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the service")
    p.add_argument("--retries", type=int, default=2,
                   help=f"times to measure again when other processes took over {NOISY_PCT:g}%% CPU meanwhile")
    p.add_argument("--quick", action="store_true", help="smoke run: short levels and in-process timings")
    return p


def served_profiles(args, profiles: list[Profile], hw: HardwareInfo, pinned: str | None) -> list[Profile]:
    """The profiles to serve: --profiles, --all-profiles, or the one the service would pick itself."""
    compatible, incompatible = evaluate(profiles, hw)
    if args.all_profiles:
        return compatible
    if not args.profiles:
        return [select_profile(profiles, hw, pinned).profile]
    by_id = {p.id: p for p in compatible}
    why = {p.id: "; ".join(reasons) for p, reasons in incompatible}
    wanted = [x.strip() for x in args.profiles.split(",") if x.strip()]
    missing = [f"{x} ({why.get(x, 'unknown profile')})" for x in wanted if x not in by_id]
    if missing:
        sys.exit(f"cannot serve here: {', '.join(missing)}; compatible: {', '.join(by_id)}")
    return [by_id[x] for x in wanted]


def run_main(main: Callable[[], int]) -> None:
    """Run a benchmark's ``main`` as the program: offline, and always through the ``with`` that stops a service."""
    # Both signals must unwind through that ``with``: a plain SIGTERM would skip it, and a shell starting us in
    # the background leaves SIGINT ignored.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        os.environ.setdefault(name, "1")
    try:
        sys.exit(main())
    except KeyboardInterrupt:  # the service is already stopped by then
        sys.exit(130)
