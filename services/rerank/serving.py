"""The reranking serving layer: owns the scorer and its batcher; validates, scores and shapes both APIs' answers."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import orjson

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.common.serving import INLINE_WORK_CHARS, BatchedServing
from nimrag.services.common.triton import TritonModel
from nimrag.services.rerank.model import RerankModelInfo
from nimrag.services.rerank.protocol import RankingRequest, RerankRequest
from nimrag.services.rerank.scorers import Prepared, RankingTooLongError, Scorer, create_scorer
from nimrag.services.rerank.settings import RerankSettings

INLINE_SCORE_TOKENS = 2048  # above this many tokens per request, scoring runs in a worker thread


class RerankServing(BatchedServing):
    service = "rerank"
    settings: RerankSettings
    model: RerankModelInfo
    scorer: Scorer | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    def load_blocking(self) -> None:
        triton = TritonModel.from_settings(self.settings) if self.profile.backend == "triton" else None
        self.scorer = create_scorer(self.model, self.profile, self.profile.resolved_threads(self.hardware),
                                    Path(self.settings.cache_path), triton)
        self.upstream = self.scorer.upstream  # the warm-up waits for Triton: readiness names it meanwhile
        self.scorer.warm_up()

    def run_batch(self, items: list) -> list:
        return self.scorer.run_batch(items)

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
            large = len(query) + sum(map(len, passages)) > INLINE_WORK_CHARS
            return await self.off_loop_if(large, self.scorer.prepare, query, passages, truncate)
        except RankingTooLongError as exc:
            self.metrics.rejected.labels("input_too_long").inc()
            raise InvalidRequestError(str(exc), param="passages", code="input_too_long") from exc

    async def score(self, model: str | None, query: str, passages: list[str], truncate: str) -> tuple[np.ndarray, int]:
        """One score per passage, in input order, and the tokens processed."""
        self.ensure_ready()
        self.resolve_model(model)
        self._check(query, passages)
        self.admit(len(passages))
        prepared = await self._prepare(query, passages, truncate)
        results = await self.batcher.submit(prepared.items, prepared.costs)
        self.metrics.tokens.inc(prepared.tokens)
        # Late interaction's MaxSim costs ~query x passage tokens x dimensions: tens of ms for hundreds of passages.
        scores = await self.off_loop_if(prepared.tokens > INLINE_SCORE_TOKENS, self.scorer.scores, results)
        return scores, prepared.tokens

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
