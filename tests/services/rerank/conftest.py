from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import start_service

QUERY = "What is the capital of France?"
PASSAGES = [
    "Berlin is the capital and largest city of Germany.",
    "Paris is the capital and most populous city of France.",
    "Bananas are an excellent source of potassium.",
    "France is a country in Western Europe; its capital is Paris.",
    "The Eiffel Tower was completed in 1889.",
]


def build_cross_encoder(target: Path) -> Path:
    """A cross-encoder assembled from the bundled MiniLM encoder with a seeded, untrained one-logit head: real
    architecture and numerics (for engine agreement, batching and API tests), no ranking quality."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from services.embed.model import default_model_path

    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(str(default_model_path()), num_labels=1,
                                                               local_files_only=True)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True).save_pretrained(str(target))
    return target


@pytest.fixture(scope="session")
def cross_encoder_dir(tmp_path_factory) -> Path:
    return build_cross_encoder(tmp_path_factory.mktemp("models") / "minilm-cross-encoder")


@pytest.fixture(scope="session")
def rerank_service(service_tmp):
    """The reranking service with its defaults: late interaction on the bundled model."""
    svc = start_service("rerank", service_tmp)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def cross_encoder_service(service_tmp, cross_encoder_dir):
    svc = start_service("rerank", service_tmp, args=["--model", str(cross_encoder_dir)])
    yield svc
    svc.stop()
