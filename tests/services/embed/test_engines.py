"""Every backend agrees with the PyTorch fp32 reference (cosine >= 0.99 on a fixed text set)."""

from __future__ import annotations

import numpy as np
import pytest

from nimrag.services.common.encoder_profiles import ENCODER_PROFILES
from nimrag.services.common.hardware import probe
from nimrag.services.common.profiles import incompatibilities
from nimrag.services.embed.engines import create_engine
from nimrag.services.embed.model import load_model_info
from nimrag.services.embed.settings import EmbedSettings
from nimrag.services.embed.tokenization import TextTokenizer
from tests.conftest import model_cache
from tests.services.embed.conftest import TEXTS, cosine_rows

HARDWARE = probe()
MIN_COSINE = 0.99


@pytest.fixture(scope="module")
def model_and_tokenizer():
    model = load_model_info(EmbedSettings())
    return model, TextTokenizer(model.path, model.max_tokens)


def _profile_param(profile):
    marks = [pytest.mark.gpu] if profile.device == "cuda" else []
    return pytest.param(profile, id=profile.id, marks=marks)


@pytest.mark.parametrize("profile", [_profile_param(p) for p in ENCODER_PROFILES])
def test_backend_matches_fp32_reference(profile, model_and_tokenizer, reference_embeddings):
    reasons = incompatibilities(profile, HARDWARE)
    if reasons:
        pytest.skip(f"{profile.id} cannot run here: {'; '.join(reasons)}")
    model, tokenizer = model_and_tokenizer
    engine = create_engine(profile, model, tokenizer, profile.resolved_threads(HARDWARE), model_cache())
    ids = tokenizer.encode(TEXTS, truncate="END")
    # Two batches, in a different order than the reference: results must not depend on batch composition.
    order = list(reversed(range(len(TEXTS))))
    first, second = order[:7], order[7:]
    got = np.empty((len(TEXTS), reference_embeddings.shape[1]), dtype=np.float32)
    got[first] = engine.embed([ids[i] for i in first])
    got[second] = engine.embed([ids[i] for i in second])
    alone = np.concatenate([engine.embed([x]) for x in ids])  # short texts alone are where int8 is weakest
    for name, vectors in (("batched", got), ("alone", alone)):
        cos = cosine_rows(vectors, reference_embeddings)
        assert cos.min() >= MIN_COSINE, f"{profile.id} {name}: min cosine {cos.min():.4f} (text {int(cos.argmin())})"
        np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-3)  # the model normalizes


def test_batch_composition_does_not_change_results(model_and_tokenizer):
    """Padding next to a longer text must not change a text's embedding."""
    model, tokenizer = model_and_tokenizer
    profile = next(p for p in ENCODER_PROFILES if p.id == "torch-cpu-fp32")
    engine = create_engine(profile, model, tokenizer, profile.resolved_threads(HARDWARE), model_cache())
    ids = tokenizer.encode(TEXTS, truncate="END")
    alone = engine.embed([ids[0]])
    padded = engine.embed([ids[0], ids[13]])[:1]
    np.testing.assert_allclose(alone, padded, atol=1e-5)
