"""What the client hears when a microservice fails, over real HTTP with real services: the LLM refusing the request
is the client's 400 in the LLM's words, a model that failed to load a 503 with its own Retry-After, a service at a
wrong URL a 502, one that does not answer a 503; in a stream that has started, the error in the one shape."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import openai
import pytest

from tests.conftest import ServiceProcess, free_port, start_service
from tests.pipeline.conftest import pipeline_url

QUESTION = [{"role": "user", "content": "Say hello."}]
TOO_LONG = 32768  # the most a request may ask for; the test LLM's context is at most 4096 tokens
LLM_ALONE = {"use_knowledge_base": False, "guardrails": {"enabled": False}}


def generate(url: str, stream: bool, **fields) -> httpx.Response:
    body = {"messages": QUESTION, "stream": stream, **LLM_ALONE, **fields}
    return httpx.post(url + "/v1/generate", json=body, timeout=120)


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code, error
    return error


def stream_error(response: httpx.Response) -> dict:
    """The error event of a stream that started well: the last one before [DONE]."""
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/event-stream")
    events = [line[6:] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]" and "citations" in json.loads(events[0])
    error = json.loads(events[-2])["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    return error


def test_the_llm_refusing_the_request_is_the_clients_400(platform):
    url = pipeline_url(platform)
    error = error_of(generate(url, stream=False, max_tokens=TOO_LONG), 400, "context_length_exceeded")
    assert error["type"] == "invalid_request_error" and error["param"] == "messages"
    assert "maximum context length" in error["message"] and "llm" in error["message"]
    assert "retry-after" not in generate(url, stream=False, max_tokens=TOO_LONG).headers
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="nimrag-rag", messages=QUESTION, max_tokens=TOO_LONG,
                                       extra_body=LLM_ALONE)
    assert (caught.value.code, caught.value.param) == ("context_length_exceeded", "messages")


def test_the_llm_refusing_a_streamed_request_ends_the_stream_with_its_error(platform):
    error = stream_error(generate(pipeline_url(platform), stream=True, max_tokens=TOO_LONG))
    assert (error["type"], error["param"], error["code"]) == ("invalid_request_error", "messages",
                                                              "context_length_exceeded")


def wait_for_load_failure(svc: ServiceProcess, timeout_s: float = 120) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            if httpx.get(svc.base_url + "/v1/health/ready", timeout=2).json()["error"]["code"] == "model_load_failed":
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"the broken LLM did not report its failure:\n{svc.log()[-2000:]}")


@pytest.fixture(scope="module")
def failing(platform, tmp_path_factory) -> Iterator[str]:
    """A pipeline whose LLM failed to load (it answers 503, Retry-After 60) and whose rerank URL is the LLM's,
    which has no /v1/ranking (404); embedding works."""
    tmp = tmp_path_factory.mktemp("failing-deps")
    broken = tmp / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    llm = start_service("llm", tmp, env={"NIMRAG_LLM_MODEL": str(broken)}, wait_ready=False)
    pipeline = None
    try:
        wait_for_load_failure(llm)
        pipeline = start_service("pipeline", tmp, env={
            "NIMRAG_PIPELINE_DATA_PATH": str(tmp / "data"), "NIMRAG_PIPELINE_LLM_URL": llm.base_url + "/v1",
            "NIMRAG_PIPELINE_EMBED_URL": f"http://127.0.0.1:{platform.ports['embed']}/v1",
            "NIMRAG_PIPELINE_RERANK_URL": f"http://127.0.0.1:{platform.ports['llm']}/v1"})
        yield pipeline.base_url
    finally:
        for svc in (pipeline, llm):
            if svc:
                svc.stop()


def test_a_model_that_failed_to_load_is_a_503_with_its_retry_after(failing):
    response = generate(failing, stream=False)
    error = error_of(response, 503, "llm_unavailable")
    assert response.headers["retry-after"] == "60"  # the LLM's own, passed on at once
    assert error["type"] == "service_unavailable" and "failed to load" in error["message"]
    assert stream_error(generate(failing, stream=True))["code"] == "llm_unavailable"


def test_a_service_at_a_wrong_url_is_a_502(failing):
    added = httpx.post(failing + "/v1/documents", files=[("documents", ("note.txt", b"The kettle is blue."))],
                       data={"data": json.dumps({"collection_name": "deps", "blocking": True})}, timeout=120)
    assert added.status_code == 200 and added.json()["result"]["counts"] == {"added": 1}, added.text
    response = httpx.post(failing + "/v1/search", json={"query": "kettle", "collection_name": "deps"}, timeout=60)
    error = error_of(response, 502, "rerank_failed")
    assert error["type"] == "bad_gateway" and "404" in error["message"] and "retry-after" not in response.headers
    unranked = httpx.post(failing + "/v1/search", json={"query": "kettle", "collection_name": "deps",
                                                        "enable_reranker": False}, timeout=60)
    assert unranked.status_code == 200 and unranked.json()["results"][0]["document_name"] == "note.txt"


def test_a_service_that_does_not_answer_is_a_503(tmp_path):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    pipeline = start_service("pipeline", tmp_path, env={
        "NIMRAG_PIPELINE_DATA_PATH": str(tmp_path / "data"), "NIMRAG_PIPELINE_DEPENDENCY_RETRIES": "1",
        **{f"NIMRAG_PIPELINE_{name}_URL": closed for name in ("EMBED", "RERANK", "LLM")}})
    try:
        response = httpx.post(pipeline.base_url + "/v1/collections", json={"collection_name": "c"}, timeout=60)
        error = error_of(response, 503, "embed_unavailable")
        assert "cannot connect" in error["message"] and response.headers["retry-after"] == "5"
    finally:
        pipeline.stop()
