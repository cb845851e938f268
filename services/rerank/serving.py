"""The reranking serving layer: owns the scorer and its batcher; validates, scores and shapes both APIs' answers."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import numpy as np
import orjson

from services.common.batching import BatchLimits, DynamicBatcher
from services.common.errors import InvalidRequestError
from services.common.hardware import HardwareInfo
from services.common.metrics import ServiceMetrics
from services.common.profiles import ProfileChoice
from services.common.serving import ModelServing
from services.rerank.model import RerankModelInfo
from services.rerank.protocol import RankingRequest, RerankRequest
from services.rerank.scorers import Prepared, RankingTooLongError, Scorer, create_scorer
from services.rerank.settings import RerankSettings

# Below this many characters tokenizing inline is cheaper than a hop to a worker thread.
INLINE_TOKENIZE_CHARS = 4096


class RerankServing(ModelServing):
    service = "rerank"

    def __init__(self, *, settings: RerankSettings, model: RerankModelInfo, choice: ProfileChoice,
                 hardware: HardwareInfo, metrics: ServiceMetrics):
        super().__init__(choice=choice, hardware=hardware, metrics=metrics, served_model_name=model.name)
        self.settings = settings
        self.model = model
        self.scorer: Scorer | None = None
        self.batcher: DynamicBatcher | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    def load_blocking(self) -> None:
        self.scorer = create_scorer(self.model, self.profile, self.profile.resolved_threads(self.hardware),
                                    Path(self.settings.cache_path))
        self.scorer.warm_up()

    async def on_loaded(self) -> None:
        wait_ms = self.settings.max_batch_wait_ms
        limits = BatchLimits(max_items=self.settings.max_batch_items or self.profile.max_batch_items,
                             max_tokens=self.profile.max_batch_tokens,
                             max_wait_s=(self.profile.batch_wait_ms if wait_ms is None else wait_ms) / 1000,
                             max_queue_items=self.settings.max_queue_items,
                             max_padding_ratio=self.profile.max_padding_ratio)
        self.batcher = DynamicBatcher(self.scorer.run_batch, limits, self.metrics, name="rerank")
        self.batcher.start()

    async def stop(self) -> None:
        if self.batcher:
            await self.batcher.stop()

    # --- identity ---------------------------------------------------------------------------------------------
    def model_cards(self) -> list[dict]:
        return [{**card, "max_model_len": self.model.max_tokens, "scorer": self.model.scorer}
                for card in super().model_cards()]

    def metadata(self) -> dict:
        return {"model": {"name": self.model.name, "path": str(self.model.path), "scorer": self.model.scorer,
                          "scorer_description": self.model.describe_scorer, "max_tokens": self.model.max_tokens},
                "engine": self.scorer.describe() if self.scorer else None}

    # --- the work ---------------------------------------------------------------------------------------------
    def _check(self, query: str, passages: list[str]) -> None:
        if not query.strip():
            raise InvalidRequestError("query is empty; send the text to rank passages against.", param="query")
        if not passages:
            raise InvalidRequestError("passages must not be empty: send at least one passage to rank.",
                                      param="passages")
        if len(passages) > self.settings.max_passages:
            raise InvalidRequestError(f"{len(passages)} passages, more than the limit of "
                                      f"{self.settings.max_passages} per request.", param="passages",
                                      code="too_many_passages")
        for name, text in (("query", query), *((f"passages[{i}]", p) for i, p in enumerate(passages))):
            if len(text) > self.settings.max_chars:
                raise InvalidRequestError(f"{name} has {len(text)} characters, more than the limit of "
                                          f"{self.settings.max_chars}.", param=name.split("[")[0],
                                          code="input_too_long")
        empty = next((i for i, p in enumerate(passages) if not p.strip()), None)
        if empty is not None:
            raise InvalidRequestError(f"passages[{empty}] is empty; every passage must contain text.",
                                      param="passages")

    async def _prepare(self, query: str, passages: list[str], truncate: str) -> Prepared:
        try:
            if len(query) + sum(map(len, passages)) <= INLINE_TOKENIZE_CHARS:
                return self.scorer.prepare(query, passages, truncate)
            return await asyncio.to_thread(self.scorer.prepare, query, passages, truncate)
        except RankingTooLongError as exc:
            self.metrics.rejected.labels("input_too_long").inc()
            raise InvalidRequestError(str(exc), param="passages", code="input_too_long") from exc

    async def score(self, model: str | None, query: str, passages: list[str], truncate: str) -> tuple[np.ndarray, int]:
        """One score per passage, in input order, and the tokens processed."""
        self.ensure_ready()
        self.resolve_model(model)
        self._check(query, passages)
        prepared = await self._prepare(query, passages, truncate)
        results = await self.batcher.submit(prepared.items, prepared.costs)
        self.metrics.tokens.inc(prepared.tokens)
        return self.scorer.scores(results), prepared.tokens

    async def ranking(self, request: RankingRequest) -> bytes:
        passages = [p.text for p in request.passages]
        scores, _ = await self.score(request.model, request.query.text, passages, request.truncate)
        order = np.argsort(-scores, kind="stable")
        return orjson.dumps({"rankings": [{"index": int(i), "logit": float(scores[i])} for i in order]})

    async def rerank(self, request: RerankRequest) -> bytes:
        documents = [d if isinstance(d, str) else d.text for d in request.documents]
        scores, tokens = await self.score(request.model, request.query, documents, request.truncate)
        relevance = self.scorer.relevance(scores)
        order = np.argsort(-scores, kind="stable")[: request.top_n]
        results = []
        for i in order:
            result = {"index": int(i), "relevance_score": float(relevance[i])}
            if request.return_documents:
                result["document"] = {"text": documents[i]}
            results.append(result)
        return orjson.dumps({"id": f"rerank-{uuid.uuid4().hex}", "model": request.model or self.served_model_name,
                             "results": results, "usage": {"total_tokens": tokens}})
