"""Pipeline settings (``NIMRAG_PIPELINE_*``). The microservices' URLs come from here only, never from a request."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationInfo, field_validator
from pydantic_settings import SettingsConfigDict

from nimrag.pipeline.loaders import (
    DEFAULT_MAX_COMPRESSION_RATIO,
    DEFAULT_MAX_INFLATED_BYTES,
    InflateLimits,
)
from nimrag.services.common.settings import ServiceSettings


def default_data_path() -> Path:
    return Path(os.environ.get("XDG_DATA_HOME", Path.home() / ".local" / "share")) / "nimrag"


class PipelineSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="NIMRAG_PIPELINE_", extra="ignore")

    port: int = Field(8081, ge=1, le=65535)
    data_path: Path = Field(default_factory=default_data_path, description="Local state: collections "
                            "(FAISS + SQLite), upload tasks (SQLite), guardrails policies, logs.")
    vector_store: Literal["faiss", "milvus"] = Field("faiss", description="Where collections live: faiss (FAISS "
                                                     "+ SQLite under data_path/collections) or milvus (milvus_uri).")
    milvus_uri: str = Field("", description="Milvus: a path ending in .db runs Milvus Lite in this process (one "
                            "process per file); http://host:19530 a Milvus server or `milvus-lite server`, which "
                            "replicas share. Empty: data_path/milvus.db.")
    milvus_token: str = Field("", description="Milvus: the token ('user:password' or an API key); empty: none.")
    milvus_timeout_s: float = Field(10.0, gt=0, description="Milvus: the longest one call may take; then 503.")
    milvus_lexical: Literal["auto", "bm25", "sparse"] = Field("auto", description="Milvus lexical search: bm25 "
                                                              "(the server's full-text search, 2.5+), sparse "
                                                              "(vectors the pipeline computes), auto (bm25 where "
                                                              "the server has it). Fixed per collection at "
                                                              "creation.")
    task_store: Literal["sqlite", "redis"] = Field("sqlite", description="Where upload tasks (/v1/status) live: "
                                                   "sqlite (data_path/tasks.sqlite, one host) or redis (redis_url, "
                                                   "which replicas on several hosts share).")
    redis_url: str = Field("", validate_default=True, description="Redis task store: redis://[:password@]host:"
                           "6379/0, rediss:// (TLS) or unix:///path/redis.sock; required with task_store=redis.")
    redis_key_prefix: str = Field("nimrag:tasks:", min_length=1, description="Redis task store: the prefix of its "
                                  "keys (several deployments may share one Redis under different prefixes).")
    redis_timeout_s: float = Field(5.0, gt=0, description="Redis task store: the longest one call waits on the "
                                   "server (connect or answer); then 503.")
    max_tasks_kept: int = Field(1000, ge=1, description="Upload tasks kept readable; creating one prunes older.")
    task_ttl_s: float = Field(7 * 24 * 3600.0, gt=0, description="Redis task store: a task's keys expire this long "
                              "after it finished (or after the last heartbeat of a task nobody finished).")
    task_lease_s: float = Field(30.0, gt=0, description="Redis task store: a running task's lease, renewed every "
                                "third of it; once it runs out (its replica died) the task reads interrupted.")
    embed_url: str = Field("http://127.0.0.1:8001/v1", description="The embedding service's /v1 base URL.")
    rerank_url: str = Field("http://127.0.0.1:8002/v1", description="The reranking service's /v1 base URL.")
    llm_url: str = Field("http://127.0.0.1:8000/v1", description="The LLM service's /v1 base URL.")
    service_api_key: str = Field("", description="Bearer key the pipeline sends to the microservices.")
    default_collection: str = Field("default", description="The collection of requests that name none.")
    # Chunks are cut in the embedding model's tokens; all-MiniLM-L6-v2 reads at most 256.
    chunk_size: int = Field(256, ge=16, le=8192, description="Chunk length, in the embedding model's tokens, of "
                            "uploads that do not say.")
    chunk_overlap: int = Field(64, ge=0, description="Tokens consecutive chunks share, for uploads that do not "
                               "say (at most a quarter of the chunk size).")
    vdb_top_k: int = Field(100, ge=1, le=1000, description="Candidates from each retriever (Blueprint's name).")
    reranker_top_k: int = Field(5, ge=1, le=100, description="Chunks kept after reranking (Blueprint's name).")
    enable_reranker: bool = Field(True, description="Rerank the fused candidates unless the request says not to.")
    rerank_candidates: int = Field(40, ge=1, le=512, description="Fused candidates sent to the reranker.")
    max_collections_per_query: int = Field(5, ge=1, le=64, description="Collections one search or answer may "
                                           "name in collection_names (the Blueprint's limit is 5).")
    # Calibrated for the bundled late-interaction reranker (bench.retrieval_quality): at 0.45, 99% of SciFact's and
    # 100% of Cranfield's own questions keep a passage, and 88% / 98% of other sets' questions asked of them get
    # "nothing relevant". A cross-encoder's logits need their own value.
    relevance_threshold: float = Field(0.45, description="Below this reranker score a chunk is not relevant.")
    embed_batch_size: int = Field(64, ge=1, le=2048, description="Texts per embedding request while ingesting.")
    embed_concurrency: int = Field(4, ge=1, le=64, description="Embedding requests in flight while ingesting.")
    guardrails_enabled: bool = Field(True, description="Run a guardrails policy on every answer unless the "
                                     "request turns it off.")
    guardrails_default_policy: str = Field("default", description="The policy of requests that name none.")
    max_tokens: int = Field(512, ge=1, description="Answer length when the request does not say.")
    temperature: float = Field(0.2, ge=0, le=2, description="Sampling temperature of answers when the request "
                               "does not say.")
    max_body_bytes: int = Field(100 * 1024 * 1024, ge=1024, description="Largest request (uploads) before 413.")
    max_files_per_upload: int = Field(100, ge=1, description="Most files in one upload (then 400 too_many_files).")
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
    request_timeout_s: float = Field(300, gt=0, description="The longest one call to a microservice may take "
                                     "(then 504).")
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
    guardrails_path: Path | None = Field(None, description="The guardrails policy folder; empty: data_path/"
                                         "guardrails. Replicas point it at one shared folder: a ReadWriteMany volume "
                                         "whose filesystem honours flock (all may edit), or a read-only mount (see "
                                         "guardrails_read_only).")
    guardrails_read_only: bool = Field(False, description="Serve the policies of guardrails_path without ever "
                                       "writing there (a read-only mount): edits answer 403, and the default policy "
                                       "must already be there, written by the one writer replica.")

    @field_validator("redis_url")
    @classmethod
    def _redis_url_with_redis(cls, value: str, info: ValidationInfo) -> str:
        value = value.strip()
        if info.data.get("task_store") == "redis" and not value:
            raise ValueError("required with NIMRAG_PIPELINE_TASK_STORE=redis (e.g. redis://host:6379/0)")
        if value and not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("a redis://, rediss:// or unix:// URL")
        return value

    @field_validator("guardrails_path", mode="before")
    @classmethod
    def _empty_is_default(cls, value):
        return None if value == "" else value

    def guardrails_folder(self) -> Path:
        return self.guardrails_path or self.data_path / "guardrails"

    def inflate_limits(self) -> InflateLimits:
        return InflateLimits(self.max_inflated_bytes, self.max_compression_ratio)
