"""Scorer numerics: every cross-encoder backend agrees with PyTorch fp32; the encoder scorers compute exactly
their definitions on the reference model's outputs; scores do not depend on what they are batched with."""

from __future__ import annotations

import numpy as np
import pytest

from nimrag.services.common.hardware import probe
from nimrag.services.common.profiles import incompatibilities
from nimrag.services.rerank.model import load_model_info
from nimrag.services.rerank.profiles import RERANK_PROFILES
from nimrag.services.rerank.scorers import create_scorer
from nimrag.services.rerank.settings import RerankSettings
from tests.conftest import model_cache
from tests.services.rerank.conftest import PASSAGES, QUERY

HARDWARE = probe()


def _scorer(profile_id: str, model_dir=None, scorer: str = "late-interaction"):
    profile = next(p for p in RERANK_PROFILES if p.id == profile_id)
    reasons = incompatibilities(profile, HARDWARE)
    if reasons:
        pytest.skip(f"{profile_id} cannot run here: {'; '.join(reasons)}")
    model = load_model_info(RerankSettings(model=str(model_dir) if model_dir else None, scorer=scorer))
    return create_scorer(model, profile, profile.resolved_threads(HARDWARE), model_cache())


def _score(scorer, query=QUERY, passages=PASSAGES) -> np.ndarray:
    prepared = scorer.prepare(query, passages, "END")
    return scorer.scores(scorer.run_batch(prepared.items))


@pytest.fixture(scope="module")
def torch_logits(cross_encoder_dir) -> np.ndarray:
    return _score(_scorer("torch-cpu-fp32", cross_encoder_dir))


@pytest.mark.parametrize("profile_id,tolerance", [
    ("onnx-cpu-fp32", 1e-4),
    ("onnx-cpu-int8", 0.05),  # dynamic quantization: close, not exact (see services/rerank/profiles.py)
    ("torch-cpu-bf16", 0.05),
    pytest.param("torch-cuda-fp16", 0.02, marks=pytest.mark.gpu),
    pytest.param("torch-cuda-bf16", 0.05, marks=pytest.mark.gpu),
])
def test_cross_encoder_backends_agree_with_torch_fp32(cross_encoder_dir, torch_logits, profile_id, tolerance):
    logits = _score(_scorer(profile_id, cross_encoder_dir))
    scale = max(1.0, float(np.abs(torch_logits).max()))
    np.testing.assert_allclose(logits, torch_logits, atol=tolerance * scale)


@pytest.mark.parametrize("profile_id", ["torch-cpu-fp32", "onnx-cpu-fp32"])
def test_cross_encoder_scores_do_not_depend_on_the_batch(cross_encoder_dir, profile_id):
    scorer = _scorer(profile_id, cross_encoder_dir)
    prepared = scorer.prepare(QUERY, PASSAGES, "END")
    together = scorer.scores(scorer.run_batch(prepared.items))
    alone = np.array([scorer.scores(scorer.run_batch([item]))[0] for item in prepared.items])
    np.testing.assert_allclose(alone, together, atol=1e-4)


@pytest.fixture(scope="module")
def reference():
    from sentence_transformers import SentenceTransformer

    from nimrag.services.embed.model import default_model_path

    return SentenceTransformer(str(default_model_path()), device="cpu")


def test_bi_encoder_scores_are_reference_cosines(reference):
    q, *p = reference.encode([QUERY, *PASSAGES], normalize_embeddings=True)
    scores = _score(_scorer("torch-cpu-fp32", scorer="bi-encoder"))
    np.testing.assert_allclose(scores, np.array(p) @ q, atol=1e-4)
    assert int(np.argmax(scores)) in (1, 3)  # a passage that answers the question ranks first


def _maxsim_reference(reference, query: str, passages: list[str]) -> np.ndarray:
    """MaxSim written out from sentence-transformers' token embeddings, without [CLS]/[SEP]."""
    def unit_tokens(text):
        tokens = reference.encode(text, output_value="token_embeddings", convert_to_numpy=True)[1:-1]
        tokens = np.asarray(tokens, dtype=np.float32)
        return tokens / np.linalg.norm(tokens, axis=1, keepdims=True)

    q = unit_tokens(query)
    return np.array([max_per_query_token.mean() for max_per_query_token in
                     ((q @ unit_tokens(p).T).max(axis=1) for p in passages)])


@pytest.mark.parametrize("profile_id", ["torch-cpu-fp32", "onnx-cpu-fp32"])
def test_late_interaction_is_maxsim_over_reference_token_embeddings(reference, profile_id):
    scores = _score(_scorer(profile_id))
    np.testing.assert_allclose(scores, _maxsim_reference(reference, QUERY, PASSAGES), atol=1e-4)
    assert int(np.argmax(scores)) in (1, 3)


def test_late_interaction_scores_do_not_depend_on_the_batch():
    scorer = _scorer("onnx-cpu-fp32")
    prepared = scorer.prepare(QUERY, PASSAGES, "END")
    together = scorer.scores(scorer.run_batch(prepared.items))
    one_by_one = scorer.scores([scorer.run_batch([item])[0] for item in prepared.items])
    np.testing.assert_allclose(one_by_one, together, atol=1e-5)


def test_pair_truncation(cross_encoder_dir):
    from nimrag.services.rerank.scorers import RankingTooLongError

    scorer = _scorer("torch-cpu-fp32", cross_encoder_dir)
    long_passage = "word " * 600
    with pytest.raises(RankingTooLongError, match=r"passages\[1\] .* more than the model's limit of 512"):
        scorer.prepare(QUERY, ["short", long_passage], "NONE")
    prepared = scorer.prepare(QUERY, ["short", long_passage], "END")
    assert prepared.costs[1] == 512 and prepared.costs[0] < 20
    with pytest.raises(RankingTooLongError, match="query has"):
        scorer.prepare("q " * 600, ["short"], "END")


def test_encoder_scorers_apply_the_models_query_and_passage_prompts(reference, tmp_path):
    import json
    import shutil

    from nimrag.services.embed.model import default_model_path

    folder = tmp_path / "minilm-with-prompts"
    shutil.copytree(default_model_path(), folder)
    (folder / "config_sentence_transformers.json").write_text(
        json.dumps({"prompts": {"query": "query: ", "passage": "passage: "}}))
    scores = _score(_scorer("torch-cpu-fp32", folder))
    expected = _maxsim_reference(reference, "query: " + QUERY, ["passage: " + p for p in PASSAGES])
    np.testing.assert_allclose(scores, expected, atol=1e-4)
