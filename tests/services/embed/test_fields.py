"""No request field silently ignored, over real HTTP: every row of the embeddings API's unsupported-field table is
a 400 naming the field unless its value asks for nothing, and any other unknown field is named back."""

from __future__ import annotations

import httpx
import pytest

from nimrag.services.embed.protocol import EMBEDDING_UNSUPPORTED
from tests.services.field_audit import harmless_bodies, named_back, refused_cases

BASE = {"input": ["hello world"]}
REFUSED = refused_cases(EMBEDDING_UNSUPPORTED, BASE, "embeddings")


def post(embed_service, body) -> httpx.Response:
    return httpx.post(embed_service.base_url + "/v1/embeddings", json=body, timeout=60)


@pytest.mark.parametrize("case,endpoint,body,param", REFUSED, ids=[c[0] for c in REFUSED])
def test_unsupported_field_is_a_400_naming_it(embed_service, case, endpoint, body, param):
    r = post(embed_service, body)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == param and error["code"] == "unsupported_field", error


@pytest.mark.parametrize("value", ["binary", "int8", "ubinary", "uint8"])
def test_quantized_embedding_types_are_refused(embed_service, value):
    error = post(embed_service, {**BASE, "embedding_type": value}).json()["error"]
    assert error["param"] == "embedding_type" and "float" in error["message"]


def test_values_that_ask_for_nothing_are_served(embed_service):
    bodies = harmless_bodies(EMBEDDING_UNSUPPORTED, BASE)
    bodies += [{**BASE, "modality": "text"}, {"input": ["a", "b"], "modality": ["text", "text"]}]
    for body in bodies:
        r = post(embed_service, body)
        assert r.status_code == 200, r.text
        assert named_back(r) == set()
    refused = post(embed_service, {"input": ["a", "b"], "modality": ["text", "image"]})
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "modality"


def test_unknown_fields_are_served_and_named_back(embed_service):
    r = post(embed_service, {**BASE, "frobnicate": 1, "input_kind": "x"})
    assert r.status_code == 200 and named_back(r) == {"frobnicate", "input_kind"}
    assert named_back(post(embed_service, BASE)) == set()
