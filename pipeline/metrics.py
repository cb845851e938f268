"""The pipeline's own metrics, next to the request metrics every service has."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from nimrag.services.common.metrics import LATENCY_BUCKETS, ServiceMetrics


class PipelineMetrics:
    def __init__(self, base: ServiceMetrics):
        r = base.registry
        self.stage = Histogram("nimrag_rag_stage_seconds", "Time per answer stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.answers = Counter("nimrag_rag_answers", "Answers given", ["grounded"], registry=r)
        self.files = Counter("nimrag_ingested_files", "Files ingested, by outcome", ["status"], registry=r)
        self.chunks = Counter("nimrag_ingested_chunks", "Chunks indexed", registry=r)
        self.blocked = Counter("nimrag_guardrails_blocked", "Answers blocked by a guardrail, by rail", ["rail"],
                               registry=r)
        self.rails = Histogram("nimrag_guardrails_seconds", "Time in guardrails, by rail type", ["rails"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.masked = Counter("nimrag_guardrails_masked", "Sensitive data masked in answers, by kind", ["kind"],
                              registry=r)
        self.dropped = Counter("nimrag_guardrails_dropped_chunks", "Retrieved chunks dropped as injections",
                               registry=r)

    def observe_answer(self, metrics: dict, cited: int) -> None:
        for key, value in metrics.items():
            if key.endswith("_ms"):
                self.stage.labels(key.removesuffix("_ms")).observe(value / 1000)
        self.answers.labels("yes" if cited else "no").inc()

    def observe_file(self, status: str, chunks: int) -> None:
        self.files.labels(status).inc()
        if status in ("added", "replaced"):
            self.chunks.inc(chunks)

    def observe_guardrails(self, verdict: dict) -> None:
        if verdict["blocked_by"]:
            self.blocked.labels(verdict["blocked_by"]).inc()
        for key, value in verdict["timings_ms"].items():
            self.rails.labels(key.removesuffix("_rails_ms")).observe(value / 1000)
        for kind, count in verdict["masked"].items():
            self.masked.labels(kind).inc(count)
        self.dropped.inc(verdict["dropped_chunks"])
