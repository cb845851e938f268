"""The LLM's metrics under the names NIM (and vLLM) publish, in the service's own registry."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from services.common.metrics import LATENCY_BUCKETS, ServiceMetrics

TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)


class LLMMetrics:
    def __init__(self, base: ServiceMetrics):
        r = base.registry
        self.running = Gauge("num_requests_running", "Sequences being decoded", registry=r)
        self.waiting = Gauge("num_requests_waiting", "Sequences waiting for a free slot", registry=r)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("generation_tokens", "Tokens generated", registry=r)
        self.success = Counter("request_success", "Requests finished", ["finished_reason"], registry=r)
        self.failure = Counter("request_failure", "Requests that failed or were abandoned", ["reason"], registry=r)
        self.ttft = Histogram("time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("time_per_output_token_seconds", "Time between generated tokens",
                              buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("e2e_request_latency_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS,
                             registry=r)
