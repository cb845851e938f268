"""NIMRAG_LLM_PROMPT_CACHE_MIB on the real llama.cpp engine: the prompt cache stays within the limit, and 0 turns it off.

The engine exposes the cache only in llama.cpp's own log at debug level: ``prompt cache is enabled, size limit: N MiB``
(or ``prompt cache is disabled``) at load, and ``cache state: K prompts, X MiB (limits: N MiB, ...)`` whenever a
request starts and the cache is updated. The answers show its effect: ``usage.prompt_tokens_details.cached_tokens``.
With one sequence slot, a prompt that is not in the slot any more can be reused only from the cache.
"""

from __future__ import annotations

import re
import time

import httpx
import pytest

from tests.conftest import ServiceProcess, start_service

LIMIT_MIB = 2  # SmolLM2-135M's state is ~0.022 MiB a token: three of the prompts below fit, not all six
TOPICS = ["Apples", "Bridges", "Comets", "Deserts", "Engines", "Forests"]
CACHE_STATE = re.compile(r"cache state: (\d+) prompts, ([0-9.]+) MiB \(limits: ([0-9.]+) MiB")


def prompt(topic: str) -> str:
    """~28 tokens (0.64 MiB of state), sharing no prefix with another topic's."""
    return f"{topic} " + " ".join(f"{topic.lower()}{n}" for n in range(12))


def start_llm(service_tmp, cache_mib: int) -> ServiceProcess:
    # DEBUG is what makes llama.cpp log its prompt cache; one slot, so reuse after another prompt needs the cache
    return start_service("llm", service_tmp, env={"NIMRAG_LLM_PROMPT_CACHE_MIB": str(cache_mib),
                                                  "NIMRAG_LLM_MAX_NUM_SEQS": "1", "NIMRAG_LLM_LOG_LEVEL": "DEBUG"})


def complete(svc: ServiceProcess, text: str) -> tuple[int, int]:
    """(prompt tokens, of which reused from earlier work) for one short completion."""
    response = httpx.post(svc.base_url + "/v1/completions", json={"prompt": text, "max_tokens": 2}, timeout=120)
    assert response.status_code == 200, response.text
    usage = response.json()["usage"]
    return usage["prompt_tokens"], usage["prompt_tokens_details"]["cached_tokens"]


def cache_states(svc: ServiceProcess, at_least: int, timeout_s: float = 10) -> list[tuple[int, float, float]]:
    """(prompts, MiB, limit MiB) of every cache update logged, once ``at_least`` are (llama.cpp logs from a thread)."""
    deadline = time.monotonic() + timeout_s
    while len(states := CACHE_STATE.findall(svc.log())) < at_least and time.monotonic() < deadline:
        time.sleep(0.05)
    return [(int(n), float(size), float(limit)) for n, size, limit in states]


@pytest.fixture(scope="module")
def small_cache(service_tmp):
    svc = start_llm(service_tmp, LIMIT_MIB)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def no_cache(service_tmp):
    svc = start_llm(service_tmp, 0)
    yield svc
    svc.stop()


def test_the_cache_reuses_prompts_and_stays_within_its_limit(small_cache):
    assert f"prompt cache is enabled, size limit: {LIMIT_MIB} MiB" in small_cache.log()
    for topic in TOPICS:
        tokens, cached = complete(small_cache, prompt(topic))
        assert cached < tokens // 2  # a new prompt: nothing to reuse
    tokens, cached = complete(small_cache, prompt(TOPICS[-2]))  # the one before last: saved when the last started
    assert cached > tokens // 2
    tokens, cached = complete(small_cache, prompt(TOPICS[0]))  # four prompts later: evicted to stay in bounds
    assert cached < tokens // 2
    states = cache_states(small_cache, at_least=len(TOPICS) + 2)
    assert len(states) >= len(TOPICS) + 2
    assert all(limit == LIMIT_MIB for _, _, limit in states), states
    assert all(size <= LIMIT_MIB for _, size, _ in states), states
    assert max(n for n, _, _ in states) >= 2, states  # it did hold several prompts at once
    assert "removing oldest entry" in small_cache.log()  # and bounded them by evicting


def test_zero_turns_the_cache_off(no_cache):
    assert "prompt cache is disabled" in no_cache.log()
    first, second = prompt(TOPICS[0]), prompt(TOPICS[1])
    complete(no_cache, first)
    complete(no_cache, second)
    tokens, cached = complete(no_cache, first)  # reused with a cache (the test above); recomputed without one
    assert cached < tokens // 2
    assert not CACHE_STATE.search(no_cache.log())
