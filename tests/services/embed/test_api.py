"""The embedding service end to end: started as users start it, called with real clients over loopback; every
test on each backend (tests/services/embed/conftest.py): the engine in-process, and in Triton
(``nimrag triton serve``)."""

from __future__ import annotations

import asyncio
import base64
import json
import socket

import httpx
import numpy as np
import openai
import pytest

from tests.services.embed.conftest import TEXTS, cosine_rows

MODEL = "sentence-transformers/all-MiniLM-L6-v2"
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def client(api_embed_service) -> openai.OpenAI:
    return openai.OpenAI(base_url=api_embed_service.base_url + "/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def http(api_embed_service):
    with httpx.Client(base_url=api_embed_service.base_url, timeout=60) as c:
        yield c


def test_health_goes_from_503_to_200_during_start_up(api_embed_service):
    # 503 while loading, then 200; a fast load can be ready before the first probe (see test_serving.py).
    statuses = api_embed_service.ready_statuses
    assert statuses[-1] == 200 and set(statuses[:-1]) <= {503}, statuses
    assert "model ready" in api_embed_service.wait_for_log("model ready")


def test_openai_sdk_default_base64_matches_reference(client, reference_embeddings):
    response = client.embeddings.create(input=TEXTS, model=MODEL)  # the SDK asks for base64 by default
    got = np.array([d.embedding for d in response.data], dtype=np.float32)
    assert [d.index for d in response.data] == list(range(len(TEXTS)))
    assert got.shape == reference_embeddings.shape
    assert cosine_rows(got, reference_embeddings).min() >= MIN_COSINE
    assert response.model == MODEL
    assert response.usage.prompt_tokens == response.usage.total_tokens > len(TEXTS) * 2


def test_openai_sdk_float_and_single_string(client, reference_embeddings):
    response = client.embeddings.create(input=TEXTS[2], model=MODEL, encoding_format="float")
    assert len(response.data) == 1
    got = np.array([response.data[0].embedding], dtype=np.float32)
    assert cosine_rows(got, reference_embeddings[2:3])[0] >= MIN_COSINE


def test_base64_and_float_carry_the_same_vectors(http):
    as_float = http.post("/v1/embeddings", json={"input": TEXTS[:3], "encoding_format": "float"}).json()
    as_b64 = http.post("/v1/embeddings", json={"input": TEXTS[:3], "encoding_format": "base64"}).json()
    for f, b in zip(as_float["data"], as_b64["data"]):
        decoded = np.frombuffer(base64.b64decode(b["embedding"]), dtype="<f4")
        np.testing.assert_allclose(decoded, np.array(f["embedding"], dtype=np.float32), rtol=1e-6)


def test_async_client_under_concurrency_gets_each_its_own_answer(api_embed_service, reference_embeddings):
    async def run():
        aclient = openai.AsyncOpenAI(base_url=api_embed_service.base_url + "/v1", api_key="unused")
        results = await asyncio.gather(*(aclient.embeddings.create(input=[t], model=MODEL) for t in TEXTS))
        await aclient.close()
        return np.array([r.data[0].embedding for r in results], dtype=np.float32)

    got = asyncio.run(run())
    assert cosine_rows(got, reference_embeddings).min() >= MIN_COSINE


def test_langchain_nvidia_embeddings(api_embed_service, reference_model):
    from langchain_nvidia_ai_endpoints import NVIDIAEmbeddings

    embedder = NVIDIAEmbeddings(base_url=api_embed_service.base_url + "/v1", model=MODEL, truncate="END")
    query = np.array([embedder.embed_query(TEXTS[1])], dtype=np.float32)
    docs = np.array(embedder.embed_documents(TEXTS[2:4]), dtype=np.float32)
    assert cosine_rows(query, reference_model.encode([TEXTS[1]]))[0] >= MIN_COSINE
    assert cosine_rows(docs, reference_model.encode(TEXTS[2:4])).min() >= MIN_COSINE
    assert float(query[0] @ docs[0]) > float(query[0] @ docs[1])  # Paris answers the capital question


def test_the_backend_serves(http, backend):
    meta = http.get("/v1/metadata").json()
    if backend == "triton":
        assert meta["selectedModelProfileId"] == "tensorrt-triton" and meta["engine"]["triton_model"] == "embed"
    else:
        assert meta["engine"]["backend"] in ("onnxruntime", "torch")


def test_input_type_and_model_suffix_are_accepted(http):
    plain = http.post("/v1/embeddings", json={"input": "a question"}).json()["data"][0]["embedding"]
    for body in ({"input": "a question", "input_type": "query"},
                 {"input": "a question", "model": MODEL + "-query"},
                 {"input": "a question", "model": MODEL + "-passage"}):
        response = http.post("/v1/embeddings", json=body)
        assert response.status_code == 200, response.text
        # all-MiniLM-L6-v2 is symmetric: no prefixes, so every input type gives the same vector
        np.testing.assert_allclose(response.json()["data"][0]["embedding"], plain, atol=1e-6)


def test_truncate_end_and_start_accept_over_long_input(http):
    long_text = "alpha " * 300 + "omega"
    end = http.post("/v1/embeddings", json={"input": long_text, "truncate": "END"})
    start = http.post("/v1/embeddings", json={"input": long_text, "truncate": "START"})
    assert end.status_code == start.status_code == 200
    assert end.json()["usage"]["prompt_tokens"] == start.json()["usage"]["prompt_tokens"] == 256
    assert end.json()["data"][0]["embedding"] != start.json()["data"][0]["embedding"]


def test_dimensions_equal_to_the_native_size_is_accepted(http):
    response = http.post("/v1/embeddings", json={"input": "x", "dimensions": 384})
    assert response.status_code == 200 and len(response.json()["data"][0]["embedding"]) == 384


def _raw_post(port: int, payload: bytes, headers: str = "Content-Type: application/json\r\n") -> tuple[int, bytes]:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {len(payload)}\r\n"
                  f"Connection: close\r\n\r\n".encode() + payload)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


BAD_INPUTS = [
    # (name, body, status, words the message must contain)
    ("empty list", {"input": []}, 400, "must not be empty"),
    ("empty string", {"input": ""}, 400, "input[0] is empty"),
    ("blank string in a list", {"input": ["ok", "   "]}, 400, "input[1] is empty"),
    ("number as input", {"input": 5}, 422, "input"),
    ("token ids", {"input": [[1, 2, 3]]}, 400, "not a string"),
    ("mixed types", {"input": ["ok", 7]}, 400, "input[1]"),
    ("object as input", {"input": {"text": "x"}}, 422, "input"),
    ("missing input", {"model": MODEL}, 422, "input: Field required"),
    ("unknown model", {"input": "x", "model": "gpt-4"}, 404, "does not exist"),
    ("too long under NONE", {"input": "word " * 400}, 400, "402 tokens, more than the model's limit of 256"),
    ("bad encoding_format", {"input": "x", "encoding_format": "int8"}, 422, "encoding_format"),
    ("unsupported dimensions", {"input": "x", "dimensions": 128}, 400, "dimensions=128 is not supported"),
    ("zero dimensions", {"input": "x", "dimensions": 0}, 422, "dimensions"),
    ("bad input_type", {"input": "x", "input_type": "document"}, 422, "input_type"),
    ("bad truncate", {"input": "x", "truncate": "MIDDLE"}, 422, "truncate"),
    ("body is a list", [{"input": "x"}], 422, "must be a JSON object"),
]


@pytest.mark.parametrize("name,body,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(http, name, body, status, words):
    response = http.post("/v1/embeddings", json=body)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert words in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("payload", [b"{not json", b"", b"\xff\xfe garbage", b'{"input": "x"'],
                         ids=["broken", "empty body", "binary", "truncated"])
def test_malformed_json_is_a_400(api_embed_service, payload):
    status, body = _raw_post(api_embed_service.port, payload)
    assert status == 400 and json.loads(body)["error"]["code"] == "malformed_json"


def test_missing_content_type_still_parses_json(api_embed_service):
    status, body = _raw_post(api_embed_service.port, b'{"input": "x"}', headers="")
    assert status == 200 and json.loads(body)["data"][0]["object"] == "embedding"


def test_service_keeps_serving_after_bad_input_and_reports_no_500(http):
    for _, body, _, _ in BAD_INPUTS:
        http.post("/v1/embeddings", json=body)
    assert http.post("/v1/embeddings", json={"input": "still alive"}).status_code == 200
    metrics = http.get("/v1/metrics").text
    assert 'status="500"' not in metrics


def test_unknown_route_and_method_use_the_error_shape(http):
    missing = http.get("/v1/nothing-here")
    assert missing.status_code == 404 and missing.json()["error"]["type"] == "not_found_error"
    wrong = http.get("/v1/embeddings")
    assert wrong.status_code == 405 and "error" in wrong.json()


def test_models_metadata_version(http, client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL]
    meta = http.get("/v1/metadata").json()
    assert meta["selectedModelProfileId"] in meta["compatibleProfiles"]
    assert meta["model"]["dimension"] == 384 and meta["model"]["max_tokens"] == 256
    assert meta["modelInfo"][0]["shortName"] == MODEL
    version = http.get("/v1/version").json()
    assert version["release"] and version["api"]
    assert http.get("/v1/health/live").json()["status"] == "live"


def _metric(text: str, name: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_metrics_move_after_requests(http):
    before = http.get("/v1/metrics").text
    http.post("/v1/embeddings", json={"input": ["one text", "and another"]})
    after = http.get("/v1/metrics").text
    for name in ("nimrag_requests_total", "nimrag_prompt_tokens_total", "nimrag_batch_size_count",
                 "nimrag_request_latency_seconds_count"):
        assert _metric(after, name) > _metric(before, name), name
    assert "nimrag_queue_depth" in after
    assert 'nimrag_service_info{model="sentence-transformers/all-MiniLM-L6-v2"' in after


def test_request_id_is_echoed_or_generated(http):
    mine = http.post("/v1/embeddings", json={"input": "x"}, headers={"X-Request-Id": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    generated = http.post("/v1/embeddings", json={"input": "x"}, headers={"X-Request-Id": "bad id <script>"})
    assert len(generated.headers["x-request-id"]) == 32


def test_logs_are_json_lines_with_request_ids(api_embed_service, http):
    http.post("/v1/embeddings", json={"input": "x"}, headers={"X-Request-Id": "log-check-1"})
    log = api_embed_service.wait_for_log('"request_id":"log-check-1"')
    lines = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    access = [e for e in lines if e.get("request_id") == "log-check-1"]
    assert access and access[-1]["status"] == 200 and access[-1]["path"] == "/v1/embeddings"
    assert any(e["msg"] == "selected profile" for e in lines)


def test_client_disconnect_does_not_break_the_service(api_embed_service, http):
    payload = json.dumps({"input": ["some text to embed"] * 256}).encode()
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", api_embed_service.port)) as s:
            s.sendall(f"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Length: {len(payload)}\r\n\r\n".encode()
                      + payload)
        # closed before the answer
    assert http.post("/v1/embeddings", json={"input": "after disconnects"}).status_code == 200
