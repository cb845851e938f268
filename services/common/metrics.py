"""Prometheus metrics, one registry per app (no process-wide globals, so apps can live side by side in tests).

Each registry also carries the process's own metrics, as prometheus_client's default registry would: CPU seconds,
memory, open files (``process_*``, on Linux), the Python version (``python_info``) and garbage collections
(``python_gc_*``). Served at ``/v1/metrics`` (NIM's path) and ``/metrics`` (where scrapers look by default)."""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)


class ServiceMetrics:
    def __init__(self, service: str):
        self.registry = CollectorRegistry()
        r = self.registry
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.requests = Counter("nimrag_requests", "HTTP requests answered", ["route", "method", "status"],
                                registry=r)
        self.latency = Histogram("nimrag_request_latency_seconds", "HTTP request latency", ["route"],
                                 buckets=LATENCY_BUCKETS, registry=r)
        self.in_flight = Gauge("nimrag_requests_in_flight", "Requests being served", registry=r)
        self.queue_depth = Gauge("nimrag_queue_depth", "Items waiting for the engine", registry=r)
        self.batch_size = Histogram("nimrag_batch_size", "Items per engine batch", buckets=BATCH_BUCKETS,
                                    registry=r)
        self.batch_latency = Histogram("nimrag_batch_latency_seconds", "Engine time per batch",
                                       buckets=LATENCY_BUCKETS, registry=r)
        self.tokens = Counter("nimrag_prompt_tokens", "Input tokens processed", registry=r)
        self.rejected = Counter("nimrag_rejected_requests", "Requests refused by a limit", ["reason"], registry=r)
        self.info = Gauge("nimrag_service_info", "Service, model and profile being served",
                          ["service", "model", "profile"], registry=r)
        self.service = service

    def render(self) -> bytes:
        return generate_latest(self.registry)
