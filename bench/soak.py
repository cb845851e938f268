"""Resident memory under a long, varied load: does it plateau, and does it come back once the load stops?

    python -m bench.soak                                   # embed, rerank, llm; the bound off, then on
    python -m bench.soak --services embed --seconds 60 --clients 16
    python -m bench.soak --quick                           # smoke run

For each service and each setting of the memory bound (``NIMRAG_<SERVICE>_MEMORY_BOUND``, see
services/common/memory.py; off, the LLM also gets llama.cpp's 8 GiB prompt cache, ``NIMRAG_LLM_PROMPT_CACHE_MIB``
8192, instead of the service's 256 MiB), in the same run: ``nimrag serve SERVICE`` as its own process on a free
loopback port; once ready, ``--rounds`` rounds of load (``--seconds`` in all) each followed by ``--idle`` seconds
without any (longer than two of the bound's 10 s looks, so an idle look always comes).
``--clients`` keep-alive connections send requests back to back, each drawn at random from the service's mix:
mixed sizes (one short text up to 64 texts of up to 300 words; 1 to 40 passages; prompts of 10 to 600 words
answered with 4 to 32 tokens), both endpoints where a service has two, and about one in ten a bad request that
must get a 4xx (malformed JSON, an unknown model, a text too long, limits). A good request answered other than
200 (or 429, shed by the service's overload limits, counted apart), or a bad one other than 4xx, counts as
unexpected and is printed.

Memory is the process's resident set from /proc/<pid>/status: ``before`` is VmRSS once ready (and a few seconds
settled), ``peak`` is VmHWM reset at that point (through /proc/<pid>/clear_refs; the largest VmRSS sampled every
0.2 s where that cannot be reset), ``after`` is VmRSS at the end of the last idle period; per round, VmRSS when
its load stops and at the end of its idle period shows whether it plateaus. Results go to ``bench/results/``.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import orjson

from bench.common import (
    HOST,
    RESULTS,
    Service,
    args_as_json,
    machine_line,
    one_request,
    post_request,
    process_cpu_seconds,
    run_async,
    run_main,
)
from bench.llm import source_texts
from nimrag.services.common.hardware import probe
from nimrag.services.common.memory import MIB, resident_bytes
from nimrag.services.common.settings import default_cache_path

SERVICES = ("embed", "rerank", "llm")
BAD_SHARE = 0.1
# With the bound off the LLM also keeps llama.cpp's own prompt-cache limit (8 GiB), as before the bound.
UNBOUNDED_ENV = {"llm": {"NIMRAG_LLM_PROMPT_CACHE_MIB": "8192"}}


# --- the request mix ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Mix:
    """Prebuilt requests and the items (texts, passages, completions) each asks for: 0 for a bad one (a 4xx
    expected), more for a good one (a 200 expected)."""
    requests: list[bytes]
    items: list[int]


def words(rng: random.Random, texts: list[str], low: int, high: int) -> str:
    """A run of ``low``..``high`` words from a random text (fewer when the text is shorter)."""
    text = rng.choice(texts).split()
    n = rng.randint(low, high)
    start = rng.randint(0, max(0, len(text) - n))
    return " ".join(text[start:start + n])


def too_long(rng: random.Random, texts: list[str]) -> str:
    """Over 1,200 words: more tokens than any bundled encoder takes (refused under truncate NONE)."""
    chosen = []
    while sum(len(t.split()) for t in chosen) < 1200:
        chosen.append(rng.choice(texts))
    return " ".join(chosen)


def common_bad(rng: random.Random, path: str, body: dict) -> tuple[str, bytes]:
    """Bad in any service: malformed JSON, an unknown model, or a body that is not an object."""
    return path, rng.choice([b'{"model": ', orjson.dumps({**body, "model": "no-such-model"}), b"[1, 2, 3]"])


def bad_one(choices: list[tuple[str, bytes]], rng: random.Random) -> tuple[str, bytes, int]:
    return *rng.choice(choices), 0


def embed_request(rng: random.Random, texts: list[str], bad: bool) -> tuple[str, bytes, int]:
    many = [words(rng, texts, 5, 300) for _ in range(rng.choice([1, 2, 4, 8, 16, 32, 64]))]
    body = {"input": many if len(many) > 1 or rng.random() < 0.5 else many[0], "input_type": rng.choice(
        ["query", "passage"]), "truncate": "END", "encoding_format": rng.choice(["float", "base64"])}
    if not bad:
        return "/v1/embeddings", orjson.dumps(body), len(many)
    return bad_one([
        common_bad(rng, "/v1/embeddings", body),
        ("/v1/embeddings", orjson.dumps({**body, "input": []})),
        ("/v1/embeddings", orjson.dumps({**body, "input": ["fine", 123]})),
        ("/v1/embeddings", orjson.dumps({**body, "input": too_long(rng, texts), "truncate": "NONE"})),
    ], rng)


def rerank_request(rng: random.Random, texts: list[str], bad: bool) -> tuple[str, bytes, int]:
    query = words(rng, texts, 4, 30)
    passages = [words(rng, texts, 20, 250) for _ in range(rng.randint(1, 40))]
    ranking = {"query": {"text": query}, "passages": [{"text": p} for p in passages], "truncate": "END"}
    rerank = {"query": query, "documents": passages, "top_n": rng.randint(1, 10)}
    path, body = rng.choice([("/v1/ranking", ranking), ("/v1/rerank", rerank)])
    if not bad:
        return path, orjson.dumps(body), len(passages)
    return bad_one([
        common_bad(rng, "/v1/ranking", ranking),
        ("/v1/ranking", orjson.dumps({**ranking, "passages": []})),
        ("/v1/ranking", orjson.dumps({"passages": ranking["passages"]})),
        ("/v1/ranking", orjson.dumps({**ranking, "passages": [{"text": too_long(rng, texts)}],
                                      "truncate": "NONE"})),
    ], rng)


def llm_request(rng: random.Random, texts: list[str], bad: bool) -> tuple[str, bytes, int]:
    prompt = words(rng, texts, 10, 600)
    sampling = {"max_tokens": rng.randint(4, 32), "temperature": rng.choice([0.0, 0.7, 1.0]),
                "seed": rng.randint(0, 1000)}
    chat = {"messages": [{"role": "system", "content": "Answer from the context."},
                         {"role": "user", "content": f"Context: {prompt}\n\nWhat does it say?"}], **sampling}
    completion = {"prompt": prompt, **sampling}
    path, body = rng.choice([("/v1/chat/completions", chat), ("/v1/completions", completion)])
    if not bad:
        return path, orjson.dumps(body), 1
    return bad_one([
        common_bad(rng, "/v1/chat/completions", chat),
        ("/v1/chat/completions", orjson.dumps({**chat, "messages": []})),
        ("/v1/chat/completions", orjson.dumps({**chat, "n": 1000})),
        ("/v1/completions", orjson.dumps({**completion, "max_tokens": 10_000_000})),
    ], rng)


BUILDERS: dict[str, Callable[[random.Random, list[str], bool], tuple[str, bytes, int]]] = {
    "embed": embed_request, "rerank": rerank_request, "llm": llm_request}


def build_mix(service: str, texts: list[str], port: int, n: int, seed: int) -> Mix:
    rng = random.Random(seed)
    built = [BUILDERS[service](rng, texts, rng.random() < BAD_SHARE) for _ in range(n)]
    return Mix([post_request(port, path, body) for path, body, _ in built], [items for *_, items in built])


# --- load and memory ------------------------------------------------------------------------------------------

@dataclass
class Tally:
    served: int = 0  # good requests answered 200
    served_items: int = 0  # what they asked for: texts, passages, completions
    refused: int = 0  # bad requests answered 4xx, as they must be
    shed: int = 0  # good requests refused with 429 (the service's overload limits)
    unexpected: Counter = field(default_factory=Counter)

    def count(self, items: int, status: int, body: bytes) -> None:
        good = items > 0
        if good and status == 200:
            self.served += 1
            self.served_items += items
        elif good and status == 429:
            self.shed += 1
        elif not good and 400 <= status < 500:
            self.refused += 1
        else:
            self.unexpected[f"{'good' if good else 'bad'} -> {status}: {body[:120].decode(errors='replace')}"] += 1


async def soak_client(port: int, mix: Mix, rng: random.Random, until: float, tally: Tally) -> None:
    conn = None
    while time.monotonic() < until:
        i = rng.randrange(len(mix.requests))
        try:
            if conn is None:
                conn = await asyncio.open_connection(HOST, port)
            status, body, closing = await one_request(*conn, mix.requests[i])
            tally.count(mix.items[i], status, body)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError) as exc:
            tally.unexpected[f"{type(exc).__name__}: {exc}"[:160]] += 1
            closing = True
            await asyncio.sleep(0.05)
        if closing and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def drive(port: int, mix: Mix, clients: int, seconds: float, seed: int, tally: Tally) -> None:
    until = time.monotonic() + seconds
    await asyncio.gather(*(soak_client(port, mix, random.Random(seed + c), until, tally) for c in range(clients)))


class RssSampler(threading.Thread):
    """VmRSS of one process every ``period_s``, in a thread of its own (the load's loop may be busy)."""

    def __init__(self, pid: int, period_s: float = 0.2):
        super().__init__(daemon=True)
        self.pid, self.period_s, self.peak = pid, period_s, 0
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.wait(self.period_s):
            self.peak = max(self.peak, resident_bytes(self.pid) or 0)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its VmRSS now (Linux: 5 into clear_refs); False where that is refused."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        return False
    return True


@dataclass
class SoakResult:
    service: str
    bound: bool
    before_mib: float
    peak_mib: float
    after_mib: float
    rounds: list[dict]
    served: int
    refused: int
    shed: int
    served_per_s: float  # good requests answered 200, per second of load
    cpu_ms_per_item: float  # the service's CPU time under load over the items it served (texts, passages, ...)
    unexpected: dict[str, int]
    peak_source: str

    @property
    def after_ratio(self) -> float:
        return self.after_mib / self.before_mib

    @property
    def peak_ratio(self) -> float:
        return self.peak_mib / self.before_mib


def mib(value: int | None) -> float:
    return round((value or 0) / MIB, 1)


@dataclass
class Rounds:
    rounds: list[dict] = field(default_factory=list)  # per round: VmRSS when its load stopped, after its idle, MiB
    load_s: float = 0.0  # seconds under load, all rounds
    server_cpu_s: float = 0.0  # the service's CPU seconds meanwhile


def run_rounds(service: Service, mix: Mix, args, tally: Tally) -> Rounds:
    """``args.rounds`` times: load for a share of ``args.seconds``, then ``args.idle`` seconds of nothing."""
    pid, out = service.process.pid, Rounds()
    for r in range(args.rounds):
        started, cpu = time.monotonic(), process_cpu_seconds(pid)
        run_async(drive(service.port, mix, args.clients, args.seconds / args.rounds, args.seed + 100 * r, tally))
        loaded = resident_bytes(pid)
        out.load_s += time.monotonic() - started
        out.server_cpu_s += (process_cpu_seconds(pid) or 0) - (cpu or 0)
        time.sleep(args.idle)
        out.rounds.append({"load_end_mib": mib(loaded), "after_idle_mib": mib(resident_bytes(pid))})
        print(f"    round {r + 1}: {mib(loaded):7.1f} MiB when the load stopped, "
              f"{out.rounds[-1]['after_idle_mib']:7.1f} MiB after {args.idle:g} s idle", flush=True)
    return out


def soak(service_name: str, bound: bool, texts: list[str], args, log_path: Path) -> SoakResult:
    env = {f"NIMRAG_{service_name.upper()}_MEMORY_BOUND": "true" if bound else "false",
           **({} if bound else UNBOUNDED_ENV.get(service_name, {}))}
    with Service(service_name, f"{service_name} bound {'on' if bound else 'off'}", [], args.cache, log_path,
                 env) as service:
        service.wait_ready(args.ready_timeout)
        pid = service.process.pid
        mix = build_mix(service_name, texts, service.port, args.requests, args.seed)
        time.sleep(args.settle)
        before = resident_bytes(pid)
        exact_peak = reset_peak(pid)
        sampler = RssSampler(pid)
        sampler.start()
        tally = Tally()
        done = run_rounds(service, mix, args, tally)
        sampler.done.set()
        after = resident_bytes(pid)
        peak = max(resident_bytes(pid, "VmHWM") or 0, sampler.peak) if exact_peak else sampler.peak
    return SoakResult(service_name, bound, mib(before), mib(peak), mib(after), done.rounds, tally.served,
                      tally.refused, tally.shed, round(tally.served / done.load_s, 2),
                      round(1000 * done.server_cpu_s / max(1, tally.served_items), 1),
                      dict(tally.unexpected.most_common(5)), "VmHWM" if exact_peak else "sampled VmRSS")


# --- report ---------------------------------------------------------------------------------------------------

def print_report(results: list[SoakResult]) -> None:
    header = (f"{'service':<8}{'bound':>6}{'before MiB':>12}{'peak MiB':>10}{'after MiB':>11}{'after/before':>14}"
              f"{'peak/before':>13}{'200/s':>7}{'4xx':>5}{'429':>5}{'other':>6}{'cpu ms':>8}   after each idle, MiB")
    print("\n" + header + "\n" + "-" * len(header))
    for r in results:
        idle = " ".join(f"{x['after_idle_mib']:.0f}" for x in r.rounds)
        print(f"{r.service:<8}{'on' if r.bound else 'off':>6}{r.before_mib:>12.1f}{r.peak_mib:>10.1f}"
              f"{r.after_mib:>11.1f}{r.after_ratio:>14.3f}{r.peak_ratio:>13.3f}{r.served_per_s:>7.2f}"
              f"{r.refused:>5}{r.shed:>5}{sum(r.unexpected.values()):>6}{r.cpu_ms_per_item:>8.1f}   {idle}")
    print("200/s: good requests answered per second of load; 4xx: bad requests refused, as they must be; 429: good "
          "requests shed by the overload limits; other: anything else (printed below); cpu ms: the service's CPU "
          "time under load per item served (a text, a passage, a completion).")
    for r in (r for r in results if r.unexpected):
        print(f"\nunexpected answers, {r.service} bound {'on' if r.bound else 'off'}:")
        for message, count in r.unexpected.items():
            print(f"  {count} x {message}")
    print("\nratios (all from this run), bound on / bound off:")
    for name in dict.fromkeys(r.service for r in results):
        off, on = (next((r for r in results if r.service == name and r.bound is b), None) for b in (False, True))
        if off and on:
            print(f"  {name:<8} growth after (after-before) {on.after_mib - on.before_mib:+.1f} / "
                  f"{off.after_mib - off.before_mib:+.1f} MiB; after {on.after_mib / off.after_mib:.3f}; "
                  f"peak {on.peak_mib / off.peak_mib:.3f}; 200/s {on.served_per_s / off.served_per_s:.3f}; "
                  f"cpu ms per item {on.cpu_ms_per_item / off.cpu_ms_per_item:.3f}")


def write_json(stamp: str, meta: dict, results: list[SoakResult]) -> Path:
    path = RESULTS / f"soak-{stamp}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**asdict(r), "after_over_before": r.after_ratio, "peak_over_before": r.peak_ratio} for r in results]
    path.write_text(orjson.dumps({"meta": meta, "results": rows}, option=orjson.OPT_INDENT_2).decode())
    return path


# --- main -----------------------------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--services", default=",".join(SERVICES), help="comma-separated, of embed,rerank,llm")
    p.add_argument("--bound", default="off,on", help="the bound's settings to measure, in order: off,on / on / off")
    p.add_argument("--seconds", type=float, default=90.0, help="seconds of load per service and setting, in all")
    p.add_argument("--rounds", type=int, default=3, help="load rounds, each followed by an idle period")
    p.add_argument("--idle", type=float, default=25.0, help="idle seconds after each round")
    p.add_argument("--clients", type=int, default=8, help="concurrent keep-alive connections")
    p.add_argument("--requests", type=int, default=4000, help="distinct prebuilt requests per service")
    p.add_argument("--settle", type=float, default=3.0, help="seconds between ready and the 'before' figure")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cache", type=Path, default=default_cache_path(), help="exported-model cache")
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for a service")
    p.add_argument("--quick", action="store_true", help="smoke run: 2 rounds of 5 s, 22 s idle, 4 clients")
    args = p.parse_args(argv)
    if args.quick:
        args.seconds, args.rounds, args.idle, args.clients, args.requests = 10.0, 2, 22.0, 4, 200
    args.services = [s.strip() for s in args.services.split(",") if s.strip()]
    args.bound = [{"off": False, "on": True}[b.strip()] for b in args.bound.split(",") if b.strip()]
    if unknown := set(args.services) - set(SERVICES):
        p.error(f"unknown services: {', '.join(sorted(unknown))}")
    args.cache = args.cache.expanduser()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    hw = probe()
    texts, source = source_texts(2000, 40)
    print(f"soak benchmark: {', '.join(args.services)}; {args.seconds:g} s of load in {args.rounds} rounds, "
          f"{args.idle:g} s idle after each, {args.clients} clients; {source}; {machine_line(hw)}", flush=True)
    results = []
    for name in args.services:
        for bound in args.bound:
            print(f"  {name}, memory bound {'on' if bound else 'off'}:", flush=True)
            log_path = RESULTS / f"soak-{stamp}-{name}-{len(results)}-{'on' if bound else 'off'}.server.log"
            results.append(soak(name, bound, texts, args, log_path))
    print_report(results)
    meta = {"timestamp": stamp, "machine": machine_line(hw), "texts": source, "hardware": hw.as_dict(),
            "args": args_as_json(args)}
    print(f"\nresults: {write_json(stamp, meta, results).relative_to(RESULTS.parent.parent)}")
    return 0


if __name__ == "__main__":
    run_main(main)
