"""Two pipeline replicas on one Milvus server and one Redis, requests alternating between them: what is ingested
through one is found, answered, reported and deleted through the other at once, policies edited through one apply
on both, and a replica killed mid-upload is reported truthfully by the survivors."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.conftest import sigkill_mid_upload
from tests.pipeline.conftest import ADMIN_KEY, start_replica
from tests.pipeline.test_api import FACTS, QUESTIONS, mixed_files, upload

ADMIN = {"Authorization": f"Bearer {ADMIN_KEY}"}


@pytest.fixture(scope="module")
def pair(replicas) -> tuple[str, str]:
    return replicas[0].base_url, replicas[1].base_url


def wait_for_task(urls: tuple[str, ...], task_id: str, timeout_s: float = 300) -> dict:
    """Polls the task through each replica in turn until it is no longer PENDING; its final status."""
    deadline = time.monotonic() + timeout_s
    for n in range(10**6):
        status = httpx.get(urls[n % len(urls)] + "/v1/status", params={"task_id": task_id}, timeout=30)
        assert status.status_code == 200, status.text
        if status.json()["state"] != "PENDING":
            return status.json()
        assert time.monotonic() < deadline, status.json()
        time.sleep(0.3)
    raise AssertionError("unreachable")


def search(url: str, query: str, collection: str) -> list[tuple]:
    body = httpx.post(url + "/v1/search", timeout=60, json={"query": query, "collection_name": collection}).json()
    return [(r["document_name"], r["content"], r["score"]) for r in body["results"]]


@pytest.fixture(scope="module")
def shared_docs(pair) -> dict:
    """The mixed folder uploaded through the first replica, its task followed through both."""
    started = upload(pair[0], mixed_files(), "replicated", blocking=False)
    assert started.status_code == 200, started.text
    return wait_for_task(pair, started.json()["task_id"])


def test_a_task_started_on_one_replica_is_reported_the_same_by_both(pair, shared_docs):
    assert shared_docs["state"] == "FINISHED"
    statuses = [httpx.get(url + "/v1/status", params={"task_id": shared_docs["task_id"]}).json() for url in pair]
    assert statuses[0] == statuses[1] == shared_docs


def test_documents_ingested_through_one_are_found_through_the_other(pair, shared_docs):
    for url in pair:
        listed = httpx.get(url + "/v1/documents", params={"collection_name": "replicated"}).json()["documents"]
        assert {d["source"] for d in listed} == set(FACTS)
    for source, question in QUESTIONS.items():
        hits = [search(url, question, "replicated") for url in pair]
        assert hits[0] == hits[1] and hits[0][0][0] == source


def test_both_replicas_answer_a_question_the_same_way(pair, shared_docs):
    answers = []
    for url in pair:
        reply = httpx.post(url + "/v1/generate", timeout=300, json={
            "messages": [{"role": "user", "content": QUESTIONS["kestrel-project.md"]}],
            "collection_name": "replicated", "stream": False, "max_tokens": 32, "temperature": 0})
        assert reply.status_code == 200, reply.text
        body = reply.json()
        answers.append((body["choices"][0]["message"]["content"],
                        [c["source"] for c in body["citations"]["results"]]))
    assert answers[0] == answers[1] and answers[0][1][0] == "kestrel-project.md"


def test_a_delete_through_one_replica_is_seen_by_the_other(pair, shared_docs):
    first, second = pair
    upload(first, [mixed_files()[3]], "replicated-deletions", blocking=True)
    gone = httpx.delete(second + "/v1/documents", params={"collection_name": "replicated-deletions",
                                                          "document_names": ["helix-bicycle.docx"]}).json()
    assert gone["deleted"] == ["helix-bicycle.docx"]
    listed = httpx.get(first + "/v1/documents", params={"collection_name": "replicated-deletions"}).json()
    assert listed["documents"] == []
    assert search(first, QUESTIONS["helix-bicycle.docx"], "replicated-deletions") == []
    assert httpx.delete(second + "/v1/collections", params={"collection_name": "replicated-deletions"}
                        ).status_code == 200
    missing = httpx.get(first + "/v1/documents", params={"collection_name": "replicated-deletions"})
    assert missing.status_code == 404, missing.text


def test_a_policy_edited_through_one_replica_applies_on_the_other(pair):
    first, second = pair
    httpx.delete(first + "/v1/guardrails/configs/replicated-masking", headers=ADMIN)
    created = httpx.post(first + "/v1/guardrails/configs", headers=ADMIN, timeout=60, json={
        "id": "replicated-masking", "files": {"config.yml": "nimrag:\n  mask_sensitive_data: [email]\n"}})
    assert created.status_code == 201, created.text
    seen = httpx.get(second + "/v1/guardrails/configs/replicated-masking").json()
    assert seen["version"] == created.json()["version"]
    reply = httpx.post(second + "/v1/generate", timeout=300, json={
        "messages": [{"role": "user", "content": "Repeat exactly: write to help.desk@lumen-home.example today."}],
        "use_knowledge_base": False, "stream": False, "max_tokens": 40, "temperature": 0,
        "guardrails": {"config_id": "replicated-masking"}}).json()
    assert "help.desk@lumen-home.example" not in reply["choices"][0]["message"]["content"]
    assert reply["guardrails"]["config_id"] == "replicated-masking"


def long_upload() -> list[tuple[str, bytes]]:
    """Enough text that ingesting it takes many seconds on two cores, each file distinct."""
    return [(f"report-{n:02d}.txt", "\n\n".join(f"Report {n}, section {s}: the turbine in hall {n} ran for "
                                                f"{s * 37 + n} hours before service number {s}." * 6
                                                for s in range(60)).encode()) for n in range(40)]


def test_a_replica_killed_mid_upload_is_reported_interrupted_by_the_others(platform, shared_stores, pair,
                                                                          tmp_path):
    doomed = start_replica(platform, shared_stores, tmp_path / "doomed", env={"NIMRAG_PIPELINE_TASK_LEASE_S": "2"})
    try:
        started = upload(doomed.base_url, long_upload(), "replicated-killed", blocking=False)
        assert started.status_code == 200, started.text
        task_id = started.json()["task_id"]
    except BaseException:
        doomed.stop()
        raise
    sigkill_mid_upload(doomed, task_id, files_done=1, status_url=pair[0])
    final = wait_for_task(pair, task_id, timeout_s=60)
    assert final["state"] == "FAILED" and "Interrupted" in final["error"], final
    done = final["progress"]["files_done"]
    assert 1 <= done < len(long_upload()), final  # killed midway, as the test means to
    again = upload(pair[1], long_upload(), "replicated-killed", blocking=True).json()
    statuses = [f["status"] for f in again["result"]["files"]]
    assert statuses.count("unchanged") >= done and set(statuses) <= {"unchanged", "added"}, statuses
    listed = httpx.get(pair[0] + "/v1/documents", params={"collection_name": "replicated-killed"}).json()
    assert len(listed["documents"]) == len(long_upload())
