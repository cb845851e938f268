"""Pipeline settings (``NIMRAG_PIPELINE_*``). The microservices' URLs come from here only, never from a request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import SettingsConfigDict

from pipeline.loaders import (
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_INFLATED_BYTES,
    InflateLimits,
)
from services.common.settings import ServiceSettings


def default_data_path() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "nimrag"


class PipelineSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NIMRAG_PIPELINE_", extra="ignore")

    port: int = Field(8081, ge=1, le=65535)
    data_path: Path = Field(default_factory=default_data_path, description="Collections (FAISS + SQLite), "
                            "upload tasks, guardrails policies.")
    vector_store: Literal["faiss"] = Field("faiss", description="Where collections live: faiss (FAISS + SQLite "
                                           "under data_path/collections).")
    embed_url: str = "http://127.0.0.1:8001/v1"
    rerank_url: str = "http://127.0.0.1:8002/v1"
    llm_url: str = "http://127.0.0.1:8000/v1"
    service_api_key: str = Field("", description="Bearer key the pipeline sends to the microservices.")
    default_collection: str = "default"
    # Chunks are cut in the embedding model's tokens; all-MiniLM-L6-v2 reads at most 256.
    chunk_size: int = Field(256, ge=16, le=8192)
    chunk_overlap: int = Field(64, ge=0)
    vdb_top_k: int = Field(100, ge=1, le=1000, description="Candidates from each retriever (Blueprint's name).")
    reranker_top_k: int = Field(5, ge=1, le=100, description="Chunks kept after reranking (Blueprint's name).")
    enable_reranker: bool = True
    rerank_candidates: int = Field(40, ge=1, le=512, description="Fused candidates sent to the reranker.")
    max_collections_per_query: int = Field(5, ge=1, le=64, description="Collections one search or answer may "
                                           "name in collection_names (the Blueprint's limit is 5).")
    # Calibrated for the bundled late-interaction reranker (bench.retrieval_quality): at 0.45, 99% of SciFact's and
    # 100% of Cranfield's own questions keep a passage, and 88% / 98% of other sets' questions asked of them get
    # "nothing relevant". A cross-encoder's logits need their own value.
    relevance_threshold: float = Field(0.45, description="Below this reranker score a chunk is not relevant.")
    embed_batch_size: int = Field(64, ge=1, le=2048)
    embed_concurrency: int = Field(4, ge=1, le=64, description="Embedding requests in flight while ingesting.")
    guardrails_enabled: bool = Field(True, description="Run a guardrails policy on every answer unless the "
                                     "request turns it off.")
    guardrails_default_policy: str = Field("default", description="The policy of requests that name none.")
    max_tokens: int = Field(512, ge=1, description="Answer length when the request does not say.")
    temperature: float = Field(0.2, ge=0, le=2)
    max_body_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest request (uploads) before 413.")
    max_files_per_upload: int = Field(100, ge=1)
    max_form_field_bytes: int = Field(1024 * 1024, ge=1024, description="Largest form field of an upload other "
                                      "than its files (the options in 'data').")
    # Parsing decompresses (DOCX is a ZIP, PDF streams are deflated): a 1 MB file can inflate to gigabytes.
    max_inflated_bytes: int = Field(DEFAULT_MAX_INFLATED_BYTES, ge=1024 * 1024, description="What parsing one "
                                    "document may decompress in all (ZIP members, PDF streams); beyond: failed.")
    max_compression_ratio: float = Field(DEFAULT_MAX_COMPRESSION_RATIO, ge=2, description="Largest uncompressed "
                                         "to compressed size of a ZIP member over 1 MiB; beyond: failed.")
    max_concurrent_parses: int = Field(2, ge=1, le=64, description="Documents parsed at once (each may hold up to "
                                       "max_inflated_bytes while parsed); the others wait.")
    max_question_chars: int = Field(8192, ge=1)
    request_timeout_s: float = Field(300, gt=0)
    dependency_retries: int = Field(2, ge=0, le=10, description="Tries again when a microservice is unreachable "
                                    "or busy (429/503) and asks for a wait of at most dependency_retry_max_wait_s.")
    dependency_retry_max_wait_s: float = Field(2.0, ge=0, description="Longer waits go back to the client as "
                                               "503 with the service's Retry-After, at once.")
    ingest_backoff_max_s: float = Field(300.0, ge=0, description="Ingestion has no client waiting on each "
                                        "embedding call: when the embed service is busy (429/503) it waits as "
                                        "asked, up to this long in all per batch, before the files fail.")
    # Guardrails policy editing (/v1/guardrails/configs): off until an admin key is set.
    admin_api_key: str = Field("", description="Bearer key that may change guardrails policies; empty: no editing.")
    guardrails_allow_python: bool = Field(False, description="Accept uploaded policies carrying Python code "
                                          "(actions.py, config.py): the pipeline runs it.")
    guardrails_max_policy_bytes: int = Field(1024 * 1024, ge=1024, description="Largest policy (all its files).")

    def inflate_limits(self) -> InflateLimits:
        return InflateLimits(self.max_inflated_bytes, self.max_compression_ratio)
