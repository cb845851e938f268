"""What the Triton backends add to the services (nimrag.services.common.triton): the profiles a Triton URL selects,
readiness that follows Triton (503 naming it while it is down, from the start and later, and back to 200), and a
model without the interface refused at load with what it lacks.

Triton is ``nimrag triton serve`` (tests/services/conftest.py); "down" is a relay in front of it that is cut.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.profiles import ProfileError, select_profile
from nimrag.services.embed.profiles import EMBED_PROFILES
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.profiles import LLM_PROFILES
from nimrag.services.rerank.profiles import RERANK_PROFILES
from tests.conftest import REPO, start_service, wait_until_ready
from tests.services.relay import Relay

CPU = HardwareInfo("test cpu", 2, 2, frozenset({"avx2", "avx512_vnni"}))
GGUF = LLMModelInfo(Path("m.gguf"), "small", "gguf", parameters=135_000_000, quantization="q4_1")


@pytest.mark.parametrize("profiles,env", [(EMBED_PROFILES, "NIMRAG_EMBED_TRITON_URL"),
                                          (RERANK_PROFILES, "NIMRAG_RERANK_TRITON_URL")], ids=["embed", "rerank"])
def test_a_triton_url_selects_the_triton_profile(monkeypatch, profiles, env):
    monkeypatch.delenv(env, raising=False)
    choice = select_profile(profiles, CPU)
    assert choice.profile.device == "cpu"
    assert dict((p.id, r) for p, r in choice.incompatible)["tensorrt-triton"] == [f"{env} is not set"]
    with pytest.raises(ProfileError, match=f"'tensorrt-triton' cannot run on this machine: {env} is not set"):
        select_profile(profiles, CPU, "tensorrt-triton")
    monkeypatch.setenv(env, "triton:8001")
    assert select_profile(profiles, CPU).profile.id == "tensorrt-triton"
    assert select_profile(profiles, CPU, "onnx-cpu-fp32").profile.id == "onnx-cpu-fp32"  # pinning still wins


def test_the_llm_on_a_triton_elsewhere_needs_no_gpu_here(monkeypatch):
    monkeypatch.delenv("NIMRAG_LLM_TRITON_URL", raising=False)
    assert select_profile(LLM_PROFILES, CPU, None, GGUF.profile_reasons).profile.id == "llamacpp-gguf-tp1-throughput"
    monkeypatch.setenv("NIMRAG_LLM_TRITON_URL", "triton:8001")
    choice = select_profile(LLM_PROFILES, CPU, None, GGUF.profile_reasons)
    assert choice.profile.id == "trtllm-triton-tp1-throughput"
    reasons = dict((p.id, r) for p, r in choice.incompatible)
    assert reasons["trtllm-bf16-tp1-throughput"] == ["needs 1 NVIDIA GPU(s), found 0"]  # the co-located ones


def _error(response: httpx.Response) -> dict:
    return response.json()["error"]


def _wait_for_status(url: str, status: int, code: str | None = None, timeout_s: float = 60) -> httpx.Response:
    """The first answer with ``status`` (and error ``code``), or the last one after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    response = None
    while time.monotonic() < deadline:
        try:
            response = httpx.get(url, timeout=10)
        except httpx.TransportError:  # not listening yet
            time.sleep(0.2)
            continue
        if response.status_code == status and (code is None or _error(response)["code"] == code):
            break
        time.sleep(0.2)
    assert response is not None, f"{url} never answered"
    return response


def test_readiness_follows_triton(service_tmp, triton_host):
    relay = Relay(triton_host.grpc_port)  # not open yet: Triton is "down" from the start
    svc = start_service("embed", service_tmp, wait_ready=False,
                        env={"NIMRAG_EMBED_TRITON_URL": relay.address, "NIMRAG_EMBED_TRITON_HEALTH_INTERVAL_S": "0.5",
                             "NIMRAG_EMBED_TRITON_TIMEOUT_S": "10"})
    ready = svc.base_url + "/v1/health/ready"
    try:
        down = _wait_for_status(ready, 503, "triton_unavailable")  # "loading" first, then the wait names Triton
        assert _error(down)["code"] == "triton_unavailable" and down.headers["retry-after"]
        assert f"Triton at {relay.address} serving 'embed': not reachable" in _error(down)["message"]
        refused = httpx.post(svc.base_url + "/v1/embeddings", json={"input": "x"}, timeout=10)
        assert refused.status_code == 503 and _error(refused)["code"] == "triton_unavailable"

        relay.open()
        wait_until_ready(svc, timeout_s=60)
        assert httpx.post(svc.base_url + "/v1/embeddings", json={"input": "x"}, timeout=30).status_code == 200

        relay.cut()  # Triton goes away while serving: a request fails at once with a 503, readiness says why
        answer = httpx.post(svc.base_url + "/v1/embeddings", json={"input": "y"}, timeout=30)
        assert answer.status_code == 503 and _error(answer)["code"] == "triton_unavailable", answer.text
        down = _wait_for_status(ready, 503, "triton_unavailable")
        assert _error(down)["code"] == "triton_unavailable" and "not reachable" in _error(down)["message"]

        relay.open()  # and back
        assert _wait_for_status(ready, 200).status_code == 200
        assert httpx.post(svc.base_url + "/v1/embeddings", json={"input": "z"}, timeout=30).status_code == 200
        assert 'status="500"' not in httpx.get(svc.base_url + "/v1/metrics").text
    finally:
        relay.cut()
        svc.stop()


def test_a_model_without_the_interface_fails_the_load_saying_what_it_lacks(service_tmp, triton_host):
    svc = start_service("embed", service_tmp, wait_ready=False,
                        env={"NIMRAG_EMBED_TRITON_URL": triton_host.url, "NIMRAG_EMBED_TRITON_MODEL": "ensemble"})
    try:
        answer = _wait_for_status(svc.base_url + "/v1/health/ready", 503, "model_load_failed", timeout_s=120)
        message = _error(answer)["message"]
        assert f"Triton at {triton_host.url} serving 'ensemble': the model lacks input_ids, attention_mask" in message
        assert "deploy/triton/README.md" in message
    finally:
        svc.stop()


@pytest.mark.parametrize("model", ["embed", "rerank"])
def test_the_model_repository_templates_declare_what_nimrag_serves(triton_host, model):
    """deploy/triton/model_repository parses as Triton model configs, with dynamic batching, and declares the
    interface ``nimrag triton serve`` serves (and the services are tested against): the same outputs and types,
    its inputs (the template adds the optional token_type_ids to the embedding model)."""
    import tritonclient.grpc as grpcclient
    from google.protobuf import json_format, text_format
    from tritonclient.grpc import model_config_pb2

    path = REPO / "deploy" / "triton" / "model_repository" / model / "config.pbtxt"
    template = text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())
    assert template.name == model and template.max_batch_size > 0 and template.HasField("dynamic_batching")
    client = grpcclient.InferenceServerClient(triton_host.url)
    served = json_format.ParseDict(client.get_model_config(model, as_json=True)["config"],
                                   model_config_pb2.ModelConfig(), ignore_unknown_fields=True)
    client.close()

    def tensors(entries):
        return {t.name: (t.data_type, len(t.dims)) for t in entries}

    assert tensors(template.output) == tensors(served.output)
    assert tensors(served.input).items() <= tensors(template.input).items()
    assert set(tensors(template.input)) - set(tensors(served.input)) <= {"token_type_ids"}


def test_triton_serve_refuses_an_unknown_model_before_loading_anything():
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "nimrag.cli", "triton", "serve", "--models", "embed,nope"],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--models takes a comma-separated list of embed, rerank, llm; got 'embed,nope'" in done.stderr


def test_a_call_past_its_deadline_is_a_503_and_triton_stays_ready(triton_host):
    from nimrag.services.common.errors import ServiceNotReadyError
    from nimrag.services.common.triton import TritonModel
    from nimrag.services.embed.engines.triton import TritonEngine
    from nimrag.services.embed.model import load_model_info
    from nimrag.services.embed.profiles import EMBED_PROFILES
    from nimrag.services.embed.settings import EmbedSettings
    from nimrag.services.embed.tokenization import TextTokenizer

    info = load_model_info(EmbedSettings())
    tokenizer = TextTokenizer(info.path, info.max_tokens)
    triton = TritonModel(triton_host.url, "embed", timeout_s=30)
    engine = TritonEngine(EMBED_PROFILES[0], info, tokenizer, triton)
    engine.warm_up()
    try:
        triton.timeout_s = 0.001  # no batch of 200 texts is encoded in a millisecond
        with pytest.raises(ServiceNotReadyError) as late:
            engine.embed(tokenizer.encode(["a sentence that takes its time to encode"] * 200))
        assert late.value.code == "triton_timeout" and "did not answer within 0.001 s" in late.value.message
        assert triton.readiness_error() is None  # late is not down
        triton.timeout_s = 30
        assert engine.embed(tokenizer.encode(["fine again"])).shape == (1, 384)
    finally:
        triton.close()
