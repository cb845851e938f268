"""The LLM serving layer: owns the engine, its sequence slots, and the OpenAI shape of every answer.

Each choice of each request takes one engine slot (``max_num_seqs``); requests beyond the free slots wait, up to
``max_queue_items``, then get 429. Engine calls block, so they run in worker threads; pieces of text come back to
the event loop through a queue, and a client that goes away sets the flag the engine checks after every piece.

Each choice is a span (``llm decode``, a child of the request's) from its wait for a slot to its last token: the
engines batch continuously inside (llama.cpp, TensorRT-LLM), with no batch boundary a span could mark.
"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import orjson
from opentelemetry import trace

from nimrag.services.common.errors import (
    APIError,
    InternalError,
    InvalidRequestError,
    QueueFullError,
    error_body,
)
from nimrag.services.common.hardware import HardwareInfo
from nimrag.services.common.metrics import ServiceMetrics
from nimrag.services.common.profiles import ProfileChoice
from nimrag.services.common.serving import ModelServing
from nimrag.services.common.tracing import traced_stream
from nimrag.services.llm.engines import create_engine
from nimrag.services.llm.engines.base import (
    EngineInfo,
    Finished,
    SamplingParams,
    TextDelta,
    TokenLogprob,
)
from nimrag.services.llm.metrics import LLMMetrics
from nimrag.services.llm.model import LLMModelInfo
from nimrag.services.llm.protocol import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    TokenizeRequest,
)
from nimrag.services.llm.sampling import (
    check_request_limits,
    completion_budget,
    sampling_params,
)
from nimrag.services.llm.settings import LLMSettings

tracer = trace.get_tracer("nimrag.llm")


@dataclass
class Job:
    """One choice to generate: which prompt, with what sampling, answered at which index."""

    index: int
    prompt: list[int]
    params: SamplingParams
    echo: str = ""


@dataclass
class ChoiceResult:
    text: str = ""
    logprobs: list[TokenLogprob] = field(default_factory=list)
    finish: Finished | None = None


@dataclass
class RequestTiming:
    arrived: float = field(default_factory=time.perf_counter)
    first_token: float | None = None


class LLMServing(ModelServing):
    service = "llm"

    def __init__(self, *, settings: LLMSettings, model: LLMModelInfo, choice: ProfileChoice,
                 hardware: HardwareInfo, metrics: ServiceMetrics):
        super().__init__(choice=choice, hardware=hardware, metrics=metrics, served_model_name=model.name)
        self.settings = settings
        self.model = model
        self.engine = create_engine(choice.profile, model, settings, hardware)
        self.upstream = self.engine.upstream
        self.info: EngineInfo | None = None
        self.llm_metrics = LLMMetrics(metrics, self.served_model_name)
        self._slots: asyncio.Semaphore | None = None
        self._running = 0
        self._waiting = 0
        self._executor: ThreadPoolExecutor | None = None
        self.fingerprint = f"nimrag-{choice.profile.id}"

    # --- life cycle -------------------------------------------------------------------------------------------
    def load_blocking(self) -> None:
        self.info = self.engine.load()
        # Ready means a token has come out: the first decode pays for lazy allocations, not the first user.
        warmup = SamplingParams(max_tokens=1, temperature=0.0)
        self.engine.generate(self.engine.tokenize("Hello"), warmup, lambda _: False)

    async def on_loaded(self) -> None:
        self._slots = asyncio.Semaphore(self.info.slots)
        self._executor = ThreadPoolExecutor(self.info.slots, thread_name_prefix="llm-decode")
        self.llm_metrics.engine_loaded(self.info.slots)

    async def stop(self) -> None:
        if self._executor:
            self._executor.shutdown(wait=False, cancel_futures=True)
        await asyncio.to_thread(self.engine.close)

    def metadata(self) -> dict:
        info = dataclasses.asdict(self.info) if self.info else {}
        return {"engine": self.engine.name, "engineInfo": info, "modelPath": str(self.model.path),
                "modelFormat": self.model.format, "parameters": self.model.parameters}

    def model_cards(self) -> list[dict]:
        length = self.info.context_length if self.info else None
        return [{**card, "max_model_len": length} for card in super().model_cards()]

    # --- requests ---------------------------------------------------------------------------------------------
    async def chat(self, request: ChatCompletionRequest) -> tuple[AsyncIterator[bytes] | bytes, bool]:
        """The answer: SSE byte chunks when streaming, else one JSON body (second item: streaming or not)."""
        timing = RequestTiming()
        self.ensure_ready()
        name = self.resolve_model(request.model)
        check_request_limits(request, self.settings)
        prompt = await self._chat_prompt(request.messages)
        jobs = await self._jobs([prompt], request)
        answer = ChatAnswer(name, self.fingerprint, request, [len(prompt)])
        return await self._answer(jobs, answer, request.stream, timing)

    async def _chat_prompt(self, messages: list[ChatMessage]) -> list[int]:
        turns = [{"role": "system" if m.role == "developer" else m.role, "content": m.text(),
                  **({"name": m.name} if m.name else {})} for m in messages]
        return await asyncio.to_thread(lambda: self.engine.tokenize(self.engine.apply_chat_template(turns)))

    async def tokenize(self, request: TokenizeRequest) -> bytes:
        """Token ids of a prompt or of templated messages, and the context they must fit (vLLM's /tokenize)."""
        self.ensure_ready()
        self.resolve_model(request.model)
        if request.messages is not None:
            tokens = await self._chat_prompt(request.messages)
        else:
            tokens = await asyncio.to_thread(self.engine.tokenize, request.prompt)
        return orjson.dumps({"count": len(tokens), "max_model_len": self.info.context_length, "tokens": tokens})

    async def complete(self, request: CompletionRequest) -> tuple[AsyncIterator[bytes] | bytes, bool]:
        timing = RequestTiming()
        self.ensure_ready()
        name = self.resolve_model(request.model)
        check_request_limits(request, self.settings)
        texts = _prompt_list(request.prompt)
        if len(texts) > self.settings.max_prompts:
            raise InvalidRequestError(f"{len(texts)} prompts given; at most {self.settings.max_prompts} are allowed.",
                                      param="prompt")
        if request.echo and any(not isinstance(t, str) for t in texts):
            raise InvalidRequestError("echo needs text prompts, not token ids.", param="echo")
        _check_token_ids(request.prompt, self.info.vocab_size)
        prompts = await asyncio.to_thread(lambda: [t if isinstance(t, list) else self.engine.tokenize(t)
                                                   for t in texts])
        jobs = await self._jobs(prompts, request, echoes=texts if request.echo else None)
        answer = CompletionAnswer(name, self.fingerprint, request, [len(p) for p in prompts])
        return await self._answer(jobs, answer, request.stream, timing)

    async def _jobs(self, prompts: list[list[int]], request, echoes: list[str] | None = None) -> list[Job]:
        bases = [sampling_params(request, completion_budget(request, len(prompt), self.info.context_length),
                                 self.info) for prompt in prompts]
        # Prompts differ only in their budget; checking compiles a JSON schema, work for a worker thread.
        await asyncio.to_thread(self.engine.check, bases[0])
        jobs = []
        for p, (prompt, base) in enumerate(zip(prompts, bases)):
            for c in range(request.n):
                seed = base.seed if base.seed is None else (base.seed + c) % 2**32  # n choices: n samples
                jobs.append(Job(p * request.n + c, prompt, dataclasses.replace(base, seed=seed),
                                echo=echoes[p] if echoes else ""))
        return jobs

    async def _answer(self, jobs: list[Job], answer: ChatAnswer | CompletionAnswer, stream: bool,
                      timing: RequestTiming):
        self._admit(len(jobs))
        self.llm_metrics.prompt_tokens.inc(sum(answer.prompt_tokens))
        if stream:
            return self._stream(jobs, answer, timing), True
        results = {job.index: ChoiceResult(text=job.echo) for job in jobs}
        try:
            async for index, event in self._run(jobs, timing):
                _accumulate(results[index], event)
        except BaseException as exc:
            self._failed(exc)
            raise
        self._finished(results.values(), timing, sum(answer.prompt_tokens))
        return answer.full(results), False

    async def _stream(self, jobs: list[Job], answer, timing: RequestTiming) -> AsyncIterator[bytes]:
        results = {job.index: ChoiceResult() for job in jobs}
        echoes = {job.index: job.echo for job in jobs}
        try:
            async for index, event in self._run(jobs, timing):
                # A choice opens with its first engine output, not before: the first chunk's arrival is a
                # client's time to first token, and a request waiting for a slot has none yet.
                if index in echoes and (opening := answer.opening(index, echoes.pop(index))):
                    yield _sse(opening)
                _accumulate(results[index], event)
                yield _sse(answer.chunk(index, event))
            if answer.include_usage:
                yield _sse(answer.usage_chunk(results))
        except Exception as exc:  # headers are gone: report in-band, as vLLM does, in the one error shape
            self._failed(exc)
            if not isinstance(exc, APIError):
                self.log.error("stream failed", exc_info=exc)
                exc = InternalError("Internal error; the request id in the logs has the details.")
            yield b"data: " + error_body(exc) + b"\n\n"
        except BaseException as exc:
            self._failed(exc)
            raise
        else:
            self._finished(results.values(), timing, sum(answer.prompt_tokens))
        yield b"data: [DONE]\n\n"

    def _admit(self, sequences: int) -> None:
        free = self.info.slots - self._running
        if sequences > free and self._waiting + sequences > self.settings.max_queue_items:
            self.metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(self._waiting, self.settings.max_queue_items)

    def _failed(self, exc: BaseException) -> None:
        reason = "cancelled" if isinstance(exc, (asyncio.CancelledError, GeneratorExit)) else type(exc).__name__
        self.llm_metrics.failure.labels(reason).inc()

    def _finished(self, results, timing: RequestTiming, prompt_tokens: int) -> None:
        m = self.llm_metrics
        now = time.perf_counter()
        tokens = 0
        for result in results:
            tokens += result.finish.completion_tokens
            m.success.labels(result.finish.reason).inc()
        m.generation_tokens.inc(tokens)
        m.request_finished(prompt_tokens, tokens)
        m.e2e.observe(now - timing.arrived)
        if timing.first_token is not None:
            m.ttft.observe(timing.first_token - timing.arrived)
            per_choice = tokens / max(1, len(results))
            if per_choice > 1:
                m.tpot.observe((now - timing.first_token) / (per_choice - 1))

    # --- engine bridge ----------------------------------------------------------------------------------------
    async def _run(self, jobs: list[Job], timing: RequestTiming) -> AsyncIterator[tuple[int, TextDelta | Finished]]:
        """Every job's events as they come, interleaved; all jobs stop when the consumer stops."""
        if len(jobs) == 1:
            async for event in self._decode(jobs[0], timing):
                yield jobs[0].index, event
            return
        merged: asyncio.Queue = asyncio.Queue()

        async def pump(job: Job) -> None:
            try:
                async for event in self._decode(job, timing):
                    await merged.put((job.index, event))
            except BaseException as exc:
                await merged.put((job.index, exc))
                raise

        tasks = [asyncio.create_task(pump(job)) for job in jobs]
        try:
            remaining = len(jobs)
            while remaining:
                index, event = await merged.get()
                if isinstance(event, BaseException):
                    raise event
                remaining -= isinstance(event, Finished)
                yield index, event
        finally:
            for task in tasks:
                task.cancel()

    def _decode(self, job: Job, timing: RequestTiming) -> AsyncIterator[TextDelta | Finished]:
        """One choice's events, under its span (a child of the span current now: the request's)."""
        return traced_stream(tracer, "llm decode", self._decode_events(job, timing), attributes={
            "nimrag.llm.choice": job.index, "gen_ai.usage.input_tokens": len(job.prompt),
            "gen_ai.request.max_tokens": job.params.max_tokens})

    async def _decode_events(self, job: Job, timing: RequestTiming) -> AsyncIterator[TextDelta | Finished]:
        loop = asyncio.get_running_loop()
        events: asyncio.Queue = asyncio.Queue()
        stop = threading.Event()

        def emit(delta: TextDelta) -> bool:
            loop.call_soon_threadsafe(events.put_nowait, delta)
            return stop.is_set()

        def run() -> None:
            try:
                result = self.engine.generate(job.prompt, job.params, emit)
            except Exception as exc:  # noqa: BLE001 - handed to the request that asked
                result = exc
            loop.call_soon_threadsafe(events.put_nowait, result)

        await self._acquire_slot()
        trace.get_current_span().add_event("slot acquired")
        future = loop.run_in_executor(self._executor, run)
        future.add_done_callback(self._release_slot)  # the slot is free once the engine has let go
        try:
            while True:
                event = await events.get()
                if isinstance(event, APIError):
                    raise event
                if isinstance(event, Exception):
                    self.log.error("engine failed", exc_info=event)
                    raise InternalError(f"The engine failed: {type(event).__name__}")
                if timing.first_token is None:
                    timing.first_token = time.perf_counter()
                if isinstance(event, Finished):
                    trace.get_current_span().set_attributes({
                        "gen_ai.usage.output_tokens": event.completion_tokens,
                        "gen_ai.response.finish_reasons": [event.reason]})
                yield event
                if isinstance(event, Finished):
                    return
        finally:
            stop.set()

    async def _acquire_slot(self) -> None:
        self._waiting += 1
        self.llm_metrics.waiting.inc()
        try:
            await self._slots.acquire()
        finally:
            self._waiting -= 1
            self.llm_metrics.waiting.dec()
        self._running += 1
        self.llm_metrics.running.inc()

    def _release_slot(self, _future) -> None:
        self._running -= 1
        self.llm_metrics.running.dec()
        self._slots.release()


# --- OpenAI shapes ----------------------------------------------------------------------------------------------
def _check_token_ids(prompt, vocab_size: int) -> None:
    """A 400 naming the first token id outside the vocabulary: an engine would wrap or reject it."""
    lists = [("prompt", prompt)] if prompt and isinstance(prompt[0], int) else \
        [(f"prompt[{i}]", p) for i, p in enumerate(prompt) if isinstance(p, list)]
    for where, ids in lists:
        bad = next((i for i, t in enumerate(ids) if not 0 <= t < vocab_size), None)
        if bad is not None:
            raise InvalidRequestError(f"{where}[{bad}] is not a token id of this model (0 to {vocab_size - 1}).",
                                      param=f"{where}[{bad}]", code="invalid_token_id")


def _prompt_list(prompt) -> list[str | list[int]]:
    if isinstance(prompt, str):
        return [prompt]
    if prompt and all(isinstance(t, int) for t in prompt):
        return [prompt]
    return list(prompt)


def _accumulate(result: ChoiceResult, event: TextDelta | Finished) -> None:
    if isinstance(event, Finished):
        result.finish = event
    else:
        result.text += event.text
        result.logprobs.extend(event.logprobs)


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _usage(prompt_tokens: list[int], results) -> dict:
    completion = sum(r.finish.completion_tokens for r in results if r.finish)
    cached = sum(r.finish.cached_prompt_tokens for r in results if r.finish)
    prompt = sum(prompt_tokens)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion,
            "prompt_tokens_details": {"cached_tokens": cached}}


class _Answer:
    object_full: str
    object_chunk: str
    id_prefix: str

    def __init__(self, model: str, fingerprint: str, request, prompt_tokens: list[int]):
        self.id = f"{self.id_prefix}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.fingerprint = fingerprint
        self.request = request
        self.prompt_tokens = prompt_tokens
        self.include_usage = bool(request.stream_options and request.stream_options.include_usage)

    def _envelope(self, obj: str, choices: list[dict]) -> dict:
        body = {"id": self.id, "object": obj, "created": self.created, "model": self.model,
                "system_fingerprint": self.fingerprint, "choices": choices}
        if obj == self.object_chunk and self.include_usage:
            body["usage"] = None
        return body

    def usage_chunk(self, results: dict[int, ChoiceResult]) -> dict:
        return {**self._envelope(self.object_chunk, []), "usage": _usage(self.prompt_tokens, results.values())}

    def full(self, results: dict[int, ChoiceResult]) -> bytes:
        choices = [self.full_choice(i, results[i]) for i in sorted(results)]
        body = {**self._envelope(self.object_full, choices), "usage": _usage(self.prompt_tokens, results.values())}
        return orjson.dumps(body)


class ChatAnswer(_Answer):
    object_full, object_chunk, id_prefix = "chat.completion", "chat.completion.chunk", "chatcmpl"

    def _logprobs(self, entries) -> dict | None:
        if self.request.logprobs_count() is None:
            return None
        return {"content": [{"token": e.token, "logprob": e.logprob, "bytes": e.bytes,
                             "top_logprobs": [{"token": t.token, "logprob": t.logprob, "bytes": t.bytes}
                                              for t in e.top]} for e in entries]}

    def full_choice(self, index: int, result: ChoiceResult) -> dict:
        return {"index": index, "message": {"role": "assistant", "content": result.text},
                "logprobs": self._logprobs(result.logprobs), "finish_reason": result.finish.reason}

    def opening(self, index: int, _echo: str) -> dict:
        return self._envelope(self.object_chunk, [{"index": index, "delta": {"role": "assistant", "content": ""},
                                                   "logprobs": None, "finish_reason": None}])

    def chunk(self, index: int, event: TextDelta | Finished) -> dict:
        if isinstance(event, Finished):
            choice = {"index": index, "delta": {}, "logprobs": None, "finish_reason": event.reason}
        else:
            choice = {"index": index, "delta": {"content": event.text}, "logprobs": self._logprobs(event.logprobs),
                      "finish_reason": None}
        return self._envelope(self.object_chunk, [choice])


class CompletionAnswer(_Answer):
    object_full, object_chunk, id_prefix = "text_completion", "text_completion", "cmpl"

    def _logprobs(self, entries, offset: int = 0) -> dict | None:
        if self.request.logprobs_count() is None:
            return None
        offsets, position = [], offset
        for e in entries:
            offsets.append(position)
            position += len(e.token)
        return {"tokens": [e.token for e in entries], "token_logprobs": [e.logprob for e in entries],
                "top_logprobs": [{t.token: t.logprob for t in e.top} for e in entries], "text_offset": offsets}

    def full_choice(self, index: int, result: ChoiceResult) -> dict:
        echo = self.request.echo and len(result.text) - sum(len(e.token) for e in result.logprobs)
        return {"index": index, "text": result.text, "logprobs": self._logprobs(result.logprobs, max(0, echo or 0)),
                "finish_reason": result.finish.reason}

    def opening(self, index: int, echo: str) -> dict | None:
        if not echo:
            return None
        return self._envelope(self.object_chunk, [{"index": index, "text": echo, "logprobs": None,
                                                   "finish_reason": None}])

    def chunk(self, index: int, event: TextDelta | Finished) -> dict:
        if isinstance(event, Finished):
            choice = {"index": index, "text": "", "logprobs": None, "finish_reason": event.reason}
        else:
            choice = {"index": index, "text": event.text, "logprobs": self._logprobs(event.logprobs),
                      "finish_reason": None}
        return self._envelope(self.object_chunk, [choice])
