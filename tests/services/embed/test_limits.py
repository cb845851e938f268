"""Every limit is configurable and answered with its own clear error; API keys are enforced."""

from __future__ import annotations

import concurrent.futures
import socket

import httpx
import pytest

from tests.conftest import start_service

KEY = "test-secret-key"
LIMITS = {
    "NIMRAG_EMBED_API_KEYS": f"other-key,{KEY}",
    "NIMRAG_EMBED_MAX_INPUTS": "8",
    "NIMRAG_EMBED_MAX_CHARS": "500",
    "NIMRAG_EMBED_MAX_TOKENS": "32",
    "NIMRAG_EMBED_MAX_BODY_BYTES": "4096",
    "NIMRAG_EMBED_MAX_QUEUE_ITEMS": "8",
    # A long batch wait holds queued work for a while, so a burst reliably finds the queue full.
    "NIMRAG_EMBED_MAX_BATCH_WAIT_MS": "400",
    "NIM_MODEL_PROFILE": "torch-cpu-fp32",
    "NIM_SERVED_MODEL_NAME": "my-embedder",
    "OTEL_TRACES_EXPORTER": "console",
}


@pytest.fixture(scope="module")
def strict_service(service_tmp):
    svc = start_service("embed", service_tmp, env=LIMITS)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def http(strict_service):
    with httpx.Client(base_url=strict_service.base_url, timeout=60,
                      headers={"Authorization": f"Bearer {KEY}"}) as c:
        yield c


def test_api_key_required_except_for_health(strict_service):
    url = strict_service.base_url
    missing = httpx.post(url + "/v1/embeddings", json={"input": "x"})
    assert missing.status_code == 401 and missing.json()["error"]["type"] == "authentication_error"
    assert missing.headers["www-authenticate"] == "Bearer"
    wrong = httpx.post(url + "/v1/embeddings", json={"input": "x"}, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401
    assert httpx.get(url + "/v1/models").status_code == 401
    assert httpx.get(url + "/v1/health/ready").status_code == 200
    assert httpx.get(url + "/v1/health/live").status_code == 200


def test_openai_sdk_with_the_key_and_nim_env_names(strict_service):
    import openai

    client = openai.OpenAI(base_url=strict_service.base_url + "/v1", api_key=KEY, max_retries=0)
    assert [m.id for m in client.models.list().data] == ["my-embedder"]
    assert len(client.embeddings.create(input="hello", model="my-embedder").data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_service.base_url + "/v1", api_key="bad", max_retries=0).models.list()


def test_pinned_profile_is_reported(http):
    meta = http.get("/v1/metadata").json()
    assert meta["selectedModelProfileId"] == "torch-cpu-fp32" and meta["profilePinned"] is True


@pytest.mark.parametrize("body,status,words", [
    ({"input": ["x"] * 9}, 400, "9 items, more than the limit of 8"),
    ({"input": "y" * 501}, 400, "501 characters, more than the limit of 500"),
    ({"input": "word " * 40}, 400, "more than the model's limit of 32 tokens"),
], ids=["too many inputs", "too many characters", "too many tokens"])
def test_request_limits(http, body, status, words):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status and words in response.json()["error"]["message"], response.text


def test_body_over_the_limit_is_413_by_content_length_and_by_chunks(strict_service, http):
    big = http.post("/v1/embeddings", json={"input": ["z" * 400] * 8, "user": "u" * 2000})
    assert big.status_code == 413 and "4096 bytes" in big.json()["error"]["message"]

    def chunks():
        yield b'{"input": ["'
        for _ in range(10):
            yield b"a" * 1000
        yield b'"]}'

    chunked = http.post("/v1/embeddings", content=chunks())  # no Content-Length: counted as it arrives
    assert chunked.status_code == 413


def test_full_queue_answers_429_with_retry_after(strict_service):
    def post(_):
        return httpx.post(strict_service.base_url + "/v1/embeddings", json={"input": ["q"] * 4},
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=60)

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        responses = list(pool.map(post, range(8)))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) == {200, 429}, statuses
    refused = next(r for r in responses if r.status_code == 429)
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"]["code"] == "queue_full"
    assert post(0).status_code == 200  # and the service recovers once the queue drains


def test_metrics_count_refusals(http):
    metrics = http.get("/v1/metrics").text
    assert 'nimrag_rejected_requests_total{reason="queue_full"}' in metrics
    assert 'nimrag_rejected_requests_total{reason="input_too_long"}' in metrics


def test_requests_are_traced_with_their_request_id(strict_service, http):
    http.post("/v1/embeddings", json={"input": "traced"}, headers={"X-Request-Id": "trace-me-1"})
    log = strict_service.wait_for_log('"nimrag.request_id": "trace-me-1"')
    assert '"name": "POST /v1/embeddings"' in log and '"nimrag.request_id": "trace-me-1"' in log
