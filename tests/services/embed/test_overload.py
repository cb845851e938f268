"""Admission by expected wait, on a real embedding service: with a small maximum wait, a burst is partly refused
with 429 and a Retry-After, and everything admitted is answered (none of it left to time out)."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.conftest import start_service

TEXT = "The quick brown fox jumps over the lazy dog near the river bank while the sun sets. " * 4


@pytest.fixture(scope="module")
def impatient_service(service_tmp):
    svc = start_service("embed", service_tmp, env={"NIMRAG_EMBED_MAX_QUEUE_WAIT_S": "0.05"})
    yield svc
    svc.stop()


def test_a_burst_gets_429s_with_retry_after_and_the_admitted_requests_finish(impatient_service):
    url = impatient_service.base_url + "/v1/embeddings"
    body = {"input": [TEXT] * 64, "truncate": "END"}
    assert httpx.post(url, json=body, timeout=120).status_code == 200  # nothing ahead: admitted, and measured
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        responses = list(pool.map(lambda _: httpx.post(url, json=body, timeout=120), range(12)))
    statuses = [r.status_code for r in responses]
    assert set(statuses) == {200, 429}, statuses
    for r in responses:
        if r.status_code == 429:
            assert int(r.headers["retry-after"]) >= 1
            error = r.json()["error"]
            assert error["code"] == "queue_wait_too_long" and error["type"] == "rate_limit_error", error
        else:
            assert len(r.json()["data"]) == 64
    metrics = httpx.get(impatient_service.base_url + "/v1/metrics").text
    assert 'reason="queue_wait"' in metrics
    assert httpx.post(url, json={"input": "still serving"}, timeout=60).status_code == 200
