"""Admission by expected wait, on a real reranking service: with a small maximum wait, a burst is partly refused
with 429 and a Retry-After, and everything admitted is answered (none of it left to time out)."""

from __future__ import annotations

from tests.services.overload import assert_burst_partly_refused_by_wait, impatient_service_fixture
from tests.services.rerank.conftest import PASSAGES, QUERY

PASSAGE_COUNT = 64

impatient_service = impatient_service_fixture("rerank")


def test_a_burst_gets_429s_with_retry_after_and_the_admitted_requests_finish(impatient_service):
    passages = [{"text": f"{PASSAGES[i % len(PASSAGES)]} (passage {i})"} for i in range(PASSAGE_COUNT)]

    def ranked_all(body: dict) -> None:
        assert sorted(r["index"] for r in body["rankings"]) == list(range(PASSAGE_COUNT))

    assert_burst_partly_refused_by_wait(impatient_service.base_url, "/v1/ranking",
                                        {"query": {"text": QUERY}, "passages": passages}, ranked_all)
