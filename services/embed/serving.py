"""The embedding serving layer: owns tokenizer, engine and batcher; turns a request into a response body.

pre (validate, prefix, tokenize, truncate) -> core (batched engine call in a worker thread) -> post (dimensions,
encoding, usage), as in michaelfeil/infinity.
"""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import orjson

from nimrag.services.common.errors import InvalidRequestError
from nimrag.services.common.serving import INLINE_WORK_CHARS, BatchedServing
from nimrag.services.common.triton import TritonModel
from nimrag.services.embed.engines import EmbeddingEngine, create_engine
from nimrag.services.embed.model import EmbeddingModelInfo
from nimrag.services.embed.protocol import EmbeddingRequest
from nimrag.services.embed.settings import EmbedSettings
from nimrag.services.embed.tokenization import InputTooLongError, TextTokenizer

INPUT_TYPE_SUFFIXES = {"-query": "query", "-passage": "passage"}


class EmbeddingServing(BatchedServing):
    service = "embed"
    settings: EmbedSettings
    model: EmbeddingModelInfo
    tokenizer: TextTokenizer | None = None
    engine: EmbeddingEngine | None = None

    # --- life cycle -------------------------------------------------------------------------------------------
    def load_blocking(self) -> None:
        self.tokenizer = TextTokenizer(self.model.path, self.model.max_tokens)
        triton = TritonModel.from_settings(self.settings) if self.profile.backend == "triton" else None
        self.engine = create_engine(self.profile, self.model, self.tokenizer,
                                    self.profile.resolved_threads(self.hardware), Path(self.settings.cache_path),
                                    triton)
        self.upstream = self.engine.upstream  # the warm-up waits for Triton: readiness names it meanwhile
        self.engine.warm_up()

    def run_batch(self, ids: list[list[int]]) -> list[np.ndarray]:
        return list(self.engine.embed(ids))

    # --- identity ---------------------------------------------------------------------------------------------
    def resolve_input_type(self, requested_model: str | None) -> str | None:
        """Validate ``model``; a ``-query``/``-passage`` suffix on the served name selects the input type."""
        for suffix, input_type in INPUT_TYPE_SUFFIXES.items():
            if requested_model == self.served_model_name + suffix:
                return input_type
        self.resolve_model(requested_model)
        return None

    def model_cards(self) -> list[dict]:
        cards = super().model_cards()
        for card in cards:
            card["max_model_len"] = self.model.max_tokens
        return cards

    def metadata(self) -> dict:
        return {"model": {"name": self.model.name, "path": str(self.model.path),
                          "dimension": self.engine.dimension if self.engine else self.model.dimension,
                          "max_tokens": self.model.max_tokens, "pooling": self.model.pooling,
                          "normalized": self.model.normalize, "asymmetric": self.model.asymmetric,
                          "matryoshka_dims": list(self.model.matryoshka_dims)},
                "engine": self.engine.describe() if self.engine else None}

    # --- pre --------------------------------------------------------------------------------------------------
    def _texts(self, raw: str | list) -> list[str]:
        texts = [raw] if isinstance(raw, str) else raw
        if not texts:
            raise InvalidRequestError("input must not be empty: send a text or a list of texts.", param="input")
        if len(texts) > self.settings.max_inputs:
            raise InvalidRequestError(f"input has {len(texts)} items, more than the limit of "
                                      f"{self.settings.max_inputs} per request.", param="input",
                                      code="too_many_inputs")
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                kind = "token ids" if isinstance(text, (int, list)) else type(text).__name__
                raise InvalidRequestError(f"input[{i}] is {kind}, not a string; this service embeds text only.",
                                          param="input")
            if not text.strip():
                raise InvalidRequestError(f"input[{i}] is empty; every input must contain text.", param="input")
            if len(text) > self.settings.max_chars:
                raise InvalidRequestError(f"input[{i}] has {len(text)} characters, more than the limit of "
                                          f"{self.settings.max_chars}.", param="input", code="input_too_long")
        return texts

    def _prefix(self, input_type: str | None) -> str:
        if input_type is None:
            if self.model.asymmetric:
                raise InvalidRequestError(f"input_type is required for the asymmetric model '{self.model.name}': "
                                          "set it to 'query' or 'passage'.", param="input_type")
            return ""
        return self.model.query_prefix if input_type == "query" else self.model.passage_prefix

    def _dimensions(self, requested: int | None) -> int:
        native = self.engine.dimension
        if requested is None or requested == native:
            return native
        if requested in self.model.matryoshka_dims and requested < native:
            return requested
        allowed = ", ".join(str(d) for d in sorted({*self.model.matryoshka_dims, native}) if d <= native)
        raise InvalidRequestError(f"dimensions={requested} is not supported by '{self.model.name}'; "
                                  f"supported: {allowed}.", param="dimensions", code="unsupported_dimensions")

    async def _tokenize(self, texts: list[str], truncate: str) -> list[list[int]]:
        try:
            large = sum(map(len, texts)) > INLINE_WORK_CHARS
            return await self.off_loop_if(large, self.tokenizer.encode, texts, truncate)
        except InputTooLongError as exc:
            self.metrics.rejected.labels("input_too_long").inc()
            raise InvalidRequestError(str(exc), param="input", code="input_too_long") from exc

    # --- the endpoint's work ----------------------------------------------------------------------------------
    async def create_embeddings(self, request: EmbeddingRequest) -> bytes:
        self.ensure_ready()
        suffix_type = self.resolve_input_type(request.model)
        texts = self._texts(request.input)
        prefix = self._prefix(request.input_type or suffix_type)
        dims = self._dimensions(request.dimensions)
        self.admit(len(texts))
        ids = await self._tokenize([prefix + t for t in texts] if prefix else texts, request.truncate)
        vectors = np.stack(await self.batcher.submit(ids, [len(x) for x in ids]))
        tokens = sum(map(len, ids))
        self.metrics.tokens.inc(tokens)
        return self._response(vectors, dims, request.encoding_format, tokens, request.model)

    # --- post -------------------------------------------------------------------------------------------------
    def _response(self, vectors: np.ndarray, dims: int, encoding: str, tokens: int, model: str | None) -> bytes:
        if dims < vectors.shape[1]:  # Matryoshka: keep the leading dimensions, then renormalize
            vectors = vectors[:, :dims]
            if self.model.normalize:
                vectors = vectors / np.clip(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12, None)
        vectors = np.ascontiguousarray(vectors, dtype="<f4")
        if encoding == "base64":
            data = [{"object": "embedding", "index": i, "embedding": base64.b64encode(v.tobytes()).decode()}
                    for i, v in enumerate(vectors)]
        else:
            data = [{"object": "embedding", "index": i, "embedding": v} for i, v in enumerate(vectors)]
        return orjson.dumps({"object": "list", "data": data, "model": model or self.served_model_name,
                             "usage": {"prompt_tokens": tokens, "total_tokens": tokens}},
                            option=orjson.OPT_SERIALIZE_NUMPY)
