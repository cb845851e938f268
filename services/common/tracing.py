"""OpenTelemetry tracing: spans for every request and engine batch.

Off (the API's no-op tracer) unless ``OTEL_TRACES_EXPORTER`` asks for ``console`` or ``otlp`` (OTLP over
HTTP/protobuf, a declared dependency; ``OTEL_EXPORTER_OTLP_ENDPOINT`` says where, http://localhost:4318 by default).
"""

from __future__ import annotations

import os

from opentelemetry import trace


def make_tracer(service: str) -> trace.Tracer:
    exporter_name = os.environ.get("OTEL_TRACES_EXPORTER", "none").lower()
    if exporter_name in ("", "none"):
        return trace.get_tracer(f"nimrag.{service}")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"nimrag-{service}"}))
    if exporter_name == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))  # for debugging: print at once
    elif exporter_name == "otlp":
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer(f"nimrag.{service}")
