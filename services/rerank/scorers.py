"""Scorers behind one small interface: turn (query, passages) into items for the batcher, score a batch of items,
and read one score per passage from the results.

- CrossEncoderScorer: query and passage tokenized as one pair, one logit per pair (PyTorch or ONNX Runtime).
- LateInteractionScorer: query and passages encoded separately by the embedding engines; MaxSim over their
  token embeddings (the default on the bundled MiniLM: bench/rerank_quality.py measured nDCG@10 0.692 vs 0.646
  on SciFact, 0.921 vs 0.799 on SQuAD, 0.387 vs 0.398 on Cranfield, reranking BM25's top 100).
- BiEncoderScorer: the same encoders' pooled embeddings, scored by cosine.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nimrag.services.common.memory import onnx_run_options
from nimrag.services.common.padding import pad, pad_zeros
from nimrag.services.common.profiles import Profile
from nimrag.services.common.triton import TritonModel
from nimrag.services.rerank.model import BI_ENCODER, CROSS_ENCODER, LATE_INTERACTION, RerankModelInfo

WARMUP = ("warm-up query", ["a passage", "a somewhat longer passage, so more than one length is seen"])


class RankingTooLongError(ValueError):
    """A query or query+passage is over the token limit under truncate=NONE (or the query alone is)."""


@dataclass(frozen=True)
class Prepared:
    items: list[Any]
    costs: list[int]  # tokens per item, for batching
    tokens: int  # tokens processed, for usage


class Scorer(ABC):
    kind: str
    upstream = None  # the server it forwards to (nimrag.services.common.triton.TritonModel), whose readiness is ours

    def __init__(self, model: RerankModelInfo, profile: Profile):
        self.model = model
        self.profile = profile

    @abstractmethod
    def prepare(self, query: str, passages: list[str], truncate: str) -> Prepared:
        """Tokenize and check lengths (cheap; may run on the event loop for small requests)."""

    @abstractmethod
    def run_batch(self, items: list[Any]) -> list[Any]:
        """Model work on a batch of items; runs in the batcher's worker thread."""

    @abstractmethod
    def scores(self, results: list[Any]) -> np.ndarray:
        """One score (NIM's ``logit``) per passage from the results of one request's items, in order."""

    @abstractmethod
    def relevance(self, scores: np.ndarray) -> np.ndarray:
        """``relevance_score`` for the Cohere-style API."""

    def warm_up(self) -> None:
        prepared = self.prepare(WARMUP[0], list(WARMUP[1]), "END")
        self.scores(self.run_batch(prepared.items))

    def describe(self) -> dict:
        return {"scorer": self.kind, "backend": self.profile.backend, "device": self.profile.device,
                "precision": self.profile.precision}


class _EncoderScorer(Scorer):
    """Query and passages encoded separately (as many items), by the embedding service's engines."""

    def __init__(self, model: RerankModelInfo, profile: Profile, threads: int, cache_dir: Path,
                 triton: TritonModel | None = None):
        super().__init__(model, profile)
        from nimrag.services.embed.engines import create_engine
        from nimrag.services.embed.model import load_model_info
        from nimrag.services.embed.settings import EmbedSettings
        from nimrag.services.embed.tokenization import TextTokenizer

        # Prompts come from the model folder only (None: the model's own), never from the embed service's env.
        info = load_model_info(EmbedSettings(model=str(model.path), max_tokens=model.max_tokens,
                                             served_model_name=model.name, query_prefix=None,
                                             passage_prefix=None, matryoshka_dims=""))
        self.query_prefix, self.passage_prefix = info.query_prefix, info.passage_prefix
        self.tokenizer = TextTokenizer(info.path, info.max_tokens)
        self.engine = create_engine(profile, info, self.tokenizer, threads, cache_dir, triton)
        self.upstream = self.engine.upstream

    def warm_up(self) -> None:
        self.engine.warm_up()  # the triton engine reads its model's interface here
        super().warm_up()

    def describe(self) -> dict:
        return {**self.engine.describe(), **super().describe()}  # its ONNX file, or Triton's address and model

    def prepare(self, query: str, passages: list[str], truncate: str) -> Prepared:
        from nimrag.services.embed.tokenization import InputTooLongError

        texts = [self.query_prefix + query, *(self.passage_prefix + p for p in passages)]
        try:
            ids = self.tokenizer.encode(texts, truncate)
        except InputTooLongError as exc:
            what = "query" if exc.index == 0 else f"passages[{exc.index - 1}]"
            raise RankingTooLongError(f"{what} has {exc.length} tokens, more than the model's limit of "
                                      f"{exc.limit}; shorten it or set truncate to END.") from None
        costs = [len(x) for x in ids]
        return Prepared(ids, costs, sum(costs))

    def relevance(self, scores: np.ndarray) -> np.ndarray:
        return scores  # already a similarity in [-1, 1]


def _unit_rows(x: np.ndarray) -> np.ndarray:
    return x / np.clip(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12, None)


class BiEncoderScorer(_EncoderScorer):
    kind = BI_ENCODER

    def run_batch(self, items: list[list[int]]) -> list[np.ndarray]:
        return list(self.engine.embed(items))

    def scores(self, results: list[np.ndarray]) -> np.ndarray:
        vectors = _unit_rows(np.stack(results))
        return vectors[1:] @ vectors[0]


class LateInteractionScorer(_EncoderScorer):
    kind = LATE_INTERACTION

    def run_batch(self, items: list[list[int]]) -> list[np.ndarray]:
        # [CLS] and [SEP] are left out: they carry no term of their own (measured slightly better without them).
        return [_unit_rows(tokens[1:-1]) for tokens in self.engine.token_embeddings(items)]

    def scores(self, results: list[np.ndarray]) -> np.ndarray:
        query, passages = results[0], results[1:]
        if not len(query):
            return np.zeros(len(passages), dtype=np.float32)
        return np.array([(query @ p.T).max(axis=1).mean() if len(p) else -1.0 for p in passages],
                        dtype=np.float32)


class CrossEncoderScorer(Scorer):
    kind = CROSS_ENCODER

    def __init__(self, model: RerankModelInfo, profile: Profile):
        super().__init__(model, profile)
        from tokenizers import Tokenizer
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(model.path), local_files_only=True)
        self.pad_id = hf.pad_token_id if hf.pad_token_id is not None else 0
        self.input_names = tuple(hf.model_input_names)
        self._full = Tokenizer.from_str(hf.backend_tokenizer.to_str())
        self._full.no_padding()
        self._full.no_truncation()
        self._cut = Tokenizer.from_str(self._full.to_str())
        self._cut.enable_truncation(model.max_tokens, strategy="only_second")
        self._special = self._full.num_special_tokens_to_add(is_pair=True)

    def prepare(self, query: str, passages: list[str], truncate: str) -> Prepared:
        limit = self.model.max_tokens
        query_tokens = len(self._full.encode(query, add_special_tokens=False).ids)
        if query_tokens + self._special + 1 > limit:
            raise RankingTooLongError(f"query has {query_tokens} tokens; with a passage and "
                                      f"{self._special} special tokens it cannot fit the limit of {limit}.")
        encodings = self._full.encode_batch([(query, p) for p in passages])
        over = [i for i, e in enumerate(encodings) if len(e.ids) > limit]
        if over and truncate == "NONE":
            i, total = over[0], len(encodings[over[0]].ids)
            raise RankingTooLongError(
                f"query ({query_tokens} tokens) + passages[{i}] ({total - query_tokens - self._special} tokens) "
                f"+ {self._special} special tokens = {total} tokens, more than the model's limit of {limit}; "
                "shorten it or set truncate to END.")
        for i, enc in zip(over, self._cut.encode_batch([(query, passages[i]) for i in over])):
            encodings[i] = enc
        items = [(e.ids, e.type_ids) for e in encodings]
        costs = [len(ids) for ids, _ in items]
        return Prepared(items, costs, sum(costs))

    def run_batch(self, items: list[tuple[list[int], list[int]]]) -> list[float]:
        input_ids, mask = pad([ids for ids, _ in items], self.pad_id)
        type_ids = pad_zeros([types for _, types in items], input_ids.shape[1])
        return list(self._logits(input_ids, mask, type_ids))

    @abstractmethod
    def _logits(self, input_ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        """One logit per row."""

    def logits(self, input_ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        """One logit per row of a padded int64 batch (also what ``nimrag triton serve`` runs)."""
        return self._logits(input_ids, mask, type_ids)

    def scores(self, results: list[float]) -> np.ndarray:
        return np.asarray(results, dtype=np.float32)

    def relevance(self, scores: np.ndarray) -> np.ndarray:
        return 1.0 / (1.0 + np.exp(-scores))  # sentence-transformers' CrossEncoder activation for one label


class TorchCrossEncoder(CrossEncoderScorer):
    def __init__(self, model: RerankModelInfo, profile: Profile, threads: int):
        super().__init__(model, profile)
        import torch
        from transformers import AutoModelForSequenceClassification

        self._torch = torch
        if profile.device == "cpu":
            torch.set_num_threads(threads)
        self.device = "cuda" if profile.device == "cuda" else "cpu"
        net = AutoModelForSequenceClassification.from_pretrained(str(model.path), local_files_only=True).eval()
        dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(profile.precision)
        if dtype is not None and self.device == "cuda":
            net = net.to(dtype)
        self._autocast_dtype = dtype if self.device == "cpu" else None
        self._net = net.to(self.device)

    def _logits(self, input_ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        torch = self._torch
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
        tensors = {n: torch.from_numpy(feeds[n]).to(self.device) for n in self.input_names if n in feeds}
        autocast = (torch.autocast("cpu", dtype=self._autocast_dtype) if self._autocast_dtype
                    else contextlib.nullcontext())
        with torch.inference_mode(), autocast:
            logits = self._net(**tensors).logits
        return logits[:, 0].float().cpu().numpy()


class OnnxCrossEncoder(CrossEncoderScorer):
    def __init__(self, model: RerankModelInfo, profile: Profile, threads: int, cache_dir: Path):
        super().__init__(model, profile)
        from nimrag.services.common.onnx_models import cpu_session, prepare_onnx

        self.model_file = prepare_onnx(model.path, model.name, self.input_names, "logits", profile.precision,
                                       cache_dir)
        self._session = cpu_session(self.model_file, threads)
        self._inputs = [i.name for i in self._session.get_inputs()]

    def _logits(self, input_ids: np.ndarray, mask: np.ndarray, type_ids: np.ndarray) -> np.ndarray:
        feeds = {"input_ids": input_ids, "attention_mask": mask, "token_type_ids": type_ids}
        return self._session.run(None, {n: feeds[n] for n in self._inputs}, onnx_run_options())[0][:, 0]

    def describe(self) -> dict:
        return {**super().describe(), "onnx_file": str(self.model_file)}


def create_scorer(model: RerankModelInfo, profile: Profile, threads: int, cache_dir: Path,
                  triton: TritonModel | None = None) -> Scorer:
    """The model's scorer on the profile's engine; the ``triton`` backend calls ``triton``."""
    if model.scorer == LATE_INTERACTION:
        return LateInteractionScorer(model, profile, threads, cache_dir, triton)
    if model.scorer == BI_ENCODER:
        return BiEncoderScorer(model, profile, threads, cache_dir, triton)
    if profile.backend == "triton":
        from nimrag.services.rerank.triton import TritonCrossEncoder

        return TritonCrossEncoder(model, profile, triton)
    if profile.backend == "onnxruntime":
        return OnnxCrossEncoder(model, profile, threads, cache_dir)
    return TorchCrossEncoder(model, profile, threads)
