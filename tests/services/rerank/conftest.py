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

    from nimrag.services.embed.model import default_model_path

    torch.manual_seed(1234)
    model = AutoModelForSequenceClassification.from_pretrained(str(default_model_path()), num_labels=1,
                                                               local_files_only=True)
    model.save_pretrained(str(target))
    AutoTokenizer.from_pretrained(str(default_model_path()), local_files_only=True).save_pretrained(str(target))
    return target


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


def triton_env(triton_host, model: str) -> dict[str, str]:
    """The Triton backend: the profile it selects, and the model in ``nimrag triton serve`` it calls."""
    return {"NIMRAG_RERANK_TRITON_URL": triton_host.url, "NIMRAG_RERANK_TRITON_MODEL": model}


@pytest.fixture(scope="session")
def triton_rerank_service(service_tmp, triton_host):
    """Late interaction on the bundled model, whose token embeddings come from Triton's ``embed`` model."""
    svc = start_service("rerank", service_tmp, env=triton_env(triton_host, "embed"))
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def triton_cross_encoder_service(service_tmp, cross_encoder_dir, triton_host):
    """The test cross-encoder's folder (its tokenizer) here, its logits from Triton's ``rerank`` model."""
    svc = start_service("rerank", service_tmp, env=triton_env(triton_host, "rerank"),
                        args=["--model", str(cross_encoder_dir)])
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def api_rerank_service(request, backend):
    return request.getfixturevalue("rerank_service" if backend == "in-process" else "triton_rerank_service")


@pytest.fixture(scope="session")
def api_cross_encoder_service(request, backend):
    return request.getfixturevalue("cross_encoder_service" if backend == "in-process"
                                   else "triton_cross_encoder_service")


@pytest.fixture(scope="session")
def backend_env(request, backend) -> dict[str, str]:
    """What a test that starts its own service adds to its environment for the backend."""
    if backend == "in-process":
        return {}
    return triton_env(request.getfixturevalue("triton_host"), "embed")
