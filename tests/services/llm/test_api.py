"""The LLM service over real HTTP with real clients: the openai SDK (sync, async, streaming) and LangChain's
ChatNVIDIA, on the bundled SmolLM2-135M-Instruct; every test on each backend (tests/services/llm/conftest.py):
llama.cpp in-process, and llama.cpp in Triton (``nimrag triton serve``) behind the trtllm engine, which skips only
what TensorRT-LLM's interface cannot carry."""

from __future__ import annotations

import asyncio
import json

import httpx
import jsonschema
import openai
import pytest

from nimrag.services.llm.model import DEFAULT_MODEL_NAME
from tests.services.conftest import LLM_SLOTS
from tests.services.llm.conftest import metric, needs_llamacpp

QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def client(api_llm_service):
    return openai.OpenAI(base_url=api_llm_service.base_url + "/v1", api_key="unused", max_retries=0)


def test_ready_only_after_warm_up(api_llm_service):
    # Probes while loading answer 503, then 200 once warmed up. The 503 itself can be missed when the small model
    # is ready before the first probe; tests/services/common/test_serving.py checks the gate without timing.
    statuses = api_llm_service.ready_statuses
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {503}, statuses
    assert "model ready" in api_llm_service.wait_for_log("model ready")


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [DEFAULT_MODEL_NAME]
    assert models[0].model_extra["max_model_len"] == 4096


def test_chat_completion(client):
    reply = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=24,
                                           temperature=0)
    choice = reply.choices[0]
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == DEFAULT_MODEL_NAME and choice.message.role == "assistant"
    assert choice.message.content and choice.finish_reason in ("stop", "length")
    usage = reply.usage
    assert usage.prompt_tokens > 10 and 0 < usage.completion_tokens <= 24
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens


def test_max_tokens_gives_length_and_eos_gives_stop(client):
    capped = client.chat.completions.create(messages=QUESTION, model=DEFAULT_MODEL_NAME, max_completion_tokens=3,
                                            temperature=0)
    assert capped.choices[0].finish_reason == "length" and capped.usage.completion_tokens == 3
    full = client.chat.completions.create(messages=[{"role": "user", "content": "Say hi."}],
                                          model=DEFAULT_MODEL_NAME, max_tokens=200, temperature=0)
    assert full.choices[0].finish_reason == "stop" and full.usage.completion_tokens < 200


def test_stream_with_usage(client):
    ask = {"model": DEFAULT_MODEL_NAME, "messages": QUESTION, "max_tokens": 16, "temperature": 0,
           "extra_body": {"nvext": {"ignore_eos": True}}}
    chunks = list(client.chat.completions.create(**ask, stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 16
    assert all(c.usage is None for c in chunks[:-1])
    # the stream says what the non-streamed answer says
    assert text == client.chat.completions.create(**ask).choices[0].message.content


def test_stream_ends_with_done(api_llm_service):
    with httpx.stream("POST", api_llm_service.base_url + "/v1/chat/completions", timeout=60,
                      json={"messages": QUESTION, "max_tokens": 4, "stream": True}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]" and all(line.startswith("data: ") for line in lines)


def test_n_choices_and_seed_determinism(client):
    def ask(seed):
        return client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=12, n=3,
                                              temperature=1.0, seed=seed, extra_body={"ignore_eos": True})

    first, again, other = ask(7), ask(7), ask(8)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1, 2]
    assert texts == [c.message.content for c in again.choices]  # same seed, same request: same output
    assert texts != [c.message.content for c in other.choices]
    assert len(set(texts)) > 1  # n samples, not one sample n times
    assert first.usage.completion_tokens == 36


def test_stop_sequence(client):
    base = client.completions.create(model=DEFAULT_MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12, temperature=0)
    text = base.choices[0].text
    assert " 6" in text
    stopped = client.completions.create(model=DEFAULT_MODEL_NAME, prompt="1, 2, 3, 4,", max_tokens=12,
                                        temperature=0, stop=[" 6"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].text == text[: text.index(" 6")]


def test_json_schema_output_validates(client, backend):
    needs_llamacpp(backend, "response_format json_schema")
    schema = {"type": "object", "properties": {"city": {"type": "string", "maxLength": 20},
                                               "population": {"type": "integer"}},
              "required": ["city", "population"], "additionalProperties": False}
    reply = client.chat.completions.create(
        model=DEFAULT_MODEL_NAME, max_tokens=60, temperature=0.7, seed=1,
        messages=[{"role": "user", "content": "Give the biggest city in France and its population as JSON."}],
        response_format={"type": "json_schema", "json_schema": {"name": "city", "schema": schema}})
    jsonschema.validate(json.loads(reply.choices[0].message.content), schema)


def test_json_object_and_guided_choice(client, backend):
    needs_llamacpp(backend, "response_format json_object, guided_choice")
    obj = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=60,
                                         response_format={"type": "json_object"}, seed=2)
    assert isinstance(json.loads(obj.choices[0].message.content), dict)
    picked = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=10,
                                            extra_body={"nvext": {"guided_choice": ["Paris", "Lyon", "Nice"]}})
    assert picked.choices[0].message.content in ("Paris", "Lyon", "Nice")


def test_logprobs(client, backend):
    needs_llamacpp(backend, "top_logprobs")
    reply = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=5,
                                           temperature=0, logprobs=True, top_logprobs=3)
    entries = reply.choices[0].logprobs.content
    assert len(entries) == 5
    for e in entries:
        assert len(e.top_logprobs) == 3 and e.logprob <= 0
        assert e.logprob == pytest.approx(max(t.logprob for t in e.top_logprobs))  # greedy took the best
    assert "".join(e.token for e in entries) == reply.choices[0].message.content


def test_completions_echo_logprobs_and_batch(client, backend):
    needs_llamacpp(backend, "logprobs with alternatives")
    reply = client.completions.create(model=DEFAULT_MODEL_NAME, prompt=["The sky is", "Grass is"], max_tokens=4,
                                      temperature=0, echo=True, logprobs=2)
    assert [c.index for c in reply.choices] == [0, 1]
    assert reply.choices[0].text.startswith("The sky is") and reply.choices[1].text.startswith("Grass is")
    lp = reply.choices[0].logprobs
    assert len(lp.tokens) == 4 and lp.text_offset[0] == len("The sky is")
    assert all(len(top) == 2 for top in lp.top_logprobs)


def test_top_k_at_top_level_and_logit_bias(client, backend):
    ask = {"model": DEFAULT_MODEL_NAME, "prompt": "The capital of France is", "max_tokens": 3, "temperature": 0}
    greedy = client.completions.create(**ask).choices[0].text
    # NIM's top_k at the top level: top-1 sampling at temperature 1 is greedy decoding
    assert client.completions.create(**{**ask, "temperature": 1.0}, extra_body={"top_k": 1}).choices[0].text \
        == greedy
    needs_llamacpp(backend, "logit_bias")
    # +100 on one token id makes it win every step
    forced = client.completions.create(**ask, logit_bias={"42": 100}, logprobs=0).choices[0]
    assert len(set(forced.logprobs.tokens)) == 1 and forced.text != greedy


async def _async_chat(base_url: str) -> list[str]:
    client = openai.AsyncOpenAI(base_url=base_url + "/v1", api_key="unused", max_retries=0)
    replies = await asyncio.gather(*[
        client.chat.completions.create(model=DEFAULT_MODEL_NAME, max_tokens=8, temperature=0,
                                       messages=[{"role": "user", "content": f"Count to {i}."}])
        for i in range(6)])
    stream = await client.chat.completions.create(model=DEFAULT_MODEL_NAME, max_tokens=8, temperature=0,
                                                  messages=QUESTION, stream=True)
    pieces = [c.choices[0].delta.content or "" async for c in stream if c.choices]
    await client.close()
    return [r.choices[0].message.content for r in replies] + ["".join(pieces)]


def test_async_client_concurrent(api_llm_service):
    answers = asyncio.run(_async_chat(api_llm_service.base_url))
    assert len(answers) == 7 and all(answers)
    assert metric(api_llm_service.base_url, "num_requests_running") == 0


def test_langchain_chat_nvidia(api_llm_service):
    from langchain_nvidia_ai_endpoints import ChatNVIDIA

    llm = ChatNVIDIA(base_url=api_llm_service.base_url + "/v1", model=DEFAULT_MODEL_NAME, max_tokens=16,
                     temperature=0.01)
    answer = llm.invoke("What is the capital of France?")
    assert answer.content
    pieces = [chunk.content for chunk in llm.stream("Name a colour.")]
    assert len(pieces) > 1 and "".join(pieces)


def test_nim_metrics(api_llm_service, client):
    client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=4)
    url = api_llm_service.base_url
    for name in ("prompt_tokens_total", "generation_tokens_total", "request_success_total",
                 "time_to_first_token_seconds_count", "time_per_output_token_seconds_count",
                 "e2e_request_latency_seconds_count"):
        assert metric(url, name) > 0, name
    assert metric(url, "num_requests_running") == 0 and metric(url, "num_requests_waiting") == 0


def test_metadata_names_engine_and_profile(api_llm_service, backend):
    meta = httpx.get(api_llm_service.base_url + "/v1/metadata").json()
    if backend == "triton":  # slots: the Triton model's max_batch_size, nimrag triton serve's llama.cpp slots
        assert meta["selectedModelProfileId"] == "trtllm-triton-tp1-throughput"
        assert meta["engine"] == "trtllm" and meta["engineInfo"]["slots"] == LLM_SLOTS
    else:
        assert meta["selectedModelProfileId"] == "llamacpp-gguf-tp1-throughput"
        assert meta["engine"] == "llamacpp" and meta["engineInfo"]["slots"] == 8
    assert meta["engineInfo"]["context_length"] == 4096 and meta["modelFormat"] == "gguf"


def test_tokenize_counts_what_chat_counts(api_llm_service, client):
    url = api_llm_service.base_url
    counted = httpx.post(url + "/tokenize", json={"messages": QUESTION}).json()
    reply = client.chat.completions.create(model=DEFAULT_MODEL_NAME, messages=QUESTION, max_tokens=1)
    assert counted["count"] == reply.usage.prompt_tokens == len(counted["tokens"])
    assert counted["max_model_len"] == 4096
    assert httpx.post(url + "/tokenize", json={"prompt": "Hello world"}).json()["count"] == 2
    assert httpx.post(url + "/tokenize", json={}).status_code == 422
