"""No request field silently ignored, over real HTTP: every row of the rerank API's unsupported-field table is a
400 naming the field unless its value asks for nothing; other unknown fields, in both APIs, are named back."""

from __future__ import annotations

import httpx
import pytest

from nimrag.services.rerank.protocol import RERANK_UNSUPPORTED
from tests.services.field_audit import harmless_bodies, named_back, refused_cases
from tests.services.rerank.conftest import PASSAGES, QUERY

BASE = {"query": QUERY, "documents": PASSAGES[:2]}
REFUSED = refused_cases(RERANK_UNSUPPORTED, BASE, "rerank")


def post(service, path: str, body) -> httpx.Response:
    return httpx.post(service.base_url + path, json=body, timeout=60)


@pytest.mark.parametrize("case,endpoint,body,param", REFUSED, ids=[c[0] for c in REFUSED])
def test_unsupported_field_is_a_400_naming_it(rerank_service, case, endpoint, body, param):
    r = post(rerank_service, "/v1/rerank", body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_field", error


def test_values_that_ask_for_nothing_are_served(rerank_service):
    for body in harmless_bodies(RERANK_UNSUPPORTED, BASE):
        r = post(rerank_service, "/v1/rerank", body)
        assert r.status_code == 200, r.text
        assert named_back(r) == set()


def test_unknown_fields_are_served_and_named_back_in_both_apis(rerank_service):
    r = post(rerank_service, "/v1/rerank", {"query": QUERY, "documents": [{"text": PASSAGES[0], "title": "t"}],
                                            "raw_scores": True})
    assert r.status_code == 200 and named_back(r) == {"raw_scores", "documents[0].title"}
    ranking = {"query": {"text": QUERY, "lang": "en"}, "passages": [{"text": p} for p in PASSAGES[:2]],
               "top_n": 1}
    r = post(rerank_service, "/v1/ranking", ranking)
    assert r.status_code == 200 and named_back(r) == {"top_n", "query.lang"}
    assert len(r.json()["rankings"]) == 2  # named back because it is not applied: every passage is ranked
