"""Admission by expected wait, on a real embedding service: with a small maximum wait, a burst is partly refused
with 429 and a Retry-After, and everything admitted is answered (none of it left to time out)."""

from __future__ import annotations

from tests.services.overload import assert_burst_partly_refused_by_wait, impatient_service_fixture

TEXT = "The quick brown fox jumps over the lazy dog near the river bank while the sun sets. " * 4

impatient_service = impatient_service_fixture("embed")


def test_a_burst_gets_429s_with_retry_after_and_the_admitted_requests_finish(impatient_service):
    def embedded_all(body: dict) -> None:
        assert len(body["data"]) == 64

    assert_burst_partly_refused_by_wait(impatient_service.base_url, "/v1/embeddings",
                                        {"input": [TEXT] * 64, "truncate": "END"}, embedded_all)
