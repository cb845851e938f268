"""The pipeline's own metrics, next to the request metrics every service has."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

from services.common.metrics import LATENCY_BUCKETS, ServiceMetrics


class PipelineMetrics:
    def __init__(self, base: ServiceMetrics):
        r = base.registry
        self.stage = Histogram("nimrag_rag_stage_seconds", "Time per answer stage", ["stage"],
                               buckets=LATENCY_BUCKETS, registry=r)
        self.answers = Counter("nimrag_rag_answers", "Answers given", ["grounded"], registry=r)
        self.files = Counter("nimrag_ingested_files", "Files ingested, by outcome", ["status"], registry=r)
        self.chunks = Counter("nimrag_ingested_chunks", "Chunks indexed", registry=r)

    def observe_answer(self, metrics: dict, cited: int) -> None:
        for key, value in metrics.items():
            if key.endswith("_ms"):
                self.stage.labels(key.removesuffix("_ms")).observe(value / 1000)
        self.answers.labels("yes" if cited else "no").inc()

    def observe_file(self, status: str, chunks: int) -> None:
        self.files.labels(status).inc()
        if status in ("added", "replaced"):
            self.chunks.inc(chunks)
