"""Guarded-by-evidence answers: retrieve, pack what fits the LLM's context, generate with citations, stream.

The prompt is packed in the LLM's own tokens (its /tokenize): the conversation first, then as many retrieved
chunks as fit, best first, leaving room for the answer. When nothing relevant was retrieved the answer says so
and the LLM is not asked to invent one.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass

from pipeline.clients import ServiceClients
from pipeline.retrieval import (
    Hit,
    Retriever,
    SearchOptions,
    elapsed_ms,
    retrieval_query,
)
from services.common.errors import InvalidRequestError

SYSTEM_PROMPT = ("You answer questions using only the numbered sources below. Cite the sources you use like [1]. "
                 "If the sources do not contain the answer, say that you do not know.")
NO_CONTEXT_ANSWER = "I could not find anything relevant to your question in the collection."
PROMPT_MARGIN_TOKENS = 16  # room for the template's own tokens around the packed sources


@dataclass(frozen=True)
class Citation:
    number: int
    source: str
    page: int | None
    chunk_index: int
    chunk_id: int
    score: float
    text: str

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


def source_block(number: int, hit: Hit) -> str:
    where = f"{hit.chunk.source}" + (f", page {hit.chunk.page}" if hit.chunk.page else "")
    return f"[{number}] ({where})\n{hit.chunk.text}"


def citation_of(number: int, hit: Hit) -> Citation:
    c = hit.chunk
    return Citation(number, c.source, c.page, c.index, hit.chunk_id, round(float(hit.score), 6), c.text)


class Answerer:
    def __init__(self, clients: ServiceClients, retriever: Retriever):
        self.clients = clients
        self.retriever = retriever

    async def answer(self, collection, turns: list[dict], options: SearchOptions, max_tokens: int,
                     temperature: float, top_p: float | None = None) -> AsyncIterator[AnswerEvent]:
        started = time.perf_counter()
        result = await self.retriever.search(collection, retrieval_query(turns), options)
        metrics = dict(result.timings_ms)
        if not result.hits:
            yield AnswerEvent("citations", citations=[])
            yield AnswerEvent("delta", text=NO_CONTEXT_ANSWER)
            metrics["total_ms"] = elapsed_ms(started)
            yield AnswerEvent("done", finish_reason="stop", metrics=metrics,
                              usage={"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0})
            return
        messages, citations = await self.pack(turns, result.hits, max_tokens)
        yield AnswerEvent("citations", citations=citations)
        llm_started = time.perf_counter()
        finish, usage = None, None
        params = {"max_tokens": max_tokens, "temperature": temperature, **({"top_p": top_p} if top_p else {})}
        async for chunk in self.clients.chat_stream(messages, **params):
            if chunk.usage:
                usage = chunk.usage.model_dump(exclude_none=True)
            for choice in chunk.choices:
                if choice.delta.content:
                    metrics.setdefault("llm_ttft_ms", elapsed_ms(llm_started))
                    yield AnswerEvent("delta", text=choice.delta.content)
                finish = choice.finish_reason or finish
        metrics["llm_ms"] = elapsed_ms(llm_started)
        metrics["total_ms"] = elapsed_ms(started)
        yield AnswerEvent("done", finish_reason=finish or "stop", usage=usage, metrics=metrics)

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

