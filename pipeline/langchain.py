"""LangChain integration: the pipeline's retrieval as a ``BaseRetriever`` and its cited answers as a ``Runnable``.

Both talk to a running pipeline over HTTP (``nimrag up``, or ``nimrag serve pipeline``), so they need only
``langchain-core`` and ``httpx`` on the client side::

    from nimrag.pipeline.langchain import NimragAnswerChain, NimragRetriever

    retriever = NimragRetriever(base_url="http://127.0.0.1:8081", collection_name="docs", top_k=4)
    docs = retriever.invoke("How long is the warranty?")          # list[Document], best first
    docs = retriever.invoke("warranty", sources=["policy.pdf"])   # per-call overrides of the knobs

    chain = NimragAnswerChain(base_url="http://127.0.0.1:8081", collection_name="docs")
    message = chain.invoke("How long is the warranty?")           # AIMessage
    message.content                                               # the answer, with [n] markers
    message.response_metadata["citations"]                        # the sources [n] refers to
    for chunk in chain.stream("How long is the warranty?"):       # AIMessageChunk: the answer as it comes
        print(chunk.content, end="")

The answer chain behaves like a chat model: it takes a question string, a list of messages (or a
``ChatPromptValue``) or a dict ``{"question": ..., "chat_history": [...]}``, returns an ``AIMessage`` and streams
``AIMessageChunk``s, so ``chain | StrOutputParser()`` gives plain text and ``RunnableWithMessageHistory`` works.
The pipeline does the retrieval itself (hybrid search, reranking, packing in the LLM's context); the message's
``response_metadata`` carries ``citations`` (the pipeline's citation dicts: ``number``, ``source``, ``page``,
``chunk_index``, ``chunk_id``, ``score``, ``text``, ``collection_name``), ``metrics``, ``finish_reason`` and
``model_name``, and its ``usage_metadata`` the LLM's token counts. When streaming, the first chunk carries the
citations (they are known before the first token), the last one ``finish_reason``, ``metrics`` and the usage;
adding the chunks up (``functools.reduce(operator.add, chunks)``) gives the same message as ``invoke``.
``citation_documents`` turns the citations into ``Document``s.

Errors: a pipeline that answers with an error raises ``NimragAPIError`` (its status, message, type, code and
param, from the pipeline's ``{"error": {...}}`` body, also when the error comes in the middle of a stream); a
pipeline that cannot be reached raises ``NimragConnectionError``. Both are ``NimragError``s.

``langchain-core`` is not one of nimrag's own dependencies: install it (``pip install langchain-core``) to use
this module.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Sequence
from typing import Any, Literal

import httpx
from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    convert_to_messages,
)
from langchain_core.messages.ai import UsageMetadata
from langchain_core.prompt_values import PromptValue
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableConfig, RunnableSerializable
from pydantic import Field, SecretStr

DEFAULT_BASE_URL = "http://127.0.0.1:8081"
SearchMode = Literal["hybrid", "dense", "lexical"]
# What the answer chain takes: a question, a conversation (messages, or anything convert_to_messages reads:
# ("human", "..."), {"role": "user", "content": "..."}), a chat prompt's value, or {"question", "chat_history"}.
NimragChainInput = str | Sequence[Any] | PromptValue | dict[str, Any]

RETRIEVAL_KNOBS = ("collection_name", "collection_names", "top_k", "vdb_top_k", "enable_reranker",
                   "confidence_threshold", "search_mode", "sources")
_COLLECTION_KNOBS = ("collection_name", "collection_names")
ANSWER_KNOBS = (*RETRIEVAL_KNOBS, "max_tokens", "temperature", "top_p")


# --- errors ---------------------------------------------------------------------------------------------------
class NimragError(Exception):
    """Any failure to get an answer from the pipeline."""


class NimragConnectionError(NimragError):
    """The pipeline could not be reached (not running, wrong URL) or did not answer in time."""


class NimragAPIError(NimragError):
    """The pipeline answered with an error: ``status_code`` (``None`` for an error sent mid-stream), ``message``,
    ``error_type``, ``code`` and ``param`` as in its ``{"error": {...}}`` body."""

    def __init__(self, status_code: int | None, message: str, error_type: str | None = None,
                 code: str | None = None, param: str | None = None):
        self.status_code = status_code
        self.message = message
        self.error_type = error_type
        self.code = code
        self.param = param
        where = f"error {status_code}" if status_code is not None else "error while streaming"
        super().__init__(f"nimrag pipeline {where}" + (f" ({code})" if code else "") + f": {message}")


def _api_error(status_code: int | None, body: bytes | dict) -> NimragAPIError:
    if isinstance(body, bytes):
        try:
            payload = json.loads(body)
        except ValueError:
            text = body.decode(errors="replace").strip()[:500]
            return NimragAPIError(status_code, text or httpx.codes.get_reason_phrase(status_code or 0))
    else:
        payload = body
    error = payload.get("error") if isinstance(payload, dict) else None
    if not isinstance(error, dict):
        return NimragAPIError(status_code, json.dumps(payload)[:500])
    return NimragAPIError(status_code, str(error.get("message") or "unknown error"), error.get("type"),
                          error.get("code"), error.get("param"))


def _connection_error(base_url: str, exc: httpx.TransportError) -> NimragConnectionError:
    what = "timed out" if isinstance(exc, httpx.TimeoutException) else "failed"
    return NimragConnectionError(f"request to the nimrag pipeline at {base_url} {what}: "
                                 f"{type(exc).__name__}: {exc}")


# --- shared request building ----------------------------------------------------------------------------------
def _headers(api_key: SecretStr | None) -> dict[str, str]:
    key = api_key.get_secret_value() if api_key else ""
    return {"Authorization": f"Bearer {key}"} if key else {}


def _knobs(owner: Any, overrides: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    """The retrieval (and generation) fields of a request body: the owner's, overridden per call."""
    unknown = sorted(set(overrides) - set(allowed))
    if unknown:
        raise TypeError(f"unexpected argument(s) {', '.join(unknown)}; per-call options: {', '.join(allowed)}")
    v = {name: overrides.get(name, getattr(owner, name)) for name in allowed}
    for name, other in (_COLLECTION_KNOBS, _COLLECTION_KNOBS[::-1]):
        if name in overrides and other not in overrides:  # a per-call collection replaces the owner's choice
            v[other] = None
    body = {"collection_name": v["collection_name"], "collection_names": v["collection_names"],
            "vdb_top_k": v["vdb_top_k"], "reranker_top_k": v["top_k"], "enable_reranker": v["enable_reranker"],
            "confidence_threshold": v["confidence_threshold"], "search_mode": v["search_mode"]}
    if v["sources"] is not None:
        body["filter"] = {"sources": list(v["sources"])}
    for name in ("max_tokens", "temperature", "top_p"):
        if name in v:
            body[name] = v[name]
    return {key: value for key, value in body.items() if value is not None}


# --- the retriever --------------------------------------------------------------------------------------------
class NimragRetriever(BaseRetriever):
    """The pipeline's search (``POST /v1/search``) as a LangChain retriever.

    Documents come best first, one per retrieved chunk: ``page_content`` is the chunk's text, ``id`` the chunk's
    id, and ``metadata`` holds ``source`` (the document's name), ``page``, ``chunk_index``, ``title``, ``score``,
    ``document_id``, ``collection`` (its name), ``dense_rank`` and ``lexical_rank``. Unset knobs take the
    pipeline's defaults. ``invoke``/``ainvoke`` take the knobs as keyword overrides too:
    ``invoke(q, sources=["a.pdf"])``.
    """

    base_url: str = Field(DEFAULT_BASE_URL, description="The pipeline's URL (without /v1).")
    collection_name: str | None = Field(None, description="The collection; None: the pipeline's default.")
    collection_names: list[str] | None = Field(None, description="Several collections searched as one.")
    top_k: int | None = Field(None, ge=1, le=100, description="Documents returned (the pipeline's reranker_top_k).")
    vdb_top_k: int | None = Field(None, ge=1, le=1000, description="Candidates from each first-stage retriever.")
    enable_reranker: bool | None = Field(None, description="Rerank the candidates; None: the pipeline's setting.")
    confidence_threshold: float | None = Field(None, ge=0, le=1, description="Reranker score below which a chunk "
                                               "is not relevant; None: the pipeline's setting.")
    search_mode: SearchMode = Field("hybrid", description="hybrid (dense + BM25, fused), dense or lexical.")
    sources: list[str] | None = Field(None, description="Only chunks of these documents (by name).")
    api_key: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer <key>' when set.")
    timeout: float | None = Field(60.0, description="Seconds for the request; None: no limit.")

    def _search_body(self, query: str, overrides: dict[str, Any]) -> dict[str, Any]:
        return {"query": query, **_knobs(self, overrides, RETRIEVAL_KNOBS)}

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun,
                                **overrides: Any) -> list[Document]:
        body = self._search_body(query, overrides)
        try:
            with httpx.Client(base_url=self.base_url, timeout=self.timeout, headers=_headers(self.api_key)) as c:
                response = c.post("/v1/search", json=body)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc
        return _documents(response)

    async def _aget_relevant_documents(self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun,
                                       **overrides: Any) -> list[Document]:
        body = self._search_body(query, overrides)
        try:
            async with httpx.AsyncClient(base_url=self.base_url, timeout=self.timeout,
                                         headers=_headers(self.api_key)) as client:
                response = await client.post("/v1/search", json=body)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc
        return _documents(response)


def _documents(response: httpx.Response) -> list[Document]:
    if response.status_code != 200:
        raise _api_error(response.status_code, response.content)
    documents = []
    for result in response.json()["results"]:
        metadata = {**(result.get("metadata") or {}), "source": result["document_name"], "score": result["score"],
                    "document_id": result["document_id"], "collection": result.get("collection_name")}
        documents.append(Document(page_content=result["content"], metadata=metadata, id=result["document_id"]))
    return documents


# --- the answer chain -----------------------------------------------------------------------------------------
def _turns(value: Any) -> list[dict[str, str]]:
    """The pipeline's ``messages`` for a chain input (see ``NimragChainInput``)."""
    if isinstance(value, str):
        return [{"role": "user", "content": value}]
    if isinstance(value, PromptValue):
        messages = value.to_messages()
    elif isinstance(value, BaseMessage):
        messages = [value]
    elif isinstance(value, dict):
        question = value.get("question", value.get("input"))
        if not isinstance(question, str):
            raise TypeError("a dict input needs a 'question' (or 'input') string, with an optional "
                             "'chat_history' of messages")
        messages = [*convert_to_messages(value.get("chat_history") or []), HumanMessage(question)]
    elif isinstance(value, Sequence):
        messages = convert_to_messages(value)
    else:
        raise TypeError(f"unsupported input {type(value).__name__}: give a question string, a list of messages, "
                        "a prompt value or a dict with 'question' and 'chat_history'")
    return [{"role": _role(m), "content": m.text} for m in messages]


def _role(message: BaseMessage) -> str:
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, AIMessage):
        return "assistant"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ChatMessage) and message.role in ("user", "assistant", "system"):
        return message.role
    raise ValueError(f"the pipeline takes user, assistant and system messages, not {message.type!r} ones")


def _usage(usage: dict | None) -> UsageMetadata | None:
    if not usage:
        return None
    prompt, completion = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
    return UsageMetadata(input_tokens=prompt, output_tokens=completion,
                         total_tokens=int(usage.get("total_tokens") or prompt + completion))


def _message(payload: dict) -> AIMessage:
    """The AIMessage of a non-streaming ``chat.completion``."""
    choice = (payload.get("choices") or [{}])[0]
    metadata = {"model_name": payload.get("model"), "citations": (payload.get("citations") or {}).get("results", []),
                "finish_reason": choice.get("finish_reason"), "metrics": payload.get("metrics") or {}}
    return AIMessage(content=(choice.get("message") or {}).get("content") or "", id=payload.get("id"),
                     response_metadata=metadata, usage_metadata=_usage(payload.get("usage")))


def _chunk(event: dict) -> AIMessageChunk:
    """The AIMessageChunk of one streamed ``chat.completion.chunk`` (an in-band error raises)."""
    if "error" in event:
        raise _api_error(None, event)
    choices = event.get("choices") or []
    text = "".join((c.get("delta") or {}).get("content") or "" for c in choices)
    finish = next((c["finish_reason"] for c in choices if c.get("finish_reason")), None)
    metadata: dict[str, Any] = {}
    if "citations" in event:
        metadata["model_name"] = event.get("model")
        metadata["citations"] = (event["citations"] or {}).get("results", [])
    if finish:
        metadata["finish_reason"] = finish
        metadata["metrics"] = event.get("metrics") or {}
    return AIMessageChunk(content=text, id=event.get("id"), response_metadata=metadata,
                          usage_metadata=_usage(event.get("usage")), chunk_position="last" if finish else None)


def _sse_event(line: str) -> dict | None:
    """The JSON of one SSE ``data:`` line; ``None`` for other lines and the closing ``[DONE]``."""
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    return None if not data or data == "[DONE]" else json.loads(data)


class NimragAnswerChain(RunnableSerializable[NimragChainInput, AIMessage]):
    """Cited answers from the pipeline (``POST /v1/generate``): retrieval, packing and generation in one call.

    Input: a question string, a list of messages (multi-turn: the last one the user's question), a chat prompt's
    value, or ``{"question": str, "chat_history": [messages]}`` (``"input"`` is read as the question too).
    Output: an ``AIMessage`` whose ``response_metadata["citations"]`` lists the sources its ``[n]`` markers
    refer to; ``stream``/``astream`` yield ``AIMessageChunk``s (see the module's docstring). Unset knobs take the
    pipeline's defaults; ``invoke``/``stream`` (and ``bind``) take them as keyword overrides, e.g.
    ``chain.invoke(q, temperature=0, sources=["a.pdf"])``.
    """

    base_url: str = Field(DEFAULT_BASE_URL, description="The pipeline's URL (without /v1).")
    collection_name: str | None = Field(None, description="The collection; None: the pipeline's default.")
    collection_names: list[str] | None = Field(None, description="Several collections searched as one.")
    top_k: int | None = Field(None, ge=1, le=100, description="Chunks given to the LLM at most (reranker_top_k).")
    vdb_top_k: int | None = Field(None, ge=1, le=1000, description="Candidates from each first-stage retriever.")
    enable_reranker: bool | None = Field(None, description="Rerank the candidates; None: the pipeline's setting.")
    confidence_threshold: float | None = Field(None, ge=0, le=1, description="Reranker score below which a chunk "
                                               "is not relevant; None: the pipeline's setting.")
    search_mode: SearchMode = Field("hybrid", description="hybrid (dense + BM25, fused), dense or lexical.")
    sources: list[str] | None = Field(None, description="Only chunks of these documents (by name).")
    max_tokens: int | None = Field(None, ge=1, description="Answer length at most; None: the pipeline's.")
    temperature: float | None = Field(None, ge=0, le=2, description="None: the pipeline's.")
    top_p: float | None = Field(None, gt=0, le=1)
    api_key: SecretStr | None = Field(None, description="Sent as 'Authorization: Bearer <key>' when set.")
    timeout: float | None = Field(300.0, description="Seconds for the answer (between chunks when streaming); "
                                                     "None: no limit.")

    def _body(self, value: NimragChainInput, stream: bool, overrides: dict[str, Any]) -> dict[str, Any]:
        return {"messages": _turns(value), "stream": stream, **_knobs(self, overrides, ANSWER_KNOBS)}

    def _client_args(self) -> dict[str, Any]:
        return {"base_url": self.base_url, "timeout": self.timeout, "headers": _headers(self.api_key)}

    # --- whole answers ----------------------------------------------------------------------------------------
    def invoke(self, input: NimragChainInput, config: RunnableConfig | None = None, **kwargs: Any) -> AIMessage:
        return self._call_with_config(self._answer, input, config, run_type="chain", **kwargs)

    async def ainvoke(self, input: NimragChainInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AIMessage:
        return await self._acall_with_config(self._aanswer, input, config, run_type="chain", **kwargs)

    def _answer(self, value: NimragChainInput, **overrides: Any) -> AIMessage:
        body = self._body(value, False, overrides)
        try:
            with httpx.Client(**self._client_args()) as client:
                response = client.post("/v1/generate", json=body)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc
        if response.status_code != 200:
            raise _api_error(response.status_code, response.content)
        return _message(response.json())

    async def _aanswer(self, value: NimragChainInput, **overrides: Any) -> AIMessage:
        body = self._body(value, False, overrides)
        try:
            async with httpx.AsyncClient(**self._client_args()) as client:
                response = await client.post("/v1/generate", json=body)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc
        if response.status_code != 200:
            raise _api_error(response.status_code, response.content)
        return _message(response.json())

    # --- streamed answers -------------------------------------------------------------------------------------
    def stream(self, input: NimragChainInput, config: RunnableConfig | None = None,
               **kwargs: Any) -> Iterator[AIMessageChunk]:
        yield from self._transform_stream_with_config(iter([input]), self._stream_chunks, config,
                                                      run_type="chain", **kwargs)

    async def astream(self, input: NimragChainInput, config: RunnableConfig | None = None,
                      **kwargs: Any) -> AsyncIterator[AIMessageChunk]:
        async def one() -> AsyncIterator[NimragChainInput]:
            yield input

        async for chunk in self._atransform_stream_with_config(one(), self._astream_chunks, config,
                                                               run_type="chain", **kwargs):
            yield chunk

    def _stream_chunks(self, inputs: Iterator[NimragChainInput], **overrides: Any) -> Iterator[AIMessageChunk]:
        body = self._body(_last(inputs), True, overrides)
        try:
            with httpx.Client(**self._client_args()) as client, \
                    client.stream("POST", "/v1/generate", json=body) as response:
                if response.status_code != 200:
                    raise _api_error(response.status_code, response.read())
                for line in response.iter_lines():
                    if (event := _sse_event(line)) is not None:
                        yield _chunk(event)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc

    async def _astream_chunks(self, inputs: AsyncIterator[NimragChainInput],
                              **overrides: Any) -> AsyncIterator[AIMessageChunk]:
        value = None
        async for value in inputs:  # the last input is the one to answer
            pass
        body = self._body(value, True, overrides)
        try:
            async with httpx.AsyncClient(**self._client_args()) as client, \
                    client.stream("POST", "/v1/generate", json=body) as response:
                if response.status_code != 200:
                    raise _api_error(response.status_code, await response.aread())
                async for line in response.aiter_lines():
                    if (event := _sse_event(line)) is not None:
                        yield _chunk(event)
        except httpx.TransportError as exc:
            raise _connection_error(self.base_url, exc) from exc


def _last(inputs: Iterator[Any]) -> Any:
    value = None
    for value in inputs:  # the last input is the one to answer
        pass
    return value


def citation_documents(message: BaseMessage) -> list[Document]:
    """The citations of an answer (``invoke``'s message, or the sum of ``stream``'s chunks) as Documents:
    the cited chunk's text, with ``number`` (its ``[n]`` in the answer), ``source``, ``page``, ``chunk_index``,
    ``chunk_id``, ``score`` and ``collection_name`` as metadata."""
    documents = []
    for citation in message.response_metadata.get("citations") or []:
        metadata = {key: value for key, value in citation.items() if key != "text"}
        documents.append(Document(page_content=citation.get("text") or "", metadata=metadata,
                                  id=str(citation["chunk_id"]) if citation.get("chunk_id") is not None else None))
    return documents


__all__ = ["NimragAPIError", "NimragAnswerChain", "NimragChainInput", "NimragConnectionError", "NimragError",
           "NimragRetriever", "citation_documents"]
