"""A service configured the other way round from the defaults: a model folder given by path, an asymmetric
prompt pair, Matryoshka sizes, a pinned profile, API keys, and small limits, each answered with its own error."""

from __future__ import annotations

import concurrent.futures
import shutil

import httpx
import numpy as np
import pytest

from nimrag.services.embed.model import default_model_path
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
    "NIMRAG_EMBED_QUERY_PREFIX": "query: ",
    "NIMRAG_EMBED_PASSAGE_PREFIX": "passage: ",
    "NIMRAG_EMBED_MATRYOSHKA_DIMS": "64,128",
}


@pytest.fixture(scope="module")
def strict_service(service_tmp, tmp_path_factory):
    folder = tmp_path_factory.mktemp("models") / "my-minilm"
    shutil.copytree(default_model_path(), folder)  # any sentence-transformers folder can be served
    svc = start_service("embed", service_tmp, env={**LIMITS, "NIMRAG_EMBED_MODEL": str(folder)})
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
    assert len(client.embeddings.create(input="hello", model="my-embedder-query").data[0].embedding) == 384
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=strict_service.base_url + "/v1", api_key="bad", max_retries=0).models.list()


def test_pinned_profile_and_model_folder_are_reported(http):
    meta = http.get("/v1/metadata").json()
    assert meta["selectedModelProfileId"] == "torch-cpu-fp32" and meta["profilePinned"] is True
    assert meta["model"]["path"].endswith("my-minilm") and meta["model"]["asymmetric"] is True


def _embed(http, **body) -> np.ndarray:
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == 200, response.text
    return np.array([d["embedding"] for d in response.json()["data"]], dtype=np.float32)


def test_asymmetric_prompts_follow_input_type(http):
    missing = http.post("/v1/embeddings", json={"input": "capital of France"})
    assert missing.status_code == 400 and "input_type is required" in missing.json()["error"]["message"]
    query = _embed(http, input="capital of France", input_type="query")
    passage = _embed(http, input="capital of France", input_type="passage")
    assert not np.allclose(query, passage, atol=1e-3)
    np.testing.assert_allclose(_embed(http, input="capital of France", model="my-embedder-query"), query, atol=1e-5)
    np.testing.assert_allclose(_embed(http, input="capital of France", model="my-embedder-passage"), passage,
                               atol=1e-5)


def test_matryoshka_dimensions_truncate_and_renormalize(http):
    full = _embed(http, input=["one text", "another"], input_type="passage")
    short = _embed(http, input=["one text", "another"], input_type="passage", dimensions=64)
    assert short.shape == (2, 64)
    np.testing.assert_allclose(np.linalg.norm(short, axis=1), 1.0, atol=1e-5)
    expected = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(short, expected, atol=1e-5)
    refused = http.post("/v1/embeddings", json={"input": "x", "input_type": "query", "dimensions": 100})
    assert refused.status_code == 400 and "supported: 64, 128, 384" in refused.json()["error"]["message"]


@pytest.mark.parametrize("body,status,words", [
    ({"input": ["x"] * 9, "input_type": "query"}, 400, "9 items, more than the limit of 8"),
    ({"input": "y" * 501, "input_type": "query"}, 400, "501 characters, more than the limit of 500"),
    ({"input": "word " * 40, "input_type": "query"}, 400, "more than the model's limit of 32 tokens"),
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
        return httpx.post(strict_service.base_url + "/v1/embeddings",
                          json={"input": ["q"] * 4, "input_type": "query"},
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
    http.post("/v1/embeddings", json={"input": "traced", "input_type": "query"},
              headers={"X-Request-Id": "trace-me-1"})
    log = strict_service.wait_for_log('"nimrag.request_id": "trace-me-1"')
    assert '"name": "POST /v1/embeddings"' in log and '"nimrag.request_id": "trace-me-1"' in log
