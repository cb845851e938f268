"""Tracing set-up: OTEL_TRACES_EXPORTER and the OTLP protocol as the OpenTelemetry spec names them (anything else a
start-up error), one provider per process, spans over streams, and engine batches linked to their requests.

What sets the process's global provider runs in a child process (the test process keeps none): its spans go to a
real OTLP receiver, over the protocol chosen."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from nimrag.services.common.batching import BatchLimits, DynamicBatcher
from nimrag.services.common.errors import StartupError
from nimrag.services.common.tracing import otlp_protocol, traced_stream, traces_exporters
from tests.conftest import REPO, free_port
from tests.otlp import OTLPReceiver


@pytest.mark.parametrize(("value", "expected"), [
    (None, []), ("", []), ("none", []), (" NONE ", []), ("console", ["console"]), ("otlp", ["otlp"]),
    ("otlp, Console", ["otlp", "console"]), ("console,console,", ["console"]),
])
def test_accepted_values_as_the_spec_allows_them(value, expected):
    assert traces_exporters(value) == expected


@pytest.mark.parametrize(("value", "problem"), [
    ("jaeger", "unknown exporter 'jaeger'"), ("otlp,zipkin,otpl", "unknown exporter 'zipkin', 'otpl'"),
    ("none,console", "'none' cannot be combined"),
])
def test_other_values_are_a_startup_error_naming_them_and_the_accepted_ones(value, problem):
    with pytest.raises(StartupError, match=problem) as caught:
        traces_exporters(value)
    assert f"OTEL_TRACES_EXPORTER={value!r}" in str(caught.value)
    assert "accepted: none, console, otlp" in str(caught.value)


@pytest.mark.parametrize(("environ", "expected"), [
    ({}, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": " GRPC "}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf"}, "http/protobuf"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": ""}, "http/protobuf"),
])
def test_the_traces_protocol_wins_over_the_general_one(environ, expected):
    assert otlp_protocol(environ) == expected


@pytest.mark.parametrize("variable", ["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"])
@pytest.mark.parametrize("value", ["http/json", "thrift", "http"])
def test_another_protocol_is_a_startup_error(variable, value):
    with pytest.raises(StartupError) as caught:
        otlp_protocol({variable: value})
    assert str(caught.value) == f"{variable}={value!r}: unknown OTLP protocol; accepted: http/protobuf, grpc"


CHILD = """
import json
from opentelemetry import trace
from nimrag.services.common.tracing import make_tracer

embed, pipeline = make_tracer("embed"), make_tracer("pipeline")
elsewhere = trace.get_tracer("some.module")  # what the pipeline's and the batchers' modules use
with embed.start_as_current_span("outer") as outer, pipeline.start_as_current_span("inner") as inner:
    elsewhere.start_span("third").end()
    recording = inner.is_recording()
provider = trace.get_tracer_provider()
print(json.dumps({"provider": type(provider).__name__, "recording": recording,
                  "parent": getattr(inner, "parent", None) is not None
                  and inner.parent.span_id == outer.get_span_context().span_id}))
if hasattr(provider, "shutdown"):
    provider.shutdown()  # exports what is left, as at exit
"""


def _child(env: dict[str, str]) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    return subprocess.run([sys.executable, "-c", CHILD], cwd=REPO, env={**full, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.fixture(scope="module")
def receiver():
    running = OTLPReceiver().start()
    yield running
    running.stop()


@pytest.mark.parametrize(("protocol_env", "transport"), [
    ({}, "http"),
    ({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "grpc"),
    ({"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "grpc", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "grpc"),
])
def test_one_provider_per_process_exporting_over_the_chosen_protocol(receiver, protocol_env, transport):
    service_name = f"unit-{free_port()}"  # tells this run's spans from the others'
    endpoint = receiver.grpc_endpoint if transport == "grpc" else receiver.http_endpoint
    out = _child({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
                  "OTEL_SERVICE_NAME": service_name, **protocol_env})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"provider": "TracerProvider", "recording": True, "parent": True}
    spans = receiver.wait_for(lambda got: len([s for s in got if s.service == service_name]) == 3)
    mine = {s.name: s for s in spans if s.service == service_name}
    assert {s.transport for s in mine.values()} == {transport}
    assert len({s.trace_id for s in mine.values()}) == 1  # the three tracers share the one provider and context
    assert mine["third"].parent_id == mine["inner"].span_id and mine["inner"].parent_id == mine["outer"].span_id


def test_the_service_name_defaults_to_nimrag_service(receiver):
    marker = f"run-{free_port()}"
    out = _child({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.http_endpoint,
                  "OTEL_RESOURCE_ATTRIBUTES": f"deployment.environment={marker}"})
    assert out.returncode == 0, out.stderr
    receiver.wait_for(lambda got: any(s.name == "outer" and s.service == "nimrag-embed" for s in got))


def test_no_exporter_no_provider():
    out = _child({"OTEL_TRACES_EXPORTER": "none"})
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == {"provider": "ProxyTracerProvider", "recording": False, "parent": False}


@pytest.mark.parametrize(("env", "error"), [
    ({"OTEL_TRACES_EXPORTER": "jaeger"},
     ("nimrag: OTEL_TRACES_EXPORTER='jaeger': unknown exporter 'jaeger'; accepted: none, console, otlp (or a "
      "comma-separated list of console and otlp)")),
    ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_EXPORTER_OTLP_PROTOCOL": "http/json"},
     "nimrag: OTEL_EXPORTER_OTLP_PROTOCOL='http/json': unknown OTLP protocol; accepted: http/protobuf, grpc"),
])
def test_serve_with_an_unknown_exporter_or_protocol_exits_2_with_one_line(env, error):
    full = {**os.environ, **env, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    # the app is built before the server starts: a regression would serve, and time out here
    out = subprocess.run([sys.executable, "-m", "nimrag.cli", "serve", "embed", "--port", str(free_port())],
                         cwd=REPO, env=full, capture_output=True, text=True, timeout=120, check=False)
    errors = [line for line in out.stderr.splitlines() if line.startswith("nimrag:")]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert errors == [error]


# --- spans in process, on a local provider ------------------------------------------------------------------------
@pytest.fixture
def recorded():
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider.get_tracer("test"), exporter
    provider.shutdown()


def test_a_stream_span_belongs_where_the_stream_was_made_and_leaves_the_reader_alone(recorded):
    tracer, exporter = recorded
    seen = []

    async def produce():
        for n in range(3):
            seen.append(trace.get_current_span().get_span_context().span_id)  # current while producing
            with tracer.start_as_current_span(f"call {n}"):
                pass
            yield n

    async def main():
        with tracer.start_as_current_span("request") as request:
            stream = traced_stream(tracer, "stream", produce())
        with tracer.start_as_current_span("reader") as reader:  # read elsewhere, as output rails read the LLM's
            got = [item async for item in stream if trace.get_current_span() is reader]
        return request, got

    request, got = asyncio.run(main())
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert got == [0, 1, 2]  # the reader's own span stayed current between items
    assert spans["stream"].parent.span_id == request.get_span_context().span_id
    assert set(seen) == {spans["stream"].context.span_id}
    assert all(spans[f"call {n}"].parent.span_id == spans["stream"].context.span_id for n in range(3))


def test_a_stream_span_records_the_failure_and_a_stream_never_read_has_no_span(recorded):
    tracer, exporter = recorded

    async def failing():
        yield 1
        raise ValueError("engine gone")

    async def main():
        traced_stream(tracer, "never read", failing())
        with pytest.raises(ValueError):
            async for _ in traced_stream(tracer, "failing", failing()):
                pass

    asyncio.run(main())
    [span] = exporter.get_finished_spans()
    assert span.name == "failing" and span.status.status_code is trace.StatusCode.ERROR
    assert span.events[0].name == "exception"


def test_an_engine_batch_is_the_child_of_its_first_request_and_linked_to_each(recorded):
    tracer, exporter = recorded
    limits = BatchLimits(max_items=8)  # both requests are queued before the collector runs: one batch

    async def main():
        batcher = DynamicBatcher(lambda items: [i * 2 for i in items], limits, name="embed", tracer=tracer)
        batcher.start()

        async def request(name: str, items: list[int]):
            with tracer.start_as_current_span(name) as span:
                return span, await batcher.submit(items, [1] * len(items))

        try:
            return await asyncio.gather(request("first", [1, 2]), request("second", [3]))
        finally:
            await batcher.stop()

    (first, first_result), (second, second_result) = asyncio.run(main())
    assert first_result == [2, 4] and second_result == [6]
    [batch] = [s for s in exporter.get_finished_spans() if s.name == "embed batch"]
    assert batch.parent.span_id == first.get_span_context().span_id
    assert batch.context.trace_id == first.get_span_context().trace_id
    links = {link.context.span_id: link.attributes["nimrag.batch.request_items"] for link in batch.links}
    assert links == {first.get_span_context().span_id: 2, second.get_span_context().span_id: 1}
    assert batch.attributes["nimrag.batch.items"] == 3 and batch.attributes["nimrag.batch.requests"] == 2


def test_no_current_span_no_parent_for_a_batch(recorded):
    tracer, exporter = recorded

    async def main():
        batcher = DynamicBatcher(lambda items: items, BatchLimits(), tracer=tracer)
        batcher.start()
        try:
            return await batcher.submit([1], [1])  # a request without a trace
        finally:
            await batcher.stop()

    assert asyncio.run(main()) == [1]
    [batch] = exporter.get_finished_spans()
    assert batch.parent is None and batch.name == "engine batch"
