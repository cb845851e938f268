"""One pure-ASGI middleware for what every request needs: request id, API key, body size limit, metrics, access
log and a trace span (the child of the caller's, when it sent a W3C ``traceparent``). Pure ASGI rather than
BaseHTTPMiddleware: it costs microseconds and streams untouched."""

from __future__ import annotations

import hmac
import logging
import re
import time
import uuid

from opentelemetry import trace

from nimrag.services.common.errors import APIError, AuthenticationError, PayloadTooLargeError, error_response
from nimrag.services.common.fields import IGNORED_FIELDS_HEADER, ignored_fields_var, ignored_header_value
from nimrag.services.common.logs import request_id_var
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.tracing import extract_asgi

# Endpoints an orchestrator probes without credentials.
OPEN_PATHS = frozenset({"/v1/health/live", "/v1/health/ready", "/v1/health"})
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class RequestContextMiddleware:
    def __init__(self, app, *, metrics: ServiceMetrics, api_keys: list[str], max_body_bytes: int,
                 tracer: trace.Tracer):
        self.app = app
        self.metrics = metrics
        self.api_keys = [k.encode() for k in api_keys]
        self.max_body_bytes = max_body_bytes
        self.tracer = tracer
        self.log = logging.getLogger("nimrag.access")

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        headers = dict(scope["headers"])
        supplied = headers.get(b"x-request-id", b"").decode("latin-1")
        request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        token = request_id_var.set(request_id)
        ignored_fields: list[str] = []
        fields_token = ignored_fields_var.set(ignored_fields)
        status = {"code": 500}
        started = time.perf_counter()

        async def send_with_id(message):
            if message["type"] == "http.response.start":
                status["code"] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", request_id.encode())]
                if ignored_fields:  # named back, as vLLM logs them: see nimrag.services.common.fields
                    message["headers"].append((IGNORED_FIELDS_HEADER.encode(),
                                               ignored_header_value(ignored_fields)))
            await send(message)

        self.metrics.in_flight.inc()
        try:
            with self.tracer.start_as_current_span(f"{scope['method']} {scope['path']}",
                                                   context=extract_asgi(scope["headers"]),
                                                   kind=trace.SpanKind.SERVER) as span:
                span.set_attribute("nimrag.request_id", request_id)
                rejection = self._check_auth(scope["path"], headers)
                body_receive = None if rejection else await self._read_body(headers, receive)
                if isinstance(body_receive, APIError):
                    rejection = body_receive
                if rejection:
                    await error_response(rejection)(scope, receive, send_with_id)
                else:
                    await self.app(scope, body_receive, send_with_id)
                span.set_attribute("http.status_code", status["code"])
        finally:
            self.metrics.in_flight.dec()
            route = scope.get("route")
            route_path = getattr(route, "path", "unmatched")
            elapsed = time.perf_counter() - started
            self.metrics.requests.labels(route_path, scope["method"], str(status["code"])).inc()
            self.metrics.latency.labels(route_path).observe(elapsed)
            self.log.info("request", extra={"method": scope["method"], "path": scope["path"],
                                            "status": status["code"], "ms": round(elapsed * 1000, 2)})
            request_id_var.reset(token)
            ignored_fields_var.reset(fields_token)

    def _check_auth(self, path: str, headers: dict[bytes, bytes]) -> APIError | None:
        if not self.api_keys or path in OPEN_PATHS:
            return None
        auth = headers.get(b"authorization", b"")
        scheme, _, key = auth.partition(b" ")
        if scheme.lower() == b"bearer" and any(hmac.compare_digest(key.strip(), k) for k in self.api_keys):
            return None
        return AuthenticationError()

    async def _read_body(self, headers: dict[bytes, bytes], receive):
        """Read the whole body up to the limit (rejecting early on Content-Length) and replay it to the app."""
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_body_bytes:
            return PayloadTooLargeError(self.max_body_bytes)
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                chunks = None  # client disconnected: pass it on
                disconnect = message
                break
            size += len(message.get("body", b""))
            if size > self.max_body_bytes:
                return PayloadTooLargeError(self.max_body_bytes)
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay():
            nonlocal replayed
            if chunks is None:
                return disconnect
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return replay
