"""The pipeline's vector store: one contract (base.py), backends under it, and the factory that picks one from
``NIMRAG_PIPELINE_VECTOR_STORE``, as the NVIDIA RAG Blueprint's ``_get_vdb_op`` does.

A backend registers in ``BACKENDS``: its setting value and a function building its VectorStore from the
pipeline settings. Each imports its engine only when chosen, so an unused backend's packages need not exist.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from nimrag.pipeline.vectorstore.base import VectorCollection, VectorStore

if TYPE_CHECKING:
    from nimrag.pipeline.settings import PipelineSettings


def _faiss(settings: PipelineSettings) -> VectorStore:
    from nimrag.pipeline.vectorstore.faiss import FaissVectorStore

    return FaissVectorStore(settings.data_path / "collections")


def _milvus(settings: PipelineSettings) -> VectorStore:
    from nimrag.pipeline.vectorstore.milvus import MilvusVectorStore  # the milvus extra

    return MilvusVectorStore(settings.milvus_uri or settings.data_path / "milvus.db", token=settings.milvus_token,
                             timeout_s=settings.milvus_timeout_s, lexical=settings.milvus_lexical)


# The registration point: one line per backend.
BACKENDS: dict[str, Callable[[PipelineSettings], VectorStore]] = {
    "faiss": _faiss,
    "milvus": _milvus,
}


def open_vector_store(settings: PipelineSettings) -> VectorStore:
    """The store ``settings.vector_store`` names."""
    try:
        build = BACKENDS[settings.vector_store]
    except KeyError:
        raise ValueError(f"unknown vector store {settings.vector_store!r}: one of {', '.join(BACKENDS)}") from None
    return build(settings)


__all__ = ["BACKENDS", "VectorCollection", "VectorStore", "open_vector_store"]
