"""The microservices as the pipeline calls them: OpenAI/NIM clients over HTTP, at URLs from settings only.

Every call is a CLIENT span (``<service> <operation>``; each retry its own) under the span current when it is
made, and carries that span as W3C ``traceparent`` (an httpx request hook on every client, the openai SDK's
included): the service's own request span is its child. A streamed answer's span lasts as long as its stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

import httpx
import numpy as np
import openai
from opentelemetry import trace

from nimrag.pipeline.settings import PipelineSettings
from nimrag.services.common.errors import APIError, ModelNotFoundError
from nimrag.services.common.tracing import TRACE_HOOKS, traced_stream

T = TypeVar("T")
# A dependency's answers that the client's request caused (the LLM's context is shorter than the question and
# max_tokens): the client gets them as they are. Any other 4xx (401, 404, ...) is the pipeline's configuration.
CLIENT_FAULTS = frozenset({400, 413, 422})
# No one can say when a service that does not answer at all is back: a pause, as a not-ready model asks for.
UNREACHABLE_RETRY_AFTER_S = 5
tracer = trace.get_tracer("nimrag.pipeline")


class DependencyError(APIError):
    """A microservice the pipeline needs is unreachable or busy (503). Retry-After passes on the wait the service
    asked for (``retry_after_s``); one that does not answer asked for none, and gets a short pause."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, service: str, detail: str, retry_after_s: int | None = None):
        shown = UNREACHABLE_RETRY_AFTER_S if retry_after_s is None else retry_after_s
        super().__init__(f"The {service} service is unavailable: {detail}", code=f"{service}_unavailable",
                         headers={"Retry-After": str(shown)})
        self.retry_after_s = retry_after_s


class DependencyFailed(APIError):
    """A microservice answered with an error that is neither the client's doing nor a wait (502)."""

    status_code = 502
    error_type = "bad_gateway"

    def __init__(self, service: str, detail: str):
        super().__init__(f"The {service} service failed: {detail}", code=f"{service}_failed")


class DependencyTimeout(APIError):
    status_code = 504
    error_type = "gateway_timeout"

    def __init__(self, service: str, seconds: float):
        super().__init__(f"The {service} service did not answer within {seconds:g} s.", code=f"{service}_timeout")


class DependencyRefused(APIError):
    """A microservice refused what the client asked for: its status, type, param and code, in its words."""

    def __init__(self, service: str, status: int, error: dict):
        super().__init__(f"The {service} service refused the request: {error.get('message') or 'no reason given'}",
                         param=_text_or_none(error.get("param")), code=_text_or_none(error.get("code")))
        self.status_code = status
        self.error_type = _text_or_none(error.get("type")) or "invalid_request_error"


def _text_or_none(value) -> str | None:
    return None if value is None else str(value)


def _error_of(body) -> dict:
    """The ``error`` object of an OpenAI-shaped error body (or the object itself, as the openai SDK hands it)."""
    if isinstance(body, dict):
        inner = body.get("error", body)
        return inner if isinstance(inner, dict) else {"message": str(inner)}
    return {"message": str(body)[:300]} if body else {}


def _retry_after(headers) -> int | None:
    try:
        return max(0, round(float(headers.get("retry-after"))))
    except (TypeError, ValueError):  # absent, or an HTTP date: none given
        return None


def status_error(service: str, status: int, headers, body) -> APIError:
    """What the client gets for a dependency's non-2xx answer."""
    error = _error_of(body)
    if status in CLIENT_FAULTS:
        return DependencyRefused(service, status, error)
    detail = f"it answered {status}: {error.get('message') or 'no reason given'}"
    if status in (429, 503):
        return DependencyError(service, detail, _retry_after(headers))
    return DependencyFailed(service, detail)


def dependency_error(service: str, exc: Exception, timeout_s: float) -> APIError:
    """The client's error for an httpx or openai failure calling ``service``; other exceptions are re-raised."""
    if isinstance(exc, APIError):
        return exc
    if isinstance(exc, openai.APIStatusError):
        return status_error(service, exc.status_code, exc.response.headers, exc.body)
    if isinstance(exc, (openai.APITimeoutError, httpx.TimeoutException)):
        return DependencyTimeout(service, timeout_s)
    if isinstance(exc, (openai.APIConnectionError, httpx.TransportError)):
        return DependencyError(service, f"cannot connect: {exc}")
    if isinstance(exc, openai.APIError):  # an error event inside a stream that had started well
        error = _error_of(exc.body)
        if error.get("type") == "invalid_request_error":
            return DependencyRefused(service, 400, error)
        return DependencyFailed(service, error.get("message") or str(exc))
    if isinstance(exc, (httpx.HTTPError, openai.OpenAIError, ValueError)):  # ValueError: a body that is not JSON
        return DependencyFailed(service, f"unexpected answer: {type(exc).__name__}: {exc}")
    raise exc


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


class ServiceClients:
    def __init__(self, settings: PipelineSettings):
        self.settings = settings
        key = settings.service_api_key or "unused"
        timeout = settings.request_timeout_s
        # Retries are ours (_call): the SDK would wait out any Retry-After up to two minutes, holding the client.
        self.embed_client = openai.AsyncOpenAI(base_url=settings.embed_url, api_key=key, timeout=timeout, max_retries=0,
                                               http_client=openai.DefaultAsyncHttpxClient(event_hooks=TRACE_HOOKS))
        self.llm_client = openai.AsyncOpenAI(base_url=settings.llm_url, api_key=key, timeout=timeout, max_retries=0,
                                             http_client=openai.DefaultAsyncHttpxClient(event_hooks=TRACE_HOOKS))
        headers = {"Authorization": f"Bearer {key}"} if settings.service_api_key else {}
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers, event_hooks=TRACE_HOOKS)
        self._models: dict[str, str] = {}
        self._llm_models: list[str] = []  # what the LLM service serves, when a request named a model

    async def close(self) -> None:
        await asyncio.gather(self.embed_client.close(), self.llm_client.close(), self.http.aclose())

    async def model(self, service: str) -> str:
        """The model a service serves (asked once)."""
        if service not in self._models:
            url = {"embed": self.settings.embed_url, "rerank": self.settings.rerank_url,
                   "llm": self.settings.llm_url}[service]
            data = await self._get_json(service, "models", url.rstrip("/") + "/models")
            self._models[service] = data["data"][0]["id"]
        return self._models[service]

    async def llm_model_for(self, requested: str | None, own_name: str) -> str:
        """The LLM model a request names: ``own_name`` (the pipeline's) or none is the LLM service's default; any
        other must be one its /v1/models lists (asked once, asked again before refusing a name), else a 404."""
        if requested in (None, own_name):
            return await self.model("llm")
        if requested not in self._llm_models:
            data = await self._get_json("llm", "models", self.settings.llm_url.rstrip("/") + "/models")
            self._llm_models = [card["id"] for card in data["data"]]
        if requested not in self._llm_models:
            raise ModelNotFoundError(requested, [own_name, *self._llm_models])
        return requested

    async def _call(self, service: str, operation: str | None, attempt: Callable[[], Awaitable[T]],
                    backoff_budget_s: float = 0) -> T:
        """``attempt()``, tried again while the dependency is unreachable or busy and asks for a short wait
        (``dependency_retries``, ``dependency_retry_max_wait_s``); any other failure maps to the client's error.
        ``backoff_budget_s`` > 0 (work nobody waits on, as ingestion): a busy service's Retry-After is waited out,
        however long, up to that in all; an unreachable one still fails after the usual retries. Each attempt is a
        CLIENT span ``<service> <operation>``; None: the caller's span covers them (a stream)."""
        waited = 0.0
        for tries in itertools.count(1):
            try:
                with self._client_span(service, operation, tries):
                    return await attempt()
            except Exception as exc:  # noqa: BLE001 - dependency_error re-raises what is not a dependency's failure
                error = dependency_error(service, exc, self.settings.request_timeout_s)
            if not isinstance(error, DependencyError):
                raise error
            wait = min(0.5 * 2 ** (tries - 1), 10) if error.retry_after_s is None else max(error.retry_after_s, 0.1)
            if backoff_budget_s > 0 and error.retry_after_s is not None:  # busy, and it said for how long
                if waited + wait > backoff_budget_s:
                    raise error
            elif tries > self.settings.dependency_retries or wait > self.settings.dependency_retry_max_wait_s:
                raise error  # the client hears the wait at once rather than after it
            waited += wait
            await asyncio.sleep(wait)

    @staticmethod
    def _client_span(service: str, operation: str | None, attempt: int):
        if operation is None:
            return contextlib.nullcontext()
        return tracer.start_as_current_span(f"{service} {operation}", kind=trace.SpanKind.CLIENT,
                                            attributes={"peer.service": service, "nimrag.attempt": attempt})

    async def _get_json(self, service: str, operation: str, url: str) -> dict:
        return await self._call(service, operation, lambda: self._json_of(service, self.http.get(url)))

    async def _post_json(self, service: str, operation: str, url: str, body: dict) -> dict:
        return await self._call(service, operation, lambda: self._json_of(service, self.http.post(url, json=body)))

    @staticmethod
    async def _json_of(service: str, request: Awaitable[httpx.Response]) -> dict:
        response = await request
        if response.status_code >= 400:
            try:
                body = response.json()
            except ValueError:
                body = response.text
            raise status_error(service, response.status_code, response.headers, body)
        return response.json()

    # --- embeddings ---------------------------------------------------------------------------------------------
    async def embed(self, texts: list[str], input_type: str, backoff_budget_s: float = 0) -> np.ndarray:
        model = await self.model("embed")
        reply = await self._call("embed", "embeddings", lambda: self.embed_client.embeddings.create(
            input=texts, model=model, encoding_format="float", extra_body={"input_type": input_type,
                                                                           "truncate": "END"}),
            backoff_budget_s)
        return np.asarray([d.embedding for d in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)

    # --- reranking ----------------------------------------------------------------------------------------------
    async def rerank(self, query: str, passages: list[str]) -> list[float]:
        """One relevance score per passage, in the passages' order (NIM's /v1/ranking)."""
        body = {"model": await self.model("rerank"), "query": {"text": query},
                "passages": [{"text": p} for p in passages], "truncate": "END"}
        data = await self._post_json("rerank", "ranking", self.settings.rerank_url.rstrip("/") + "/ranking", body)
        scores = [0.0] * len(passages)
        for entry in data["rankings"]:
            scores[entry["index"]] = float(entry["logit"])
        return scores

    # --- LLM ----------------------------------------------------------------------------------------------------
    async def count_tokens(self, messages: list[dict] | None = None, text: str | None = None) -> tuple[int, int]:
        """Tokens the templated messages (or a bare text) take, and the model's context length (the LLM's
        /tokenize)."""
        body = {"messages": messages} if messages is not None else {"prompt": text}
        data = await self._post_json("llm", "tokenize", _root(self.settings.llm_url) + "/tokenize", body)
        return data["count"], data["max_model_len"]

    def chat_stream(self, messages: list[dict], **params) -> AsyncIterator:
        """The LLM's answer chunks, under one CLIENT span from the request to the stream's end, the child of the
        span current now (where the stream is made, not where it is read)."""
        return traced_stream(tracer, "llm chat.completions", self._chat_chunks(messages, params),
                             kind=trace.SpanKind.CLIENT, attributes={"peer.service": "llm"})

    async def _chat_chunks(self, messages: list[dict], params: dict) -> AsyncIterator:
        model = params.pop("model", None) or await self.model("llm")
        trace.get_current_span().set_attribute("gen_ai.request.model", model)
        stream = await self._call("llm", None, lambda: self.llm_client.chat.completions.create(
            model=model, messages=messages, stream=True, stream_options={"include_usage": True}, **params))
        try:
            async for chunk in stream:
                yield chunk
        except Exception as exc:  # noqa: BLE001 - dependency_error re-raises what is not the LLM's failure
            raise dependency_error("llm", exc, self.settings.request_timeout_s) from None

    # --- health -------------------------------------------------------------------------------------------------
    async def health(self) -> dict[str, dict]:
        async def probe(name: str, url: str) -> tuple[str, dict]:
            try:
                with self._client_span(name, "health", 1):
                    r = await self.http.get(_root(url) + "/v1/health/ready", timeout=5)
                return name, {"url": url, "status": "ready" if r.status_code == 200 else f"http {r.status_code}"}
            except httpx.HTTPError as exc:
                return name, {"url": url, "status": f"unreachable: {type(exc).__name__}"}

        s = self.settings
        results = await asyncio.gather(probe("embed", s.embed_url), probe("rerank", s.rerank_url),
                                       probe("llm", s.llm_url))
        return dict(results)
