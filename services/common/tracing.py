"""OpenTelemetry tracing: one trace per request across the services, spans for every request and engine batch.

Off (the API's no-op tracer) unless ``OTEL_TRACES_EXPORTER`` asks for ``console`` or ``otlp``. As the
OpenTelemetry spec allows, the value may be a comma-separated list (``console,otlp``: both). Any other value
(``jaeger``, ``zipkin``, a typo) stops the service at start-up, rather than silently exporting nothing.

OTLP goes over HTTP/protobuf or gRPC, as ``OTEL_EXPORTER_OTLP_TRACES_PROTOCOL`` (else ``OTEL_EXPORTER_OTLP_PROTOCOL``)
says: ``http/protobuf`` (the default) or ``grpc``; anything else (``http/json``, which the Python SDK does not
have) is a start-up error too. The exporters read the rest of the standard variables themselves:
``OTEL_EXPORTER_OTLP_ENDPOINT`` (http://localhost:4318 for HTTP, localhost:4317 for gRPC), its ``_TRACES_``
variant, headers, timeouts; ``OTEL_BSP_*`` tune the batch export. ``OTEL_SERVICE_NAME`` (or ``service.name`` in
``OTEL_RESOURCE_ATTRIBUTES``) overrides the service name, ``nimrag-<service>`` by default.

A process has one TracerProvider, set as the global one by the first ``make_tracer`` that asks for an exporter:
every module's ``trace.get_tracer(...)`` (the pipeline's retrieval and guardrails spans, the batchers') then goes
through it, whichever module asks first. Requests carry W3C ``traceparent`` both ways: the request middleware
extracts it, and outgoing calls inject it (:func:`inject_trace_context`, an httpx request hook).
"""

from __future__ import annotations

import os
import threading
from collections.abc import AsyncIterator, Mapping
from typing import TypeVar

from opentelemetry import context, propagate, trace

from nimrag.services.common.errors import StartupError

EXPORTERS = ("console", "otlp")
PROTOCOLS = ("http/protobuf", "grpc")
PROTOCOL_VARIABLES = ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")  # the first set wins

T = TypeVar("T")
_install_lock = threading.Lock()
_installed_for: str | None = None  # the service whose make_tracer set this process's provider


class TracingConfigError(StartupError):
    """``OTEL_TRACES_EXPORTER`` names an exporter this service does not have, or the OTLP protocol is unknown."""


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


def otlp_protocol(environ: Mapping[str, str] = os.environ) -> str:
    """The OTLP transport for spans: the traces-specific variable, else the general one, else http/protobuf."""
    for name in PROTOCOL_VARIABLES:
        value = (environ.get(name) or "").strip()
        if not value:
            continue
        if value.lower() not in PROTOCOLS:
            raise TracingConfigError(f"{name}={value!r}: unknown OTLP protocol; accepted: http/protobuf, grpc")
        return value.lower()
    return "http/protobuf"


def otlp_span_exporter(protocol: str):
    """The OTLP span exporter of ``protocol``; it reads its endpoint, headers and timeout from the environment."""
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    return OTLPSpanExporter()


def service_resource(service: str):
    """``nimrag-<service>``, unless OTEL_SERVICE_NAME or OTEL_RESOURCE_ATTRIBUTES names the service."""
    from opentelemetry.sdk.resources import SERVICE_NAME, OTELResourceDetector, Resource

    named = OTELResourceDetector().detect().attributes.get(SERVICE_NAME)
    return Resource.create({SERVICE_NAME: named or f"nimrag-{service}"})


def make_tracer(service: str) -> trace.Tracer:
    """The service's tracer; the first call in a process that asks for exporters installs the process's one
    provider (a later call, another app in the same process, shares it). Raises TracingConfigError."""
    exporters = traces_exporters(os.environ.get("OTEL_TRACES_EXPORTER"))
    protocol = otlp_protocol() if "otlp" in exporters else None
    if exporters:
        _install_provider(service, exporters, protocol)
    return trace.get_tracer(f"nimrag.{service}")


def _install_provider(service: str, exporters: list[str], protocol: str | None) -> None:
    global _installed_for
    with _install_lock:
        if _installed_for is not None:
            return
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor

        provider = TracerProvider(resource=service_resource(service))
        if "console" in exporters:
            provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))  # for debugging: print at once
        if "otlp" in exporters:
            provider.add_span_processor(BatchSpanProcessor(otlp_span_exporter(protocol)))
        trace.set_tracer_provider(provider)
        _installed_for = service


# --- propagation ------------------------------------------------------------------------------------------------
def extract_asgi(headers: list[tuple[bytes, bytes]]) -> context.Context:
    """The caller's trace context from an ASGI request's headers (an empty one when it sent none)."""
    return propagate.extract({name.decode("latin-1"): value.decode("latin-1") for name, value in headers})


async def inject_trace_context(request) -> None:
    """httpx request hook: the current span's ``traceparent`` on every outgoing request, and the request's method
    and URL on that span when it is the call's CLIENT span."""
    propagate.inject(request.headers)
    span = trace.get_current_span()
    if getattr(span, "kind", None) is trace.SpanKind.CLIENT and span.is_recording():
        span.set_attributes({"http.request.method": request.method, "url.full": str(request.url),
                             "server.address": request.url.host})
        if request.url.port is not None:  # None: the scheme's default
            span.set_attribute("server.port", request.url.port)


async def record_response_status(response) -> None:
    """httpx response hook: the status on the call's CLIENT span."""
    span = trace.get_current_span()
    if getattr(span, "kind", None) is trace.SpanKind.CLIENT and span.is_recording():
        span.set_attribute("http.response.status_code", response.status_code)


TRACE_HOOKS = {"request": [inject_trace_context], "response": [record_response_status]}


# --- streams ----------------------------------------------------------------------------------------------------
def traced_stream(tracer: trace.Tracer, name: str, items: AsyncIterator[T], *,
                  kind: trace.SpanKind = trace.SpanKind.INTERNAL, attributes: dict | None = None) -> AsyncIterator[T]:
    """``items`` under a span ``name`` that lasts as long as the stream. Its parent is the context current *now*
    (when the stream is made, not when it is first read: a stream read inside another span's stream still
    belongs where it was made). The span is current while each item is produced (the calls it makes are its
    children), never across a yield: the consumer's own context is left alone. Never read, no span."""
    parent = context.get_current()

    async def run() -> AsyncIterator[T]:
        span = tracer.start_span(name, context=parent, kind=kind, attributes=attributes)
        try:
            while True:
                with trace.use_span(span, end_on_exit=False):
                    try:
                        item = await anext(items)
                    except StopAsyncIteration:
                        return
                yield item
        finally:
            close = getattr(items, "aclose", None)
            if close is not None:
                with trace.use_span(span, end_on_exit=False):
                    await close()
            span.end()

    return run()
