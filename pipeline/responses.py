"""Answers in OpenAI's shapes: ``chat.completion`` and SSE ``chat.completion.chunk``, with citations attached
(on the first chunk; empty when the request turned them off, as the Blueprint's ``enable_citations``) and a final
chunk carrying usage and the timing metrics."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import orjson

from nimrag.pipeline.answer import AnswerEvent
from nimrag.services.common.errors import APIError, error_body


class AnswerShape:
    def __init__(self, model: str, with_citations: bool = True):
        self.id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.with_citations = with_citations

    def _citations(self, citations) -> dict:
        results = [c.as_dict() for c in citations or ()] if self.with_citations else []
        return {"total_results": len(results), "results": results}

    def _chunk(self, delta: dict, finish: str | None = None, **extra) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "choices": [{"index": 0, "delta": delta, "finish_reason": finish}], **extra}

    async def stream(self, events: AsyncIterator[AnswerEvent]) -> AsyncIterator[bytes]:
        try:
            async for event in events:
                if event.kind == "citations":
                    yield _sse(self._chunk({"role": "assistant", "content": ""},
                                           citations=self._citations(event.citations)))
                elif event.kind == "delta":
                    yield _sse(self._chunk({"content": event.text}))
                else:
                    yield _sse(self._chunk({}, event.finish_reason, usage=event.usage, metrics=event.metrics,
                                           guardrails=event.guardrails))
        except APIError as exc:  # headers are gone: report in-band, in the one error shape
            yield b"data: " + error_body(exc) + b"\n\n"
        yield b"data: [DONE]\n\n"

    async def whole(self, events: AsyncIterator[AnswerEvent]) -> bytes:
        text, citations, final = [], [], AnswerEvent("done")
        async for event in events:
            if event.kind == "citations":
                citations = event.citations
            elif event.kind == "delta":
                text.append(event.text)
            else:
                final = event
        return orjson.dumps({
            "id": self.id, "object": "chat.completion", "created": self.created, "model": self.model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "".join(text)},
                         "finish_reason": final.finish_reason or "stop"}],
            "usage": final.usage, "citations": self._citations(citations), "metrics": final.metrics,
            "guardrails": final.guardrails})


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"
