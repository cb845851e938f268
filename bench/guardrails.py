"""Answer latency with guardrails on (the default policy) and off, at 1 and 4 users, and what each rail costs.

The whole platform runs as ``nimrag up`` starts it (free ports, a temporary data folder); SciFact abstracts are
ingested (as ``bench.pipeline`` does) and SciFact claims about them asked through ``POST /v1/generate``
(streaming), each user asking its questions back to back. Both sides answer the same questions, round by round:
in each round one side asks a new set of questions, then the other side asks the same ones, the first side
alternating between rounds. llama.cpp reuses the prompt of an earlier request with the same start, so the side
asking second in a round prefills less: alternating gives each side that advantage equally, and each question's
pair of answers gives a paired on/off ratio, which differences between questions do not disturb.

Per answer the pipeline reports what the policy took: ``guardrails.rail_ms``, the time in each rail's checks,
and ``timings_ms`` per rail type. The output rails run on the answer's stream and check each ``chunk_size``
tokens before sending them, so holding those tokens back shows in the time to the first token.

    python -m bench.guardrails               # 2 rounds x 3 questions per user and side, about 10 minutes here
    python -m bench.guardrails --quick       # 1 round x 1
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import httpx
import numpy as np

from bench.common import REPO, RESULTS, fmt, machine_line, run_main
from bench.pipeline import Answer, Bench, ask, load_scifact, percentile, start_platform, upload, write_documents
from bench.retrieval_quality import selected_profile
from nimrag.services.common.hardware import probe

COLLECTION = "scifact"
DOCS = 200
# "on": the pipeline's default policy. Greedy decoding: both sides get the same answer to the same prompt.
SIDES = {"off": {"guardrails": {"enabled": False}, "temperature": 0}, "on": {"temperature": 0}}


async def level(url: str, users: int, questions: list[str], side: str, max_tokens: int) -> list[Answer]:
    """``users`` users, each asking its share of ``questions`` back to back."""
    async with httpx.AsyncClient(base_url=url, timeout=None) as client:
        async def user(mine: list[str]) -> list[Answer]:
            return [await ask(client, question, COLLECTION, max_tokens, SIDES[side]) for question in mine]

        shares = [questions[u::users] for u in range(users)]
        return [a for batch in await asyncio.gather(*(user(mine) for mine in shares)) for a in batch]


def summary(answers: list[Answer]) -> dict:
    good = [a for a in answers if a.error is None]
    rails = [a.guardrails for a in good if a.guardrails]
    stage = lambda key: percentile([r["timings_ms"][key] for r in rails if key in r["timings_ms"]], 50)  # noqa: E731
    return {"answers": len(good), "errors": len(answers) - len(good),
            "blocked": sum(bool(r["blocked_by"]) for r in rails),
            "total_p50_ms": percentile([a.client_total_ms for a in good], 50),
            "ttft_p50_ms": percentile([a.client_ttft_ms for a in good if a.client_ttft_ms is not None], 50),
            "llm_ms_p50": percentile([a.metrics["llm_ms"] for a in good if "llm_ms" in a.metrics], 50),
            "tokens_mean": (sum(a.completion_tokens or 0 for a in good) / len(good)) if good else None,
            "input_rails_p50_ms": stage("input_rails_ms"), "retrieval_rails_p50_ms": stage("retrieval_rails_ms"),
            "rail_p50_ms": {name: percentile([r["rail_ms"][name] for r in rails if name in r["rail_ms"]], 50)
                            for name in sorted({n for r in rails for n in r["rail_ms"]})}}


def paired_ratio(answers: dict[str, list[Answer]], key: str) -> float:
    """The geometric mean over questions of on / off (the same question, answered by each side). Whichever side
    asks second in a round gets its prompt from llama.cpp's cache, 2-3x faster here; with the sides alternating,
    that advantage appears as r and 1/r factors that cancel in a geometric mean (they do not in a median)."""
    ratios = [getattr(on, key) / getattr(off, key) for on, off in zip(answers["on"], answers["off"], strict=True)
              if getattr(on, key) and getattr(off, key)]
    return float(np.exp(np.mean(np.log(ratios)))) if ratios else float("nan")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--rounds", type=int, help="rounds per level (default 2; quick 1)")
    p.add_argument("--per-user", type=int, help="questions per user per side and round (default 3; quick 1)")
    p.add_argument("--max-tokens", type=int, default=64)
    args = p.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 2)
    args.per_user = args.per_user or (1 if args.quick else 3)
    data = load_scifact()
    questions = iter(data.claims_answerable_from(data.docs[:DOCS]))
    stamp, hw = time.strftime("%Y%m%d-%H%M%S"), probe()
    print(f"guardrails benchmark: {machine_line(hw)}", flush=True)
    results: dict[str, dict[str, list[Answer]]] = {}
    with tempfile.TemporaryDirectory(prefix="nimrag-bench-guardrails-") as tmp:
        platform = start_platform(Path(tmp) / "data")
        try:
            platform.start(timeout_s=600)
            profiles = {name: selected_profile(platform.ports[name]) for name in ("embed", "rerank", "llm")}
            bench = Bench(platform, Path(tmp) / "data", args)
            paths = write_documents(data.docs[:DOCS], Path(tmp) / "files")
            bench.create_collection(COLLECTION)
            upload(bench, paths, COLLECTION)
            for side in SIDES:  # warm both paths: the policy is built on first use
                asyncio.run(level(bench.url, 1, [next(questions)], side, args.max_tokens))
            for users in (1, 4):
                runs = results[str(users)] = {side: [] for side in SIDES}
                for number in range(args.rounds):
                    asked = [next(questions) for _ in range(users * args.per_user)]
                    for side in (list(SIDES) if number % 2 == 0 else list(reversed(SIDES))):
                        runs[side] += asyncio.run(level(bench.url, users, asked, side, args.max_tokens))
                print(f"  {users} user(s): done", flush=True)
            bench.close()
        finally:
            platform.stop()
    report = {users: {side: summary(answers) for side, answers in sides.items()} for users, sides in results.items()}
    print(f"\nanswer latency, guardrails off vs on (default policy), p50 ms; profiles {profiles}:")
    print(f"{'users':>5} {'side':>4} {'answers':>7} {'blocked':>7} {'total':>8} {'TTFT':>8} {'llm':>8} {'tokens':>6} "
          f"{'input rails':>11} {'retrieval rail':>14}")
    for users, sides in report.items():
        for side, r in sides.items():
            print(f"{users:>5} {side:>4} {r['answers']:>7} {r['blocked']:>7} {fmt(r['total_p50_ms'], '.0f'):>8} "
                  f"{fmt(r['ttft_p50_ms'], '.0f'):>8} {fmt(r['llm_ms_p50'], '.0f'):>8} "
                  f"{fmt(r['tokens_mean'], '.0f'):>6} "
                  f"{fmt(r['input_rails_p50_ms'], '.1f'):>11} {fmt(r['retrieval_rails_p50_ms'], '.1f'):>14}")
        answers = results[users]
        total, ttft = paired_ratio(answers, "client_total_ms"), paired_ratio(answers, "client_ttft_ms")
        print(f"{users:>5} on/off, geometric mean of paired ratios: total {total:.3f}, TTFT {ttft:.3f}; "
              "time in each rail's checks per answer, p50 ms: " + ", ".join(
                  f"{name} {fmt(ms, '.1f')}" for name, ms in sides["on"]["rail_p50_ms"].items()))
    print("input rails: jailbreak patterns + similarity to known attacks + blocked topics (one embedding of the "
          "question); retrieval rail: injection patterns and similarity on each retrieved chunk; output rails: "
          "checked every chunk_size tokens before sending (in TTFT and total)")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"guardrails-{stamp}.json"
    out.write_text(json.dumps({"meta": {"timestamp": stamp, "args": vars(args), "hardware": hw.as_dict(),
                                        "profiles": profiles}, "summary": report,
                               "answers": {u: {s: [asdict(a) for a in v] for s, v in sides.items()}
                                           for u, sides in results.items()}}, indent=1))
    print(f"results: {out.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    run_main(main)
