"""The LLM's metrics under the names NIM (and vLLM) publish, in the service's own registry.

NIM's per-request token histograms (``request_prompt_tokens``, ``request_generation_tokens``) and the admitted
concurrency (``num_request_max``) carry the ``model_name`` label, as NIM's do; one finished request is one
observation (all its prompts, all its choices).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

from nimrag.services.common.metrics import LATENCY_BUCKETS, ServiceMetrics

TOKEN_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1)
# vLLM's 1-2-5 series of token counts (it stops at the context length, unknown until the model is loaded).
TOKEN_COUNT_BUCKETS = tuple(m * 10 ** e for e in range(7) for m in (1, 2, 5))


class LLMMetrics:
    def __init__(self, base: ServiceMetrics, model_name: str):
        r = base.registry
        self.model_name = model_name
        self.running = Gauge("num_requests_running", "Sequences being decoded", registry=r)
        self.waiting = Gauge("num_requests_waiting", "Sequences waiting for a free slot", registry=r)
        self.request_max = Gauge("num_request_max", "Max number of sequences the engine runs concurrently",
                                 ["model_name"], registry=r)
        self.prompt_tokens = Counter("prompt_tokens", "Prompt tokens processed", registry=r)
        self.generation_tokens = Counter("generation_tokens", "Tokens generated", registry=r)
        # The model's series exist from the start (zero), as a dashboard's rate() needs them before traffic.
        self.request_prompt_tokens = Histogram("request_prompt_tokens", "Prompt tokens per finished request",
                                               ["model_name"], buckets=TOKEN_COUNT_BUCKETS,
                                               registry=r).labels(model_name)
        self.request_generation_tokens = Histogram("request_generation_tokens",
                                                   "Generated tokens per finished request", ["model_name"],
                                                   buckets=TOKEN_COUNT_BUCKETS, registry=r).labels(model_name)
        self.success = Counter("request_success", "Requests finished", ["finished_reason"], registry=r)
        self.failure = Counter("request_failure", "Requests that failed or were abandoned", ["reason"], registry=r)
        self.ttft = Histogram("time_to_first_token_seconds", "Arrival to first generated token",
                              buckets=LATENCY_BUCKETS, registry=r)
        self.tpot = Histogram("time_per_output_token_seconds", "Time between generated tokens",
                              buckets=TOKEN_LATENCY_BUCKETS, registry=r)
        self.e2e = Histogram("e2e_request_latency_seconds", "Arrival to last token", buckets=LATENCY_BUCKETS,
                             registry=r)

    def engine_loaded(self, slots: int) -> None:
        self.request_max.labels(self.model_name).set(slots)

    def request_finished(self, prompt_tokens: int, generated_tokens: int) -> None:
        self.request_prompt_tokens.observe(prompt_tokens)
        self.request_generation_tokens.observe(generated_tokens)
