"""NIM's per-request token histograms and admitted concurrency on the LLM service, over real HTTP (the bundled
SmolLM2 on llama.cpp): the names, type and ``model_name`` label NIM publishes, at /v1/metrics and /metrics."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from nimrag.services.llm.model import DEFAULT_MODEL_NAME

QUESTION = [{"role": "user", "content": "Name a colour."}]
LABEL = f'model_name="{DEFAULT_MODEL_NAME}"'


@pytest.fixture(scope="module")
def client(llm_service):
    return openai.OpenAI(base_url=llm_service.base_url + "/v1", api_key="unused", max_retries=0)


def exposition(url: str, path: str = "/metrics") -> str:
    reply = httpx.get(url + path)
    assert reply.status_code == 200
    return reply.text


def sample(text: str, name: str, labels: str = LABEL) -> float:
    """One sample's value: ``name{labels}``, the labels exactly as written."""
    found = re.findall(rf"^{re.escape(name)}{{{re.escape(labels)}}} ([0-9.e+-]+)$", text, re.MULTILINE)
    assert len(found) == 1, (name, labels, [line for line in text.splitlines() if line.startswith(name)])
    return float(found[0])


def test_types_and_labels_are_nims(llm_service):
    text = exposition(llm_service.base_url)
    assert "# TYPE request_prompt_tokens histogram" in text
    assert "# TYPE request_generation_tokens histogram" in text
    assert "# TYPE num_request_max gauge" in text
    slots = httpx.get(llm_service.base_url + "/v1/metadata").json()["engineInfo"]["slots"]
    assert sample(text, "num_request_max") == slots  # the sequences the engine admits at once


def test_each_finished_request_is_one_observation_of_its_tokens(llm_service, client):
    url = llm_service.base_url
    before = exposition(url)
    plain = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=5)
    chunks = list(client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=3, n=2,
                                                 stream=True, stream_options={"include_usage": True}))
    streamed = chunks[-1].usage
    after = exposition(url, "/v1/metrics")

    def grew(name: str) -> float:
        return sample(after, name) - sample(before, name)

    assert grew("request_prompt_tokens_count") == 2  # two requests; the streamed one's two choices are one
    assert grew("request_prompt_tokens_sum") == plain.usage.prompt_tokens + streamed.prompt_tokens
    assert grew("request_generation_tokens_count") == 2
    assert grew("request_generation_tokens_sum") == plain.usage.completion_tokens + streamed.completion_tokens
    # Buckets are cumulative, +Inf holds every observation (labels in whichever order the client library writes).
    buckets = [float(value) for labels, value in re.findall(r"^request_generation_tokens_bucket{([^}]*)} (\S+)$",
                                                            after, re.MULTILINE) if LABEL in labels.split(",")]
    assert len(buckets) > 10 and buckets == sorted(buckets)
    assert buckets[-1] == sample(after, "request_generation_tokens_count")

def test_a_refused_request_is_not_observed(llm_service, client):
    url = llm_service.base_url
    before = sample(exposition(url), "request_prompt_tokens_count")
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=10**6)
    assert sample(exposition(url), "request_prompt_tokens_count") == before
