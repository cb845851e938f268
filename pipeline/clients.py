"""The microservices as the pipeline calls them: OpenAI/NIM clients over HTTP, at URLs from settings only."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import numpy as np
import openai

from pipeline.settings import PipelineSettings
from services.common.errors import APIError


class DependencyError(APIError):
    """A microservice the pipeline needs failed or cannot be reached (502/503)."""

    status_code = 503
    error_type = "service_unavailable"

    def __init__(self, service: str, detail: str):
        super().__init__(f"The {service} service is unavailable: {detail}", code=f"{service}_unavailable",
                         headers={"Retry-After": "5"})


def _root(url: str) -> str:
    return url.rstrip("/").removesuffix("/v1")


class ServiceClients:
    def __init__(self, settings: PipelineSettings):
        self.settings = settings
        key = settings.service_api_key or "unused"
        timeout = settings.request_timeout_s
        self.embed_client = openai.AsyncOpenAI(base_url=settings.embed_url, api_key=key, timeout=timeout, max_retries=2)
        self.llm_client = openai.AsyncOpenAI(base_url=settings.llm_url, api_key=key, timeout=timeout, max_retries=2)
        headers = {"Authorization": f"Bearer {key}"} if settings.service_api_key else {}
        self.http = httpx.AsyncClient(timeout=timeout, headers=headers)
        self._models: dict[str, str] = {}

    async def close(self) -> None:
        await asyncio.gather(self.embed_client.close(), self.llm_client.close(), self.http.aclose())

    async def model(self, service: str) -> str:
        """The model a service serves (asked once)."""
        if service not in self._models:
            url = {"embed": self.settings.embed_url, "rerank": self.settings.rerank_url,
                   "llm": self.settings.llm_url}[service]
            data = await self._get_json(service, url.rstrip("/") + "/models")
            self._models[service] = data["data"][0]["id"]
        return self._models[service]

    async def _get_json(self, service: str, url: str) -> dict:
        try:
            response = await self.http.get(url)
            response.raise_for_status()
            return response.json()
        except httpx.HTTPError as exc:
            raise DependencyError(service, f"{url}: {exc}") from None

    async def _post_json(self, service: str, url: str, body: dict) -> dict:
        try:
            response = await self.http.post(url, json=body)
        except httpx.HTTPError as exc:
            raise DependencyError(service, f"{url}: {exc}") from None
        if response.status_code >= 400:
            raise DependencyError(service, f"{url} answered {response.status_code}: {response.text[:300]}")
        return response.json()

    # --- embeddings ---------------------------------------------------------------------------------------------
    async def embed(self, texts: list[str], input_type: str) -> np.ndarray:
        model = await self.model("embed")
        try:
            reply = await self.embed_client.embeddings.create(input=texts, model=model, encoding_format="float",
                                                       extra_body={"input_type": input_type, "truncate": "END"})
        except openai.OpenAIError as exc:
            raise DependencyError("embed", str(exc)) from None
        return np.asarray([d.embedding for d in sorted(reply.data, key=lambda d: d.index)], dtype=np.float32)

    # --- reranking ----------------------------------------------------------------------------------------------
    async def rerank(self, query: str, passages: list[str]) -> list[float]:
        """One relevance score per passage, in the passages' order (NIM's /v1/ranking)."""
        body = {"model": await self.model("rerank"), "query": {"text": query},
                "passages": [{"text": p} for p in passages], "truncate": "END"}
        data = await self._post_json("rerank", self.settings.rerank_url.rstrip("/") + "/ranking", body)
        scores = [0.0] * len(passages)
        for entry in data["rankings"]:
            scores[entry["index"]] = float(entry["logit"])
        return scores

    # --- LLM ----------------------------------------------------------------------------------------------------
    async def count_tokens(self, messages: list[dict] | None = None, text: str | None = None) -> tuple[int, int]:
        """Tokens the templated messages (or a bare text) take, and the model's context length (the LLM's
        /tokenize)."""
        body = {"messages": messages} if messages is not None else {"prompt": text}
        data = await self._post_json("llm", _root(self.settings.llm_url) + "/tokenize", body)
        return data["count"], data["max_model_len"]

    async def chat_stream(self, messages: list[dict], **params) -> AsyncIterator:
        model = await self.model("llm")
        try:
            stream = await self.llm_client.chat.completions.create(model=model, messages=messages, stream=True,
                                                            stream_options={"include_usage": True}, **params)
            async for chunk in stream:
                yield chunk
        except openai.APIStatusError as exc:
            raise DependencyError("llm", f"{exc.status_code}: {exc.message}") from None
        except openai.OpenAIError as exc:
            raise DependencyError("llm", str(exc)) from None

    # --- health -------------------------------------------------------------------------------------------------
    async def health(self) -> dict[str, dict]:
        async def probe(name: str, url: str) -> tuple[str, dict]:
            try:
                r = await self.http.get(_root(url) + "/v1/health/ready", timeout=5)
                return name, {"url": url, "status": "ready" if r.status_code == 200 else f"http {r.status_code}"}
            except httpx.HTTPError as exc:
                return name, {"url": url, "status": f"unreachable: {type(exc).__name__}"}

        s = self.settings
        results = await asyncio.gather(probe("embed", s.embed_url), probe("rerank", s.rerank_url),
                                       probe("llm", s.llm_url))
        return dict(results)
