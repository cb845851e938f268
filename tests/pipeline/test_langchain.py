"""The LangChain integration against a real platform (embed, rerank, LLM and pipeline processes) over HTTP."""

from __future__ import annotations

import asyncio
import functools
import json
import operator

import httpx
import pytest

pytest.importorskip("langchain_core")

from langchain_core.messages import AIMessage, AIMessageChunk, HumanMessage, ToolMessage
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate, MessagesPlaceholder

from nimrag.pipeline.langchain import (
    NimragAnswerChain,
    NimragAPIError,
    NimragConnectionError,
    NimragRetriever,
    _turns,
    citation_documents,
)
from tests.pipeline.conftest import pipeline_url as url_of

COLLECTION = "lc"
DOCUMENTS = {
    "saturn.txt": "The planet Saturn has a famous ring system made mostly of ice particles. Saturn's largest moon "
                  "is Titan, which has a thick nitrogen atmosphere.",
    "bakery.txt": "The Morning Crust bakery opens at 6:30 in the morning and its signature bread is a rye "
                  "sourdough baked with caraway seeds.",
    "warranty.txt": "The Zephyr X2 vacuum cleaner comes with a warranty of 7 years covering the motor and the "
                    "battery.",
}
ANSWER_TOKENS = 32  # short answers: the CPU LLM is the slow part of this file


@pytest.fixture(scope="module")
def pipeline_url(platform) -> str:
    """The shared platform, with the three documents in collection 'lc'."""
    url = url_of(platform)
    response = httpx.post(url + "/v1/documents", timeout=120,
                          data={"data": json.dumps({"collection_name": COLLECTION, "blocking": True})},
                          files=[("documents", (name, text.encode())) for name, text in DOCUMENTS.items()])
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "FINISHED", response.text
    return url


@pytest.fixture
def retriever(pipeline_url) -> NimragRetriever:
    return NimragRetriever(base_url=pipeline_url, collection_name=COLLECTION, top_k=3)


@pytest.fixture
def chain(pipeline_url) -> NimragAnswerChain:
    return NimragAnswerChain(base_url=pipeline_url, collection_name=COLLECTION, max_tokens=ANSWER_TOKENS,
                             temperature=0)


# --- the retriever --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("question", "source"), [
    ("What is the largest moon of Saturn?", "saturn.txt"),
    ("What is the signature bread of the Morning Crust bakery?", "bakery.txt"),
    ("How many years is the warranty of the Zephyr X2 vacuum cleaner?", "warranty.txt"),
])
def test_retriever_returns_the_right_document_first(retriever, question, source):
    documents = retriever.invoke(question)
    assert 1 <= len(documents) <= 3  # the other documents may fall under the relevance threshold
    best = documents[0]
    assert best.metadata["source"] == source
    assert best.page_content == DOCUMENTS[source]
    assert best.metadata["chunk_index"] == 0 and best.metadata["collection"] == COLLECTION
    assert best.id == best.metadata["document_id"]
    scores = [d.metadata["score"] for d in documents]
    assert scores == sorted(scores, reverse=True)


def test_retriever_async(retriever):
    async def both():
        return await asyncio.gather(retriever.ainvoke("When does the bakery open in the morning?"),
                                    retriever.ainvoke("Which moon of Saturn has a nitrogen atmosphere?"))

    bakery, saturn = asyncio.run(both())
    assert bakery[0].metadata["source"] == "bakery.txt"
    assert saturn[0].metadata["source"] == "saturn.txt"


def test_retriever_filters_by_source(retriever, pipeline_url):
    question = "What is the largest moon of Saturn?"
    # without the reranker there is no relevance threshold: a filter on unrelated files still returns them
    only = retriever.invoke(question, sources=["warranty.txt"], enable_reranker=False)  # per-call override
    assert [d.metadata["source"] for d in only] == ["warranty.txt"]
    fixed = NimragRetriever(base_url=pipeline_url, collection_name=COLLECTION, enable_reranker=False,
                            sources=["bakery.txt", "warranty.txt"])
    assert {d.metadata["source"] for d in fixed.invoke(question)} == {"bakery.txt", "warranty.txt"}
    top1 = retriever.invoke(question, top_k=1, search_mode="lexical", enable_reranker=False)
    assert [d.metadata["source"] for d in top1] == ["saturn.txt"]


def test_retriever_errors_are_clear(retriever, pipeline_url):
    with pytest.raises(NimragAPIError, match="Collection 'missing' does not exist") as caught:
        retriever.invoke("anything", collection_name="missing")
    assert caught.value.status_code == 404 and caught.value.code == "collection_not_found"
    with pytest.raises(NimragAPIError, match="collection_name") as caught:
        asyncio.run(retriever.ainvoke("anything", collection_name="not a name!"))
    assert caught.value.status_code == 422
    with pytest.raises(TypeError, match="per-call options"):
        retriever.invoke("anything", k=3)
    with pytest.raises(NimragConnectionError, match="127.0.0.1:1"):
        NimragRetriever(base_url="http://127.0.0.1:1").invoke("anything")


# --- the answer chain -----------------------------------------------------------------------------------------
def test_chain_invoke_answers_with_citations(chain):
    message = chain.invoke("What is the largest moon of Saturn?")
    assert isinstance(message, AIMessage)
    assert "titan" in message.content.lower()
    citations = message.response_metadata["citations"]
    assert citations[0]["source"] == "saturn.txt" and citations[0]["number"] == 1
    assert citations[0]["text"] == DOCUMENTS["saturn.txt"]
    assert message.response_metadata["finish_reason"] in ("stop", "length")
    assert "total_ms" in message.response_metadata["metrics"]
    assert 0 < message.usage_metadata["output_tokens"] <= ANSWER_TOKENS
    documents = citation_documents(message)
    assert documents[0].metadata["source"] == "saturn.txt" and documents[0].metadata["number"] == 1


def test_chain_stream_yields_the_answer_in_chunks(chain):
    chunks = list(chain.stream("What is the signature bread of the Morning Crust bakery?"))
    assert all(isinstance(c, AIMessageChunk) for c in chunks)
    assert sum(1 for c in chunks if c.content) >= 2
    answer = "".join(c.content for c in chunks)
    assert answer.strip()
    assert chunks[0].response_metadata["citations"][0]["source"] == "bakery.txt"
    assert chunks[-1].response_metadata["finish_reason"] in ("stop", "length")
    assert chunks[-1].usage_metadata["output_tokens"] > 0
    whole = functools.reduce(operator.add, chunks)
    assert whole.content == answer
    assert [c["source"] for c in whole.response_metadata["citations"]] == \
        [c["source"] for c in chunks[0].response_metadata["citations"]]


def test_chain_takes_a_conversation_in_lcel(chain):
    """Multi-turn: a chat prompt with history, piped through the chain into a string parser, streamed async."""
    prompt = ChatPromptTemplate.from_messages([MessagesPlaceholder("history"), ("human", "{question}")])
    text_chain = prompt | chain | StrOutputParser()
    history = [HumanMessage("Tell me about the Zephyr X2 vacuum cleaner."),
               AIMessage("The Zephyr X2 is a vacuum cleaner.")]

    async def run():
        return [piece async for piece in text_chain.astream({"history": history,
                                                             "question": "How long is its warranty?"})]

    pieces = asyncio.run(run())
    assert all(isinstance(p, str) for p in pieces)
    assert len(pieces) >= 2 and "".join(pieces).strip()


def test_chain_takes_a_question_with_chat_history(chain):
    message = asyncio.run(chain.ainvoke({
        "question": "And what is its largest moon?",
        "chat_history": [("human", "Which planet has a ring system of ice particles?"),
                         ("ai", "Saturn has a ring system made mostly of ice particles.")]}))
    assert message.content.strip()
    assert message.response_metadata["citations"][0]["source"] == "saturn.txt"


def test_chain_errors_are_clear(chain):
    with pytest.raises(NimragAPIError, match="Collection 'missing' does not exist") as caught:
        chain.invoke("anything", collection_name="missing")
    assert caught.value.status_code == 404
    with pytest.raises(NimragAPIError, match="does not exist"):
        list(chain.stream("anything", collection_name="missing"))

    async def stream_bad_name():
        return [c async for c in chain.astream("anything", collection_name="not a name!")]

    with pytest.raises(NimragAPIError, match="collection_name") as caught:
        asyncio.run(stream_bad_name())
    assert caught.value.status_code == 422
    with pytest.raises(NimragAPIError, match="last message must be a non-empty user question"):
        chain.invoke([("human", "Hello"), ("ai", "Hi!")])


def test_chain_inputs_become_the_pipelines_messages():
    assert _turns("Why?") == [{"role": "user", "content": "Why?"}]
    assert _turns({"question": "Why?", "chat_history": [("human", "Hi"), ("ai", "Hello")]}) == [
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello"},
        {"role": "user", "content": "Why?"}]
    assert _turns([("system", "Be brief."), {"role": "user", "content": "Why?"}]) == [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Why?"}]
    with pytest.raises(ValueError, match="user, assistant and system"):
        _turns([ToolMessage("42", tool_call_id="t1")])
    with pytest.raises(TypeError, match="'question'"):
        _turns({"chat_history": []})
    with pytest.raises(TypeError, match="per-call options"):
        NimragAnswerChain().invoke("Why?", stream=True)
