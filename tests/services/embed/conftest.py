from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import start_service

# A fixed text set of varied length, language and punctuation: every backend is checked against the fp32
# reference on it.
TEXTS = [
    "hello world",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "The mitochondrion is the powerhouse of the cell.",
    "Vitamin D supplementation reduces the risk of acute respiratory infections in older adults.",
    "A man is playing a guitar on stage while the crowd sings along.",
    "El rápido zorro marrón salta sobre el perro perezoso.",
    "Der schnelle braune Fuchs springt über den faulen Hund.",
    "Quantum error correction protects logical qubits from decoherence by encoding them across many physical "
    "qubits and measuring syndromes without collapsing the state.",
    "def add(a, b):\n    return a + b",
    "SELECT name, count(*) FROM users GROUP BY name HAVING count(*) > 1;",
    "🙂 emojis and symbols: ©®™ — “quotes” …",
    "short",
    "The 2008 financial crisis began with the collapse of the US housing bubble and spread to banks worldwide, "
    "leading to the Great Recession, the worst downturn since the 1930s. " * 3,
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "How do I reset my password?",
]


@pytest.fixture(scope="session")
def reference_model():
    """sentence-transformers in fp32 on the CPU: the numerical reference every backend must agree with."""
    from sentence_transformers import SentenceTransformer

    from nimrag.services.embed.model import default_model_path

    return SentenceTransformer(str(default_model_path()), device="cpu")


@pytest.fixture(scope="session")
def reference_embeddings(reference_model) -> np.ndarray:
    return reference_model.encode(TEXTS, normalize_embeddings=False, convert_to_numpy=True)


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


@pytest.fixture(scope="session")
def triton_embed_service(service_tmp, triton_host):
    """The embedding service on its Triton profile: the gateway here, the ONNX engine in ``nimrag triton serve``."""
    svc = start_service("embed", service_tmp, env={"NIMRAG_EMBED_TRITON_URL": triton_host.url})
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def api_embed_service(request, backend):
    return request.getfixturevalue("embed_service" if backend == "in-process" else "triton_embed_service")
