"""Bad input, limits, keys and abandoned requests: each a clear 4xx or a clean stop, never a 500, and no slot is
left behind (``num_requests_running`` returns to 0)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import json
import socket
import time

import httpx
import pytest

from nimrag.services.common.hardware import probe
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.profiles import select_profile
from nimrag.services.llm.engines.base import SamplingParams
from nimrag.services.llm.model import load_model_info
from nimrag.services.llm.profiles import LLM_PROFILES
from nimrag.services.llm.protocol import ChatCompletionRequest
from nimrag.services.llm.serving import ChatAnswer, Job, LLMServing, RequestTiming
from nimrag.services.llm.settings import LLMSettings
from tests.conftest import start_service
from tests.services.llm.conftest import metric, wait_for_metric

Q = [{"role": "user", "content": "Hi"}]
LONG = "word " * 5000  # about 5,000 tokens: more than the default 4,096 context

# (case, endpoint, body, status, text the error message must contain)
BAD_REQUESTS = [
    ("missing messages", "chat", {"max_tokens": 4}, 422, "messages"),
    ("empty messages", "chat", {"messages": []}, 422, "messages"),
    ("unknown role", "chat", {"messages": [{"role": "wizard", "content": "x"}]}, 422, "role"),
    ("user without content", "chat", {"messages": [{"role": "user"}]}, 422, "content"),
    ("image content", "chat", {"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 422, "type"),
    ("negative max_tokens", "chat", {"messages": Q, "max_tokens": -5}, 422, "max_tokens"),
    ("zero max_tokens", "chat", {"messages": Q, "max_tokens": 0}, 422, "max_tokens"),
    ("huge max_tokens", "chat", {"messages": Q, "max_tokens": 10**9}, 400, "maximum context length is 4096"),
    ("temperature too high", "chat", {"messages": Q, "temperature": 3}, 422, "temperature"),
    ("top_p zero", "chat", {"messages": Q, "top_p": 0}, 422, "top_p"),
    ("context overflow", "chat", {"messages": [{"role": "user", "content": LONG}]}, 400, "4096 tokens"),
    ("invalid json_schema", "chat", {"messages": Q, "response_format": {
        "type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "nonsense"}}}}, 400, "schema"),
    ("json_schema without schema", "chat", {"messages": Q, "response_format": {"type": "json_schema"}}, 422,
     "json_schema"),
    ("guided_json not JSON", "chat", {"messages": Q, "nvext": {"guided_json": "{nope"}}, 400, "guided_json"),
    ("guided_regex on llama.cpp", "chat", {"messages": Q, "nvext": {"guided_regex": "a+"}}, 400, "regex"),
    ("unknown model", "chat", {"messages": Q, "model": "gpt-7"}, 404, "gpt-7"),
    ("stream_options without stream", "chat", {"messages": Q, "stream_options": {"include_usage": True}}, 400,
     "stream"),
    ("top_logprobs without logprobs", "chat", {"messages": Q, "top_logprobs": 2}, 422, "logprobs"),
    ("too many top_logprobs", "chat", {"messages": Q, "logprobs": True, "top_logprobs": 50}, 422, "top_logprobs"),
    ("logit_bias not a token", "chat", {"messages": Q, "logit_bias": {"999999": 5}}, 400, "logit_bias"),
    ("logit_bias out of range", "chat", {"messages": Q, "logit_bias": {"5": 500}}, 422, "logit_bias"),
    ("n above the limit", "chat", {"messages": Q, "n": 64}, 400, "at most 8"),
    ("empty stop string", "chat", {"messages": Q, "stop": [""]}, 422, "stop"),
    ("body is a list", "chat", [1, 2], 422, "JSON object"),
    ("empty prompt list", "completions", {"prompt": []}, 422, "prompt"),
    ("suffix", "completions", {"prompt": "def f(", "suffix": "return x"}, 400, "suffix"),
    ("echo with token ids", "completions", {"prompt": [1, 2, 3], "echo": True}, 400, "echo"),
    ("best_of above n", "completions", {"prompt": "x", "best_of": 3}, 400, "best_of"),
    ("prompt too long", "completions", {"prompt": LONG}, 400, "4096 tokens"),
]

VOCAB = 49152  # SmolLM2's
# Integers beyond what the engine takes, token ids outside the vocabulary, schemas the grammar engine cannot
# compile: (case, endpoint, body, status, the param the error names).
OUT_OF_RANGE = [
    ("seed beyond 64 bits", "chat", {"messages": Q, "seed": 2**70}, 422, "seed"),
    ("max_tokens beyond 32 bits", "chat", {"messages": Q, "max_tokens": 2**31}, 422, "max_tokens"),
    ("max_completion_tokens beyond 64 bits", "chat", {"messages": Q, "max_completion_tokens": 2**70}, 422,
     "max_completion_tokens"),
    ("top_k beyond 32 bits", "chat", {"messages": Q, "top_k": 2**40}, 422, "top_k"),
    ("nvext top_k beyond 64 bits", "chat", {"messages": Q, "nvext": {"top_k": 2**70}}, 422, "nvext.top_k"),
    ("n beyond 64 bits", "chat", {"messages": Q, "n": 2**70}, 422, "n"),
    ("top_logprobs beyond 64 bits", "chat", {"messages": Q, "logprobs": True, "top_logprobs": 2**70}, 422,
     "top_logprobs"),
    ("logit_bias key beyond 64 bits", "chat", {"messages": Q, "logit_bias": {"9" * 30: 1}}, 400, "logit_bias"),
    ("logit_bias key of other digits", "chat", {"messages": Q, "logit_bias": {"\u00b2": 1}}, 400, "logit_bias"),
    ("logprobs beyond 64 bits", "completions", {"prompt": "x", "logprobs": 2**70}, 422, "logprobs"),
    ("best_of beyond 64 bits", "completions", {"prompt": "x", "best_of": 2**70}, 422, "best_of"),
    ("token id beyond 64 bits", "completions", {"prompt": [1, 2**70]}, 400, "prompt[1]"),
    ("token id past the vocabulary", "completions", {"prompt": [[1], [5, VOCAB]]}, 400, "prompt[1][1]"),
    ("negative token id", "completions", {"prompt": [-1]}, 400, "prompt[0]"),
    ("schema with an unknown format", "chat", {"messages": Q, "response_format": {"type": "json_schema",
     "json_schema": {"name": "x", "schema": {"type": "string", "format": "nonsense"}}}}, 400,
     "response_format.json_schema.schema"),
    ("schema with a dangling $ref", "chat", {"messages": Q, "nvext": {"guided_json": {"$ref": "#/$defs/gone"}}},
     400, "nvext.guided_json"),
    ("schema with a look-behind", "completions", {"prompt": "x", "guided_json": {"type": "string",
     "pattern": "(?<=a)b"}}, 400, "guided_json"),
    ("unsatisfiable schema", "chat", {"messages": Q, "guided_json": {"type": "object", "required": ["a"],
     "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}}}}, 400, "guided_json"),
    ("schema nested too deeply", "chat", {"messages": Q, "guided_json": "[" * 100_000}, 400, "guided_json"),
]


def _post(base_url: str, endpoint: str, body, timeout: float = 60, **kwargs) -> httpx.Response:
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    return httpx.post(base_url + path, json=body, timeout=timeout, **kwargs)


@pytest.mark.parametrize("case,endpoint,body,status,needle", BAD_REQUESTS, ids=[c[0] for c in BAD_REQUESTS])
def test_bad_request(llm_service, case, endpoint, body, status, needle):
    r = _post(llm_service.base_url, endpoint, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert needle in error["message"], error
    assert set(error) == {"message", "type", "param", "code"}


@pytest.mark.parametrize("case,endpoint,body,status,param", OUT_OF_RANGE, ids=[c[0] for c in OUT_OF_RANGE])
def test_out_of_range_input_is_refused_before_the_engine(llm_service, case, endpoint, body, status, param):
    r = _post(llm_service.base_url, endpoint, body)
    assert r.status_code == status, r.text
    assert r.json()["error"]["param"] == param, r.json()


def test_vocabulary_is_smollm2s(llm_service):
    assert httpx.get(llm_service.base_url + "/v1/metadata").json()["engineInfo"]["vocab_size"] == VOCAB
    ok = _post(llm_service.base_url, "completions", {"prompt": [[1], [5, VOCAB - 1]], "max_tokens": 1})
    assert ok.status_code == 200, ok.text


def test_malformed_json_and_context_numbers(llm_service):
    r = httpx.post(llm_service.base_url + "/v1/chat/completions", content=b'{"messages": [', timeout=10)
    assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
    r = _post(llm_service.base_url, "chat", {"messages": Q, "max_tokens": 4090})
    error = r.json()["error"]
    assert r.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "4096" in error["message"] and "4090 for the completion" in error["message"]


def test_service_healthy_after_bad_input(llm_service):
    assert "Exception in ASGI" not in llm_service.log() and '"status":500' not in llm_service.log()
    assert _post(llm_service.base_url, "chat", {"messages": Q, "max_tokens": 2}).status_code == 200
    assert metric(llm_service.base_url, "num_requests_running") == 0


def test_client_disconnect_mid_stream_stops_generation(llm_service):
    url = llm_service.base_url
    cancelled = metric(url, "request_failure_total")
    body = {"messages": Q, "max_tokens": 3000, "stream": True, "nvext": {"ignore_eos": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=body, timeout=60) as r:
        pieces = 0
        for line in r.iter_lines():
            pieces += line.startswith("data: ")
            if pieces >= 5:
                break  # leave mid-stream: 3,000 tokens would take the engine ~40 s
    started = time.monotonic()
    assert wait_for_metric(url, "num_requests_running", 0) == 0
    assert time.monotonic() - started < 5
    assert metric(url, "request_failure_total") == cancelled + 1


def test_client_timeout_on_non_streamed_request_frees_the_slot(llm_service):
    url = llm_service.base_url
    with pytest.raises(httpx.ReadTimeout):
        _post(url, "chat", {"messages": Q, "max_tokens": 3000, "nvext": {"ignore_eos": True}}, timeout=1.0)
    assert wait_for_metric(url, "num_requests_running", 0) == 0
    assert _post(url, "chat", {"messages": Q, "max_tokens": 2}).status_code == 200


KEY = "llm-test-key"


@pytest.fixture(scope="module")
def small_service(service_tmp):
    """One sequence at a time, one waiting, a 256-token context, a key, a pinned profile and a served name."""
    svc = start_service("llm", service_tmp, env={
        "NIMRAG_LLM_API_KEYS": KEY, "NIMRAG_LLM_MAX_NUM_SEQS": "1", "NIMRAG_LLM_MAX_QUEUE_ITEMS": "1",
        "NIMRAG_LLM_MAX_MODEL_LEN": "256", "NIMRAG_LLM_MAX_N": "2", "NIM_SERVED_MODEL_NAME": "my-llm",
        "NIM_MODEL_PROFILE": "llamacpp-gguf-tp1-latency"})
    yield svc
    svc.stop()


AUTH = {"Authorization": f"Bearer {KEY}"}


def test_api_key_required(small_service):
    url = small_service.base_url
    assert _post(url, "chat", {"messages": Q}).status_code == 401
    assert httpx.get(url + "/v1/health/ready").status_code == 200
    reply = _post(url, "chat", {"messages": Q, "max_tokens": 2, "model": "my-llm"}, headers=AUTH)
    assert reply.status_code == 200 and reply.json()["model"] == "my-llm"
    meta = httpx.get(url + "/v1/metadata", headers=AUTH).json()
    assert meta["selectedModelProfileId"] == "llamacpp-gguf-tp1-latency" and meta["profilePinned"]
    assert meta["engineInfo"]["slots"] == 1 and meta["engineInfo"]["context_length"] == 256


def test_configured_context_and_n_limits(small_service):
    url = small_service.base_url
    r = _post(url, "completions", {"prompt": "word " * 300}, headers=AUTH)
    assert r.status_code == 400 and "maximum context length is 256" in r.json()["error"]["message"]
    r = _post(url, "chat", {"messages": Q, "max_tokens": 250}, headers=AUTH)
    assert r.status_code == 400 and "250 for the completion" in r.json()["error"]["message"]
    r = _post(url, "chat", {"messages": Q, "n": 3}, headers=AUTH)
    assert r.status_code == 400 and "at most 2" in r.json()["error"]["message"]


def test_queue_full_gives_429_with_retry_after(small_service):
    url = small_service.base_url
    body = {"messages": Q, "max_tokens": 100, "nvext": {"ignore_eos": True}}
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        # one runs, one waits
        busy = [pool.submit(_post, url, "chat", body, headers=AUTH, timeout=180) for _ in range(2)]
        wait_for_metric(url, "num_requests_waiting", 1, headers=AUTH)
        refused = _post(url, "chat", body, headers=AUTH)
        statuses = [f.result().status_code for f in busy]
    assert statuses == [200, 200]
    assert refused.status_code == 429 and refused.headers["retry-after"]
    assert refused.json()["error"]["code"] == "queue_full"
    assert metric(url, "num_requests_running", AUTH) == 0


def test_broken_model_file_reports_not_ready(service_tmp, tmp_path):
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(b"GGUF" + b"\0" * 64)
    svc = start_service("llm", service_tmp, env={"NIMRAG_LLM_MODEL": str(broken)}, wait_ready=False)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                r = httpx.get(svc.base_url + "/v1/health/ready", timeout=2)
                if r.json()["error"]["code"] == "model_load_failed":
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        assert r.status_code == 503 and "failed to load" in r.json()["error"]["message"]
        assert httpx.get(svc.base_url + "/v1/health/live").status_code == 200
        chat = _post(svc.base_url, "chat", {"messages": Q})
        assert chat.status_code == 503
    finally:
        svc.stop()


def _raw_stream(url: str, body: dict, headers: dict) -> socket.socket:
    """A streamed request on a raw socket: what the server has sent can be looked at without waiting for more."""
    host, port = url.removeprefix("http://").split(":")
    payload = json.dumps(body).encode()
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = "".join(f"{k}: {v}\r\n" for k, v in {**headers, "Content-Type": "application/json",
                                                  "Content-Length": len(payload)}.items())
    sock.sendall(f"POST /v1/chat/completions HTTP/1.1\r\nHost: {host}\r\n{head}\r\n".encode() + payload)
    return sock


def _received(sock: socket.socket) -> bytes:
    sock.setblocking(False)
    try:
        return sock.recv(65536)
    except BlockingIOError:
        return b""
    finally:
        sock.setblocking(True)


def test_a_waiting_stream_sends_no_chunk_until_its_generation_starts(small_service):
    # One slot: the second stream waits for it. Its first chunk (the role) is its time to first token, so it
    # must not go out while the request waits.
    url = small_service.base_url
    long_body = {"messages": Q, "max_tokens": 200, "stream": True, "nvext": {"ignore_eos": True}}
    with httpx.stream("POST", url + "/v1/chat/completions", json=long_body, headers=AUTH, timeout=60) as first:
        lines = first.iter_lines()
        assert next(line for line in lines if line.startswith("data: "))  # generating: the slot is taken
        waiting = _raw_stream(url, {"messages": Q, "max_tokens": 2, "stream": True}, AUTH)
        try:
            assert wait_for_metric(url, "num_requests_waiting", 1, headers=AUTH) == 1
            metric(url, "num_requests_waiting", AUTH)  # one more round trip for anything sent to arrive
            assert b"data: " not in _received(waiting)
            first.close()  # leaving frees the slot
            seen = b""
            while b"data: [DONE]" not in seen:
                seen += waiting.recv(65536)
        finally:
            waiting.close()
    assert b'"role":"assistant"' in seen
    assert wait_for_metric(url, "num_requests_running", 0, headers=AUTH) == 0


def test_an_engine_error_mid_stream_is_an_event_in_the_one_error_shape():
    """Past the headers, errors are data events. The serving layer refuses bad token ids before the engine; here
    one goes to the real llama.cpp engine directly, which refuses it once the stream has begun."""

    async def run():
        hardware = probe()
        settings = LLMSettings(max_num_seqs=1, max_model_len=128)
        serving = LLMServing(settings=settings, model=load_model_info(settings), hardware=hardware,
                             choice=select_profile(LLM_PROFILES, hardware, "llamacpp-gguf-tp1-latency"),
                             metrics=ServiceMetrics("llm-stream-test"))
        await serving.load()
        try:
            request = ChatCompletionRequest(messages=Q, stream=True)
            job = Job(0, [VOCAB + 5], SamplingParams(max_tokens=2))
            stream = serving._stream([job], ChatAnswer("m", "fp", request, [1]), RequestTiming())
            return [chunk async for chunk in stream]
        finally:
            await serving.stop()

    chunks = asyncio.run(run())
    assert len(chunks) == 2 and chunks[-1] == b"data: [DONE]\n\n"  # no role chunk: generation never started
    error = json.loads(chunks[0].removeprefix(b"data: "))["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["type"] == "invalid_request_error"
