"""The reranking service end to end, with NVIDIARerank, a Cohere-style client request and raw HTTP; every test on
each backend (tests/services/rerank/conftest.py): the scorer in-process, and in Triton (``nimrag triton serve``)."""

from __future__ import annotations

import concurrent.futures

import httpx
import pytest

from tests.services.rerank.conftest import PASSAGES, QUERY

MODEL = "sentence-transformers/all-MiniLM-L6-v2"


@pytest.fixture(scope="module")
def http(api_rerank_service):
    with httpx.Client(base_url=api_rerank_service.base_url, timeout=60) as c:
        yield c


def _ranking(client: httpx.Client, query=QUERY, passages=PASSAGES, **extra) -> httpx.Response:
    return client.post("/v1/ranking", json={"model": MODEL, "query": {"text": query},
                                            "passages": [{"text": p} for p in passages], **extra})


def test_ranking_is_sorted_one_entry_per_passage(http):
    response = _ranking(http)
    assert response.status_code == 200, response.text
    rankings = response.json()["rankings"]
    assert sorted(r["index"] for r in rankings) == list(range(len(PASSAGES)))
    logits = [r["logit"] for r in rankings]
    assert logits == sorted(logits, reverse=True)
    assert rankings[0]["index"] in (1, 3)  # a passage that answers the question


def test_langchain_nvidia_rerank(api_rerank_service):
    from langchain_core.documents import Document
    from langchain_nvidia_ai_endpoints import NVIDIARerank

    reranker = NVIDIARerank(base_url=api_rerank_service.base_url + "/v1", model=MODEL, top_n=2)
    ranked = reranker.compress_documents([Document(page_content=p) for p in PASSAGES], QUERY)
    assert len(ranked) == 2
    assert "Paris" in ranked[0].page_content
    assert ranked[0].metadata["relevance_score"] >= ranked[1].metadata["relevance_score"]


def test_cohere_style_rerank(http):
    response = http.post("/v1/rerank", json={"model": MODEL, "query": QUERY,
                                              "documents": [PASSAGES[0], {"text": PASSAGES[1]}, PASSAGES[2]],
                                              "top_n": 2, "return_documents": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert [r["index"] for r in body["results"]] == [1, 0]
    assert body["results"][0]["document"]["text"] == PASSAGES[1]
    assert body["results"][0]["relevance_score"] > body["results"][1]["relevance_score"]
    assert body["usage"]["total_tokens"] > 0 and body["model"] == MODEL
    plain = http.post("/v1/rerank", json={"query": QUERY, "documents": PASSAGES}).json()
    assert len(plain["results"]) == len(PASSAGES) and "document" not in plain["results"][0]


def test_same_answer_alone_and_batched_with_others(api_rerank_service):
    url = api_rerank_service.base_url + "/v1/ranking"
    body = {"query": {"text": QUERY}, "passages": [{"text": p} for p in PASSAGES]}
    alone = httpx.post(url, json=body).json()["rankings"]
    others = {"query": {"text": "bananas"}, "passages": [{"text": p} for p in reversed(PASSAGES)]}
    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(httpx.post, url, json=body if i % 2 else others) for i in range(16)]
        batched = [f.result().json()["rankings"] for i, f in enumerate(futures) if i % 2]
    for rankings in batched:
        assert [r["index"] for r in rankings] == [r["index"] for r in alone]
        for got, want in zip(rankings, alone):
            assert got["logit"] == pytest.approx(want["logit"], abs=1e-4)


def test_models_and_metadata_say_which_scorer_serves(http):
    card = http.get("/v1/models").json()["data"][0]
    assert card["id"] == MODEL and card["scorer"] == "late-interaction"
    meta = http.get("/v1/metadata").json()
    assert meta["model"]["scorer"] == "late-interaction" and "MaxSim" in meta["model"]["scorer_description"]
    assert meta["selectedModelProfileId"] != "onnx-cpu-int8"  # int8 is never auto-selected for ranking


def test_the_backend_serves(http, backend):
    engine = http.get("/v1/metadata").json()["engine"]
    if backend == "triton":
        assert engine["backend"] == "triton" and engine["triton_model"] in ("embed", "rerank")
    else:
        assert engine["backend"] in ("onnxruntime", "torch")


BAD_INPUTS = [
    ("empty query", "/v1/ranking", {"query": {"text": " "}, "passages": [{"text": "x"}]}, 400, "query is empty"),
    ("no passages", "/v1/ranking", {"query": {"text": "q"}, "passages": []}, 400, "passages must not be empty"),
    ("empty passage", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "a"}, {"text": ""}]}, 400,
     "passages[1] is empty"),
    ("query as string", "/v1/ranking", {"query": "q", "passages": [{"text": "x"}]}, 422, "query"),
    ("passage without text", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"txt": "x"}]}, 422,
     "passages.0.text: Field required"),
    ("missing passages", "/v1/ranking", {"query": {"text": "q"}}, 422, "passages: Field required"),
    ("bad truncate", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "x"}], "truncate": "START"},
     422, "truncate"),
    ("too long under NONE", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "word " * 300}]}, 400,
     "passages[0] has 302 tokens, more than the model's limit of 256"),
    ("unknown model", "/v1/ranking", {"model": "nv-rerank-qa-mistral-4b:1", "query": {"text": "q"},
                                      "passages": [{"text": "x"}]}, 404, "does not exist"),
    ("too many passages", "/v1/ranking", {"query": {"text": "q"}, "passages": [{"text": "x"}] * 513}, 400,
     "513 passages, more than the limit of 512"),
    ("cohere: empty documents", "/v1/rerank", {"query": "q", "documents": []}, 400, "must not be empty"),
    ("cohere: top_n zero", "/v1/rerank", {"query": "q", "documents": ["x"], "top_n": 0}, 422, "top_n"),
    ("cohere: number document", "/v1/rerank", {"query": "q", "documents": [3]}, 422, "documents"),
]


@pytest.mark.parametrize("name,path,body,status,words", BAD_INPUTS, ids=[b[0] for b in BAD_INPUTS])
def test_bad_input_gets_a_clear_4xx(http, name, path, body, status, words):
    response = http.post(path, json=body)
    assert response.status_code == status, response.text
    assert words in response.json()["error"]["message"], response.json()


def test_long_passage_is_cut_under_end(http):
    response = _ranking(http, passages=["word " * 300, "Paris"], truncate="END")
    assert response.status_code == 200


def test_no_500_after_the_bad_inputs_and_still_serving(http):
    for _, path, body, _, _ in BAD_INPUTS:
        http.post(path, json=body)
    assert _ranking(http).status_code == 200
    assert 'status="500"' not in http.get("/v1/metrics").text


def test_cross_encoder_service(api_cross_encoder_service, backend):
    with httpx.Client(base_url=api_cross_encoder_service.base_url, timeout=60) as client:
        card = client.get("/v1/models").json()["data"][0]
        assert card["id"] == "minilm-cross-encoder" and card["scorer"] == "cross-encoder"
        assert (client.get("/v1/metadata").json()["engine"]["backend"] == "triton") == (backend == "triton")
        rankings = client.post("/v1/ranking", json={"model": card["id"], "query": {"text": QUERY},
                                                    "passages": [{"text": p} for p in PASSAGES]}).json()["rankings"]
        assert sorted(r["index"] for r in rankings) == list(range(len(PASSAGES)))
        scores = client.post("/v1/rerank", json={"query": QUERY, "documents": PASSAGES}).json()["results"]
        assert all(0.0 < r["relevance_score"] < 1.0 for r in scores)  # sigmoid of the logit
        too_long = client.post("/v1/ranking", json={"query": {"text": QUERY},
                                                    "passages": [{"text": "word " * 600}]})
        assert too_long.status_code == 400 and "more than the model's limit of 512" in too_long.text


def test_configured_scorer_and_limits(service_tmp, backend_env):
    from tests.conftest import start_service

    svc = start_service("rerank", service_tmp, env={"NIMRAG_RERANK_SCORER": "bi-encoder",
                                                    "NIMRAG_RERANK_MAX_PASSAGES": "3",
                                                    "NIMRAG_RERANK_MAX_CHARS": "100", **backend_env})
    try:
        with httpx.Client(base_url=svc.base_url, timeout=60) as client:
            assert client.get("/v1/models").json()["data"][0]["scorer"] == "bi-encoder"
            assert (client.get("/v1/metadata").json()["engine"]["backend"] == "triton") == bool(backend_env)
            assert _ranking(client, passages=PASSAGES[:3]).status_code == 200
            too_many = _ranking(client, passages=PASSAGES[:4])
            assert too_many.status_code == 400 and "4 passages, more than the limit of 3" in too_many.text
            too_long = _ranking(client, passages=["x" * 101])
            assert too_long.status_code == 400 and "101 characters, more than the limit of 100" in too_long.text
    finally:
        svc.stop()
