"""The pipeline end to end over real HTTP, with the real services and bundled models: a mixed folder in, questions
answered with citations to the right files, deletions, bad input, concurrency. Every test runs on both store
backends: the platform's pipeline on FAISS + SQLite, then a replica on a Milvus server and Redis."""

from __future__ import annotations

import concurrent.futures
import functools
import json
import time

import httpx
import openai
import pytest

from tests.pipeline.conftest import UPLOAD_LIMIT

FACTS = {
    "zephyr-drone.pdf": "The Zephyr 9 drone has a maximum flight time of 47 minutes on one battery.",
    "orion-bakery.html": "The Orion bakery on Canal Street opens at 7 am and closes at 3 pm every weekday.",
    "kestrel-project.md": "Project Kestrel has a total budget of 2.4 million euros for the bridge renovation.",
    "helix-bicycle.docx": "The Helix carbon bicycle weighs 8.2 kilograms including the pedals.",
}
QUESTIONS = {
    "zephyr-drone.pdf": "What is the maximum flight time of the Zephyr 9 drone?",
    "orion-bakery.html": "When does the Orion bakery open?",
    "kestrel-project.md": "What is the budget of Project Kestrel?",
    "helix-bicycle.docx": "How much does the Helix bicycle weigh?",
}


def _pdf(text: str) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("Helvetica", size=12)
    pdf.add_page()
    pdf.multi_cell(0, 10, "Zephyr 9 product sheet. Chapter one covers unboxing and charging the controller.")
    pdf.add_page()
    pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def _docx(text: str) -> bytes:
    import io

    import docx

    document = docx.Document()
    document.add_heading("Helix bicycle", level=1)
    document.add_paragraph(text)
    out = io.BytesIO()
    document.save(out)
    return out.getvalue()


@functools.cache
def mixed_files() -> list[tuple[str, bytes]]:
    """Made once: PDF and DOCX writers stamp the time, and re-ingesting must see the same bytes."""
    return [
        ("zephyr-drone.pdf", _pdf(FACTS["zephyr-drone.pdf"])),
        ("orion-bakery.html", f"<html><head><title>Orion</title><script>x()</script></head><body><h1>Orion "
                              f"bakery</h1><p>{FACTS['orion-bakery.html']}</p></body></html>".encode()),
        ("kestrel-project.md", f"# Project Kestrel\n\n{FACTS['kestrel-project.md']}\n".encode()),
        ("helix-bicycle.docx", _docx(FACTS["helix-bicycle.docx"])),
        ("broken.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >>\nthis is not a real pdf"),
        ("empty.txt", b""),
        ("notes.xyz", b"unsupported"),
    ]


def upload(url: str, files, collection: str, blocking: bool, **kwargs) -> httpx.Response:
    data = {"data": json.dumps({"collection_name": collection, "blocking": blocking})}
    return httpx.post(url + "/v1/documents", data=data, files=[("documents", f) for f in files], timeout=300,
                      **kwargs)


@pytest.fixture(scope="module")
def url(backend_url) -> str:
    return backend_url


@pytest.fixture(scope="module")
def ingested(url) -> dict:
    started = upload(url, mixed_files(), "docs", blocking=False)
    assert started.status_code == 200, started.text
    task_id = started.json()["task_id"]
    deadline = time.monotonic() + 300
    while (status := httpx.get(url + "/v1/status", params={"task_id": task_id}).json())["state"] == "PENDING":
        assert time.monotonic() < deadline
        time.sleep(0.5)
    return status


def test_mixed_folder_ingested_broken_files_reported(ingested):
    assert ingested["state"] == "FINISHED"
    files = {f["source"]: f for f in ingested["result"]["files"]}
    assert {s for s, f in files.items() if f["status"] == "added"} == set(FACTS)
    assert "not a PDF or damaged" in files["broken.pdf"]["reason"] or "broken" in files["broken.pdf"]["reason"]
    assert "empty" in files["empty.txt"]["reason"]
    assert "unsupported file type" in files["notes.xyz"]["reason"]


def test_reingest_unchanged_does_nothing(url, ingested):
    again = upload(url, mixed_files()[:4], "docs", blocking=True).json()
    assert {f["status"] for f in again["result"]["files"]} == {"unchanged"}


def test_documents_listed_with_pages(url, ingested):
    docs = {d["source"]: d for d in httpx.get(url + "/v1/documents", params={"collection_name": "docs"})
            .json()["documents"]}
    assert set(docs) == set(FACTS) and all(d["chunks"] >= 1 for d in docs.values())


@pytest.mark.parametrize("source", list(QUESTIONS))
def test_answer_cites_the_file_that_holds_the_fact(url, ingested, source):
    reply = httpx.post(url + "/v1/generate", timeout=300, json={
        "messages": [{"role": "user", "content": QUESTIONS[source]}], "collection_name": "docs",
        "stream": False, "max_tokens": 48, "temperature": 0})
    assert reply.status_code == 200, reply.text
    body = reply.json()
    top = body["citations"]["results"][0]
    assert top["source"] == source and top["collection_name"] == "docs"
    if source.endswith(".pdf"):
        assert top["page"] == 2  # the fact is on the PDF's second page
    assert body["choices"][0]["message"]["content"]
    assert body["metrics"]["retrieval_ms"] > 0 and body["metrics"]["rerank_ms"] > 0


def test_streamed_answer_chunks_citations_usage_and_timings(url, ingested):
    events = []
    with httpx.stream("POST", url + "/v1/generate", timeout=300, json={
            "messages": [{"role": "user", "content": QUESTIONS["kestrel-project.md"]}],
            "collection_name": "docs", "max_tokens": 32}) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in r.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["citations"]["results"][0]["source"] == "kestrel-project.md"
    final = events[-1]
    assert final["choices"][0]["finish_reason"] in ("stop", "length") and final["usage"]["completion_tokens"] > 0
    assert {"retrieval_ms", "rerank_ms", "llm_ttft_ms", "total_ms"} <= set(final["metrics"])
    assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events)


def test_openai_sdk_chats_with_a_collection(url, ingested):
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
    reply = client.chat.completions.create(model="nimrag-rag", max_tokens=32, temperature=0,
                                           messages=[{"role": "user", "content": QUESTIONS["orion-bakery.html"]}],
                                           extra_body={"collection_name": "docs"})
    assert reply.choices[0].message.content
    assert reply.model_extra["citations"]["results"][0]["source"] == "orion-bakery.html"
    stream = client.chat.completions.create(model="nimrag-rag", max_tokens=16, stream=True,
                                            messages=[{"role": "user", "content": "Tell me about the drone."}],
                                            extra_body={"collection_name": "docs"})
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)


def test_follow_up_question_uses_the_conversation(url, ingested):
    reply = httpx.post(url + "/v1/search", json={"query": "How heavy is it?", "collection_name": "docs"}).json()
    alone = [r["document_name"] for r in reply["results"]]
    turns = [{"role": "user", "content": "Tell me about the Helix bicycle."},
             {"role": "assistant", "content": "It is a carbon bicycle."},
             {"role": "user", "content": "How heavy is it?"}]
    body = httpx.post(url + "/v1/generate", timeout=300, json={
        "messages": turns, "collection_name": "docs", "stream": False, "max_tokens": 24}).json()
    assert body["citations"]["results"][0]["source"] == "helix-bicycle.docx"
    assert "helix-bicycle.docx" not in alone[:1]  # alone, the follow-up does not find it


def test_search_ranks_and_filters(url, ingested):
    hits = httpx.post(url + "/v1/search", json={"query": "bakery opening hours", "collection_name": "docs"}).json()
    assert hits["results"][0]["document_name"] == "orion-bakery.html" and hits["results"][0]["metadata"]["page"]\
        is None
    assert {r["collection_name"] for r in hits["results"]} == {"docs"}
    only = httpx.post(url + "/v1/search", json={"query": "bakery opening hours", "collection_name": "docs",
                                               "enable_reranker": False,  # no relevance threshold
                                               "filter": {"sources": ["kestrel-project.md"]}}).json()
    assert {r["document_name"] for r in only["results"]} == {"kestrel-project.md"}
    for mode in ("dense", "lexical"):
        got = httpx.post(url + "/v1/search", json={"query": "Zephyr drone flight time", "collection_name": "docs",
                                                  "search_mode": mode, "enable_reranker": False}).json()
        assert got["results"][0]["document_name"] == "zephyr-drone.pdf", mode


def test_off_topic_question_is_not_answered_from_the_documents(url, ingested):
    body = httpx.post(url + "/v1/generate", timeout=60, json={
        "messages": [{"role": "user", "content": "Who wrote the play Hamlet?"}], "collection_name": "docs",
        "stream": False}).json()
    assert "could not find anything relevant" in body["choices"][0]["message"]["content"]
    assert body["usage"]["completion_tokens"] == 0  # the LLM was not asked


def test_empty_collection_says_nothing_relevant(url):
    assert httpx.post(url + "/v1/collections", json={"collection_name": "empty"}, timeout=60).status_code == 200
    body = httpx.post(url + "/v1/generate", timeout=60, json={
        "messages": [{"role": "user", "content": "What is the capital of France?"}], "collection_name": "empty",
        "stream": False}).json()
    assert "could not find anything relevant" in body["choices"][0]["message"]["content"]
    assert body["citations"]["total_results"] == 0


def test_deleted_file_is_no_longer_cited(url, ingested):
    upload(url, [mixed_files()[3]], "deletions", blocking=True)
    upload(url, mixed_files()[:3], "deletions", blocking=True)
    r = httpx.delete(url + "/v1/documents", params={"collection_name": "deletions",
                                                    "document_names": ["helix-bicycle.docx", "missing.txt"]})
    assert r.json()["deleted"] == ["helix-bicycle.docx"] and r.json()["not_found"] == ["missing.txt"]
    body = httpx.post(url + "/v1/generate", timeout=300, json={
        "messages": [{"role": "user", "content": QUESTIONS["helix-bicycle.docx"]}],
        "collection_name": "deletions", "stream": False, "max_tokens": 8}).json()
    assert "helix-bicycle.docx" not in {c["source"] for c in body["citations"]["results"]}


BAD = [
    ("unknown collection", "post", "/v1/search", {"json": {"query": "x", "collection_name": "nope"}}, 404),
    ("traversal in collection", "post", "/v1/search", {"json": {"query": "x", "collection_name": "../etc"}}, 422),
    ("empty question", "post", "/v1/generate", {"json": {"messages": [{"role": "user", "content": "  "}]}}, 422),
    ("no messages", "post", "/v1/generate", {"json": {"messages": []}}, 422),
    ("blank query", "post", "/v1/search", {"json": {"query": " "}}, 422),
    ("unknown task", "get", "/v1/status", {"params": {"task_id": "nope"}}, 404),
    ("bad collection create", "post", "/v1/collections", {"json": {"collection_name": "a/b"}}, 422),
    ("delete unknown collection", "delete", "/v1/collections", {"params": {"collection_name": "nope"}}, 404),
    ("upload without files", "post", "/v1/documents", {"data": {"data": "{}"}}, 400),
    ("bad upload options", "post", "/v1/documents", {"data": {"data": '{"split_options": {"chunk_size": 2}}'},
                                                     "files": [("documents", ("a.txt", b"hello"))]}, 422),
]


@pytest.mark.parametrize("case,method,path,kwargs,status", BAD, ids=[b[0] for b in BAD])
def test_bad_input_is_a_clear_4xx(url, ingested, case, method, path, kwargs, status):
    r = httpx.request(method.upper(), url + path, timeout=60, **kwargs)
    assert r.status_code == status, r.text
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}


def test_upload_limits_and_names(url, ingested):
    huge = upload(url, [("big.txt", b"x" * (UPLOAD_LIMIT + 1))], "docs", blocking=True)
    assert huge.status_code == 413
    evil = upload(url, [("../../evil.txt", b"sneaky")], "docs", blocking=True)
    assert evil.status_code == 400 and "Invalid file name" in evil.json()["error"]["message"]
    docs = httpx.get(url + "/v1/documents", params={"collection_name": "docs"}).json()
    assert {d["source"] for d in docs["documents"]} == set(FACTS)  # nothing lost, nothing added


def test_searches_keep_working_during_an_ingest(url, ingested):
    files = [(f"note-{i}.txt", (f"Note {i}: the warehouse shelf {i} holds {i * 3} boxes. " * 60).encode())
             for i in range(90)]
    started = upload(url, files, "docs", blocking=False).json()
    statuses = []
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        while httpx.get(url + "/v1/status", params={"task_id": started["task_id"]}).json()["state"] == "PENDING":
            futures = [pool.submit(httpx.post, url + "/v1/search", json={
                "query": "bakery opening hours", "collection_name": "docs", "enable_reranker": False}, timeout=60)
                for _ in range(2)]
            statuses += [f.result().status_code for f in futures]
    assert statuses and set(statuses) == {200}
    final = httpx.get(url + "/v1/status", params={"task_id": started["task_id"]}).json()
    assert final["result"]["counts"] == {"added": 90}


def test_health_reports_dependencies(url):
    body = httpx.get(url + "/v1/health", params={"check_dependencies": True}).json()
    assert body["status"] == "healthy"
    assert {name: d["status"] for name, d in body["dependencies"].items()} == \
        {"embed": "ready", "rerank": "ready", "llm": "ready", "vector_store": "ready", "task_store": "ready"}


def test_pipeline_metrics(url, ingested):
    for question in (QUESTIONS["kestrel-project.md"], "Who wrote the play Hamlet?"):  # grounded, then not
        httpx.post(url + "/v1/generate", timeout=300, json={
            "messages": [{"role": "user", "content": question}], "collection_name": "docs", "stream": False,
            "max_tokens": 4})
    text = httpx.get(url + "/v1/metrics").text
    assert 'nimrag_ingested_files_total{status="added"}' in text and "nimrag_ingested_chunks_total" in text
    assert 'nimrag_rag_stage_seconds_count{stage="retrieval"}' in text
    assert 'nimrag_rag_answers_total{grounded="no"}' in text and 'nimrag_rag_answers_total{grounded="yes"}' in text
