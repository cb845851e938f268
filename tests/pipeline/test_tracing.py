"""Observability across the platform, over real HTTP: one ``/v1/generate`` is one trace through the pipeline and
the embed, rerank and LLM services, exported to a local OTLP receiver; and every service serves its metrics
where scrapers look.

The services run as ``nimrag serve`` processes exporting with OTEL_TRACES_EXPORTER=otlp: embed and rerank over
gRPC (the general and the traces-only protocol variable), the LLM and the pipeline over HTTP/protobuf; the LLM
is renamed with OTEL_SERVICE_NAME."""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from nimrag.platform import pipeline_env
from tests.conftest import ServiceProcess, start_service, wait_until_ready
from tests.otlp import OTLPReceiver, ReceivedSpan

LLM_SERVICE_NAME = "traced-llm"
FACT = "The Zephyr 9 drone has a maximum flight time of 47 minutes on one battery."
QUESTION = "What is the maximum flight time of the Zephyr 9 drone?"


@dataclass
class TracedPlatform:
    receiver: OTLPReceiver
    services: dict[str, ServiceProcess]

    @property
    def pipeline(self) -> str:
        return self.services["pipeline"].base_url


@pytest.fixture(scope="module")
def traced(tmp_path_factory) -> Iterator[TracedPlatform]:
    receiver = OTLPReceiver().start()
    tmp = tmp_path_factory.mktemp("traced")
    common = {"OTEL_TRACES_EXPORTER": "otlp", "OTEL_BSP_SCHEDULE_DELAY": "100", "OTEL_SERVICE_NAME": "",
              "OTEL_EXPORTER_OTLP_PROTOCOL": "", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "",
              "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": ""}
    over_grpc = {**common, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.grpc_endpoint}
    over_http = {**common, "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint}
    services: dict[str, ServiceProcess] = {}
    try:
        for name, env in (("embed", {**over_grpc, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}),
                          ("rerank", {**over_grpc, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}),
                          ("llm", {**over_http, "OTEL_SERVICE_NAME": LLM_SERVICE_NAME})):
            services[name] = start_service(name, tmp, env=env, wait_ready=False)
        for svc in services.values():
            wait_until_ready(svc, timeout_s=300)
        ports = {name: svc.port for name, svc in services.items()}
        services["pipeline"] = start_service("pipeline", tmp, env={
            **over_http, **pipeline_env(ports), "NIMRAG_PIPELINE_DATA_PATH": str(tmp / "data")}, timeout_s=300)
        yield TracedPlatform(receiver, services)
    finally:
        for svc in reversed(services.values()):
            svc.stop()
        receiver.stop()


def _children(spans: list[ReceivedSpan], parent: ReceivedSpan) -> list[ReceivedSpan]:
    return [s for s in spans if s.parent_id == parent.span_id]


def span_tree(spans: list[ReceivedSpan], root_parent: str) -> str:
    """The spans as an indented tree, from those whose parent is ``root_parent``."""
    lines = []

    def walk(parent_id: str, depth: int) -> None:
        for s in sorted((s for s in spans if s.parent_id == parent_id), key=lambda s: s.start_ns):
            link = f"  (links {len(s.links)})" if s.links else ""
            lines.append(f"{'  ' * depth}{s.service}: {s.kind} {s.name}{link}")
            walk(s.span_id, depth + 1)

    walk(root_parent, 0)
    return "\n".join(lines)


EXPECTED = {  # (service, kind, name) that one answer's trace must hold
    ("nimrag-pipeline", "SERVER", "POST /v1/generate"), ("nimrag-pipeline", "INTERNAL", "guardrails.input"),
    ("nimrag-pipeline", "INTERNAL", "retrieval"), ("nimrag-pipeline", "INTERNAL", "retrieval.dense"),
    ("nimrag-pipeline", "INTERNAL", "retrieval.lexical"), ("nimrag-pipeline", "INTERNAL", "retrieval.fusion"),
    ("nimrag-pipeline", "INTERNAL", "rerank"), ("nimrag-pipeline", "INTERNAL", "guardrails.output"),
    ("nimrag-pipeline", "CLIENT", "embed embeddings"), ("nimrag-pipeline", "CLIENT", "rerank ranking"),
    ("nimrag-pipeline", "CLIENT", "llm tokenize"), ("nimrag-pipeline", "CLIENT", "llm chat.completions"),
    ("nimrag-embed", "SERVER", "POST /v1/embeddings"), ("nimrag-embed", "INTERNAL", "embed batch"),
    ("nimrag-rerank", "SERVER", "POST /v1/ranking"), ("nimrag-rerank", "INTERNAL", "rerank batch"),
    (LLM_SERVICE_NAME, "SERVER", "POST /tokenize"), (LLM_SERVICE_NAME, "SERVER", "POST /v1/chat/completions"),
    (LLM_SERVICE_NAME, "INTERNAL", "llm decode"),
}


def _answer(traced: TracedPlatform, traceparent: str) -> list[str]:
    upload = httpx.post(traced.pipeline + "/v1/documents", timeout=300,
                        data={"data": json.dumps({"collection_name": "traced", "blocking": True})},
                        files=[("documents", ("zephyr.md", f"# Zephyr 9\n\n{FACT}\n".encode()))])
    assert upload.status_code == 200 and upload.json()["state"] == "FINISHED", upload.text
    with httpx.stream("POST", traced.pipeline + "/v1/generate", timeout=300, headers={"traceparent": traceparent},
                      json={"messages": [{"role": "user", "content": QUESTION}], "collection_name": "traced",
                            "max_tokens": 16, "stream": True}) as reply:
        assert reply.status_code == 200, reply.read()
        return [line for line in reply.iter_lines() if line]


def test_one_answer_is_one_trace_across_the_services(traced):
    trace_id, caller = secrets.token_hex(16), secrets.token_hex(8)
    lines = _answer(traced, f"00-{trace_id}-{caller}-01")
    assert lines[-1] == "data: [DONE]"

    def missing(spans: list[ReceivedSpan]) -> set:
        return EXPECTED - {(s.service, s.kind, s.name) for s in spans if s.trace_id == trace_id}

    spans = traced.receiver.wait_for(lambda got: not missing(got),
                                     explain=lambda got: f"not in the trace: {sorted(missing(got))}")
    ours = [s for s in spans if s.trace_id == trace_id]
    tree = span_tree(ours, caller)
    print(f"\nthe trace of one /v1/generate:\n{tree}")

    [server] = [s for s in ours if s.name == "POST /v1/generate"]
    assert server.parent_id == caller, tree  # the child of the caller's span
    # Every span any service started while the answer was made is in its trace: none started a trace of its own.
    during = [s for s in spans if server.start_ns <= s.start_ns <= server.end_ns]
    assert {s.trace_id for s in during} == {trace_id}, [(s.service, s.name) for s in during if s.trace_id != trace_id]
    assert {s.service for s in during} == {"nimrag-pipeline", "nimrag-embed", "nimrag-rerank", LLM_SERVICE_NAME}

    by_id = {s.span_id: s for s in ours}
    top = {s.name for s in _children(ours, server)}
    assert {"guardrails.input", "retrieval", "rerank", "prompt.pack", "llm chat.completions",
            "guardrails.output"} <= top, tree
    [retrieval] = [s for s in ours if s.name == "retrieval"]
    assert {"embed embeddings", "retrieval.dense", "retrieval.lexical", "retrieval.fusion"} <= \
        {s.name for s in _children(ours, retrieval)}, tree

    # Each model service's request span is the child of the pipeline's CLIENT span for that call.
    for service, name in (("nimrag-embed", "POST /v1/embeddings"), ("nimrag-rerank", "POST /v1/ranking"),
                          (LLM_SERVICE_NAME, "POST /tokenize"), (LLM_SERVICE_NAME, "POST /v1/chat/completions")):
        for model_span in (s for s in ours if s.service == service and s.name == name):
            client = by_id[model_span.parent_id]
            assert (client.service, client.kind) == ("nimrag-pipeline", "CLIENT"), (name, tree)
    for client in (s for s in ours if s.kind == "CLIENT"):  # one request span per call (FastAPI's own is off)
        assert len([s for s in _children(ours, client) if s.kind == "SERVER"]) == 1, (client.name, tree)
    [chat_client] = [s for s in ours if s.name == "llm chat.completions"]
    [chat_server] = [s for s in ours if s.name == "POST /v1/chat/completions"]
    assert chat_server.parent_id == chat_client.span_id
    assert chat_client.attributes["http.response.status_code"] == 200
    assert chat_client.attributes["url.full"].endswith("/v1/chat/completions")
    assert chat_client.end_ns >= chat_server.end_ns  # the client's span lasts until the stream has been read
    assert [s.name for s in _children(ours, chat_server)] == ["llm decode"]
    assert any(by_id[s.parent_id].name == "embed embeddings" for s in ours if s.name == "POST /v1/embeddings"
               and by_id[by_id[s.parent_id].parent_id].name == "guardrails.input"), tree  # the input rails' own

    # An engine batch is the child of the first request it serves, and linked to every one.
    for service, request_name in (("nimrag-embed", "POST /v1/embeddings"), ("nimrag-rerank", "POST /v1/ranking")):
        batches = [s for s in ours if s.service == service and s.name.endswith(" batch")]
        assert batches, tree
        for batch in batches:
            assert by_id[batch.parent_id].name == request_name
            assert (trace_id, batch.parent_id) in batch.links
            assert batch.attributes["nimrag.batch.items"] >= 1


def test_every_service_serves_its_metrics_where_scrapers_look(traced):
    for name, svc in traced.services.items():
        versioned, plain = (httpx.get(svc.base_url + path) for path in ("/v1/metrics", "/metrics"))
        assert versioned.status_code == plain.status_code == 200, name
        assert plain.headers["content-type"] == versioned.headers["content-type"] == \
            "text/plain; version=0.0.4; charset=utf-8"
        families = [{line.split()[2] for line in r.text.splitlines() if line.startswith("# TYPE ")}
                    for r in (versioned, plain)]
        assert families[0] == families[1], name  # one exposition at both paths
        assert {"process_cpu_seconds_total", "process_resident_memory_bytes", "process_open_fds", "python_info",
                "python_gc_collections_total", "nimrag_requests_total"} <= families[0], name
        cpu = [line for line in plain.text.splitlines() if line.startswith("process_cpu_seconds_total ")]
        assert cpu and float(cpu[0].split()[1]) > 0, name  # this process's own CPU time, not a placeholder
