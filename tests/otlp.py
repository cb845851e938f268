"""A local OTLP trace receiver for tests: OTLP/HTTP protobuf POSTs on /v1/traces and OTLP/gRPC's TraceService on
loopback ports, decoded with opentelemetry-proto into plain spans the tests can query."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2

KINDS = {trace_pb2.Span.SPAN_KIND_INTERNAL: "INTERNAL", trace_pb2.Span.SPAN_KIND_SERVER: "SERVER",
         trace_pb2.Span.SPAN_KIND_CLIENT: "CLIENT", trace_pb2.Span.SPAN_KIND_PRODUCER: "PRODUCER",
         trace_pb2.Span.SPAN_KIND_CONSUMER: "CONSUMER"}


@dataclass(frozen=True)
class ReceivedSpan:
    service: str  # the resource's service.name
    name: str
    kind: str
    trace_id: str  # hex, as in traceparent
    span_id: str
    parent_id: str  # "" for a root
    start_ns: int
    end_ns: int
    attributes: dict
    links: tuple[tuple[str, str], ...]  # (trace id, span id) of each link
    transport: str  # "http" or "grpc": how it arrived


def _value(any_value):
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def decode(request: trace_service_pb2.ExportTraceServiceRequest, transport: str) -> list[ReceivedSpan]:
    spans = []
    for resource_spans in request.resource_spans:
        resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
        for scope_spans in resource_spans.scope_spans:
            for s in scope_spans.spans:
                spans.append(ReceivedSpan(
                    resource.get("service.name", ""), s.name, KINDS.get(s.kind, "UNSPECIFIED"), s.trace_id.hex(),
                    s.span_id.hex(), s.parent_span_id.hex(), s.start_time_unix_nano, s.end_time_unix_nano,
                    {a.key: _value(a.value) for a in s.attributes},
                    tuple((link.trace_id.hex(), link.span_id.hex()) for link in s.links), transport))
    return spans


@dataclass
class OTLPReceiver:
    http_port: int = 0
    grpc_port: int = 0
    spans: list[ReceivedSpan] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def http_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    @property
    def grpc_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.grpc_port}"

    def add(self, spans: list[ReceivedSpan]) -> None:
        with self._lock:
            self.spans.extend(spans)

    def snapshot(self) -> list[ReceivedSpan]:
        with self._lock:
            return list(self.spans)

    def wait_for(self, done: Callable[[list[ReceivedSpan]], bool], timeout_s: float = 60,
                 explain: Callable[[list[ReceivedSpan]], str] | None = None) -> list[ReceivedSpan]:
        """The spans once ``done(spans)`` holds; at the deadline an AssertionError saying what is missing
        (``explain(spans)``), or listing what came."""
        deadline = time.monotonic() + timeout_s
        while not done(spans := self.snapshot()):
            if time.monotonic() > deadline:
                told = explain(spans) if explain else "received:\n" + "\n".join(
                    f"{s.service} {s.kind} {s.name} {s.trace_id}" for s in spans)
                raise AssertionError(f"spans still missing after {timeout_s} s; {told}")
            time.sleep(0.05)
        return spans

    def start(self) -> OTLPReceiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/traces" or self.headers.get("Content-Type") != "application/x-protobuf":
                    self.send_response(404)
                    self.end_headers()
                    return
                receiver.add(decode(trace_service_pb2.ExportTraceServiceRequest.FromString(body), "http"))
                reply = trace_service_pb2.ExportTraceServiceResponse().SerializeToString()
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, *args):  # quiet
                pass

        class TraceService(trace_service_pb2_grpc.TraceServiceServicer):
            def Export(self, request, context):  # the generated service's name
                receiver.add(decode(request, "grpc"))
                return trace_service_pb2.ExportTraceServiceResponse()

        self._http = ThreadingHTTPServer(("127.0.0.1", self.http_port), Handler)
        self.http_port = self._http.server_address[1]
        threading.Thread(target=self._http.serve_forever, daemon=True, name="otlp-http").start()
        self._grpc = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(TraceService(), self._grpc)
        self.grpc_port = self._grpc.add_insecure_port(f"127.0.0.1:{self.grpc_port}")
        self._grpc.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._grpc.stop(grace=None)
