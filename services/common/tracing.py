"""OpenTelemetry tracing: spans for every request and engine batch.

Off (the API's no-op tracer) unless ``OTEL_TRACES_EXPORTER`` asks for ``console`` or ``otlp`` (OTLP over
HTTP/protobuf, a declared dependency; ``OTEL_EXPORTER_OTLP_ENDPOINT`` says where, http://localhost:4318 by default).
As the OpenTelemetry spec allows, the value may be a comma-separated list (``console,otlp``: both). Any other
value (``jaeger``, ``zipkin``, a typo) stops the service at start-up, rather than silently exporting nothing.
"""

from __future__ import annotations

import os

from opentelemetry import trace

from services.common.errors import StartupError

EXPORTERS = ("console", "otlp")


class TracingConfigError(StartupError):
    """``OTEL_TRACES_EXPORTER`` names an exporter this service does not have."""


def traces_exporters(value: str | None) -> list[str]:
    """The exporters an ``OTEL_TRACES_EXPORTER`` value asks for, in order; [] for unset, empty or ``none``."""
    names = list(dict.fromkeys(n.strip().lower() for n in (value or "").split(",") if n.strip()))
    if names == ["none"]:
        return []
    unknown = [n for n in names if n not in EXPORTERS]
    if unknown == ["none"]:
        problem = "'none' cannot be combined with other exporters"
    elif unknown:
        problem = "unknown exporter " + ", ".join(repr(n) for n in unknown)
    else:
        return names
    raise TracingConfigError(f"OTEL_TRACES_EXPORTER={value!r}: {problem}; accepted: none, console, otlp "
                             "(or a comma-separated list of console and otlp)")


def make_tracer(service: str) -> trace.Tracer:
    exporters = traces_exporters(os.environ.get("OTEL_TRACES_EXPORTER"))
    if not exporters:
        return trace.get_tracer(f"nimrag.{service}")
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": f"nimrag-{service}"}))
    if "console" in exporters:
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))  # for debugging: print at once
    if "otlp" in exporters:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    return provider.get_tracer(f"nimrag.{service}")
