"""Guarded-by-evidence answers: retrieve, pack what fits the LLM's context, generate with citations, stream.

The prompt is packed in the LLM's own tokens (its /tokenize): the conversation first, then as many retrieved
chunks as fit, best first, leaving room for the answer. When nothing relevant was retrieved the answer says so
and the LLM is not asked to invent one.

Spans, children of the request's: retrieval and rerank (nimrag.pipeline.retrieval), ``guardrails.retrieval``,
``prompt.pack`` (the LLM's /tokenize calls), then the LLM call (``llm chat.completions``) and the output rails
(``guardrails.output``), each lasting as long as the answer's stream.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from opentelemetry import trace

from nimrag.guardrails.runtime import PolicyRuntime, Verdict
from nimrag.pipeline.clients import ServiceClients
from nimrag.pipeline.retrieval import (
    Hit,
    Retriever,
    SearchOptions,
    elapsed_ms,
    hit_vectors,
    retrieval_query,
)
from nimrag.pipeline.vectorstore.base import ChunkId, VectorCollection
from nimrag.services.common.errors import InvalidRequestError

SYSTEM_PROMPT = ("You answer questions using only the numbered sources below. Cite the sources you use like [1]. "
                 "If the sources do not contain the answer, say that you do not know.")
NO_CONTEXT_ANSWER = "I could not find anything relevant to your question in the collection."
PROMPT_MARGIN_TOKENS = 16  # room for the template's own tokens around the packed sources
tracer = trace.get_tracer("nimrag.pipeline")


@dataclass(frozen=True)
class Citation:
    number: int
    source: str
    page: int | None
    chunk_index: int
    chunk_id: ChunkId
    score: float
    text: str
    collection_name: str

    def as_dict(self) -> dict:
        return asdict(self)


@dataclass
class AnswerEvent:
    kind: str  # "citations", "delta" or "done"
    text: str = ""
    citations: list[Citation] | None = None
    finish_reason: str | None = None
    usage: dict | None = None
    metrics: dict | None = None
    guardrails: dict | None = None  # the policy's verdict (on "done")


def source_block(number: int, hit: Hit) -> str:
    where = f"{hit.chunk.source}" + (f", page {hit.chunk.page}" if hit.chunk.page else "")
    return f"[{number}] ({where})\n{hit.chunk.text}"


def citation_of(number: int, hit: Hit) -> Citation:
    c = hit.chunk
    return Citation(number, c.source, c.page, c.index, hit.chunk_id, round(float(hit.score), 6), c.text,
                    hit.collection_name)


class Answerer:
    def __init__(self, clients: ServiceClients, retriever: Retriever):
        self.clients = clients
        self.retriever = retriever

    async def answer(self, collections: list[VectorCollection], turns: list[dict], options: SearchOptions, params: dict,
                     policy: PolicyRuntime | None = None, verdict: Verdict | None = None
                     ) -> AsyncIterator[AnswerEvent]:
        """The answer from ``collections`` (searched as one); ``params`` are the LLM's (max_tokens required)."""
        started = time.perf_counter()
        result = await self.retriever.search(collections, retrieval_query(turns), options)
        metrics = dict(result.timings_ms)
        hits = result.hits
        if policy and hits:
            vectors = await hit_vectors(hits)
            hits = [hits[i] for i in await policy.drop_injected([h.chunk.text for h in hits], vectors, verdict)]
        if not hits:
            yield AnswerEvent("citations", citations=[])
            yield AnswerEvent("delta", text=NO_CONTEXT_ANSWER)
            metrics["total_ms"] = elapsed_ms(started)
            yield AnswerEvent("done", finish_reason="stop", metrics=metrics, guardrails=_view(verdict),
                              usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            return
        with tracer.start_as_current_span("prompt.pack", attributes={"nimrag.pack.hits": len(hits)}) as span:
            messages, citations = await self.pack(turns, hits, params["max_tokens"])
            span.set_attribute("nimrag.pack.sources", len(citations))
        yield AnswerEvent("citations", citations=citations)
        async for event in generate(self.clients, messages, params, turns, started, metrics, policy, verdict):
            yield event

    async def pack(self, turns: list[dict], hits: list[Hit], max_tokens: int) -> tuple[list[dict], list[Citation]]:
        """The messages for the LLM: system prompt with the sources that fit, then the conversation."""
        base = [{"role": "system", "content": SYSTEM_PROMPT}, *turns]
        used, context = await self.clients.count_tokens(base)
        budget = context - max_tokens - used - PROMPT_MARGIN_TOKENS
        if budget <= 0:
            raise InvalidRequestError(f"The conversation ({used} tokens) and max_tokens ({max_tokens}) leave no "
                                      f"room for sources in the model's {context}-token context.",
                                      param="messages", code="context_length_exceeded")
        blocks = [source_block(n, hit) for n, hit in enumerate(hits, start=1)]
        sizes = await asyncio.gather(*[self.clients.count_tokens(text=b + "\n\n") for b in blocks])
        chosen, citations = [], []
        for number, (block, (size, _)) in enumerate(zip(blocks, sizes), start=1):
            if size > budget:
                break
            budget -= size
            chosen.append(block)
            citations.append(citation_of(number, hits[number - 1]))
        system = SYSTEM_PROMPT + "\n\nSources:\n\n" + "\n\n".join(chosen)
        return [{"role": "system", "content": system}, *turns], citations


def _view(verdict: Verdict | None) -> dict | None:
    return verdict.as_dict() if verdict else None


async def generate(clients: ServiceClients, messages: list[dict], params: dict, turns: list[dict], started: float,
                   metrics: dict, policy: PolicyRuntime | None, verdict: Verdict | None
                   ) -> AsyncIterator[AnswerEvent]:
    """The LLM's answer as events, through the policy's output rails when there is one; a blocked answer ends
    with the policy's refusal and ``content_filter``, as OpenAI ends filtered answers."""
    llm_started = time.perf_counter()
    outcome: dict = {}
    chunks = clients.chat_stream(messages, **params)  # made here: its span is the request's child, rails or not

    async def pieces() -> AsyncIterator[str]:
        async for chunk in chunks:
            if chunk.usage:
                outcome["usage"] = chunk.usage.model_dump(exclude_none=True)
            for choice in chunk.choices:
                outcome["finish"] = choice.finish_reason or outcome.get("finish")
                if choice.delta.content:
                    yield choice.delta.content

    stream = policy.guard_output(turns, pieces(), verdict) if policy else pieces()
    async for text in stream:
        metrics.setdefault("llm_ttft_ms", elapsed_ms(llm_started))
        yield AnswerEvent("delta", text=text)
    finish = outcome.get("finish") or "stop"
    if verdict and verdict.blocked_by:
        yield AnswerEvent("delta", text=("\n\n" if "llm_ttft_ms" in metrics else "") + verdict.refusal)
        finish = "content_filter"
    metrics["llm_ms"] = elapsed_ms(llm_started)
    metrics["total_ms"] = elapsed_ms(started)
    yield AnswerEvent("done", finish_reason=finish, usage=outcome.get("usage"), metrics=metrics,
                      guardrails=_view(verdict))
