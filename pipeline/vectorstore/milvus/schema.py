"""The two Milvus collections behind one pipeline collection, and rows to records and back.

``<prefix>_c_<name>`` holds the chunks: an auto-assigned INT64 id (the contract's chunk id, never reused), the
chunk's fields, its dense vector, its analyzed terms (analyzer.py) and their sparse vector: filled by Milvus's
BM25 function from the terms where the server has one ("bm25"), else computed by the pipeline ("sparse"). Each
chunk carries the ``version`` of the write that added it.

``<prefix>_d_<name>`` holds one record per document, keyed by source: what list_documents shows, and the
``version`` whose chunks are the document's (see collection.py for how that makes writes all-or-nothing). Its
properties hold the collection's own settings (dimension, index, created, metadata), and creating it last makes
a collection exist. Milvus wants a vector field in every collection: the documents' is a constant placeholder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Literal

from pymilvus import DataType, Function, FunctionType, MilvusClient
from pymilvus.milvus_client.index import IndexParams

from nimrag.pipeline.documents import Chunk
from nimrag.pipeline.vectorstore.base import (
    CollectionOptions,
    DocumentInfo,
    InvalidArgument,
    StoredChunk,
)
from nimrag.pipeline.vectorstore.milvus import analyzer

SCHEMA_VERSION = 1
META_PROPERTY = "nimrag.meta"
LexicalMode = Literal["bm25", "sparse"]

MAX_VARCHAR_BYTES = 65_535  # Milvus's longest VARCHAR; lengths are UTF-8 bytes
SOURCE_BYTES = 4096  # document names are at most 1,024 characters (nimrag.pipeline.ingest)
HASH_BYTES = 256
SHORT_BYTES = 1024
PLACEHOLDER = [0.0, 0.0]  # the documents' vector: Milvus's smallest dimension is 2

HNSW_NEIGHBOURS = 32  # the FAISS store's M
HNSW_BUILD_CANDIDATES = 200
HNSW_SEARCH_CANDIDATES = 256  # the FAISS store's efSearch; Milvus wants ef >= k
IVF_LISTS = 128  # fixed when the index is built; Milvus (Lite: per segment) clamps it to the rows there are
IVF_PROBES = 32

CHUNK_FIELDS = ["id", "source", "version", "idx", "text", "page", "start_char", "end_char", "title", "content_hash",
                "metadata"]
DOCUMENT_FIELDS = ["source", "title", "media_type", "content_hash", "chunks", "bytes", "ingested_at", "metadata",
                   "version", "pending", "deleting"]


@dataclass(frozen=True)
class Meta:
    """A collection's own settings, kept in its documents collection's properties."""
    dimension: int
    options: CollectionOptions
    created: str
    metadata: dict
    lexical: LexicalMode
    incarnation: str  # new at each create: a name deleted and created again is another collection

    def to_property(self) -> str:
        return json.dumps({"schema": SCHEMA_VERSION, "dimension": self.dimension, "index": self.options.index,
                           "created": self.created, "metadata": self.metadata, "lexical": self.lexical,
                           "incarnation": self.incarnation}, ensure_ascii=False, sort_keys=True)

    @classmethod
    def from_property(cls, text: str) -> Meta:
        data = json.loads(text)
        return cls(int(data["dimension"]), CollectionOptions(index=data["index"]), data["created"], data["metadata"],
                   data["lexical"], data["incarnation"])


def schema_version(text: str | None) -> int | None:
    try:
        return int(json.loads(text)["schema"]) if text else None
    except (ValueError, TypeError, KeyError):
        return None


def chunk_schema(dimension: int, lexical: LexicalMode):
    schema = MilvusClient.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", DataType.INT64, is_primary=True)
    schema.add_field("source", DataType.VARCHAR, max_length=SOURCE_BYTES)
    schema.add_field("version", DataType.INT64)
    schema.add_field("idx", DataType.INT64)
    schema.add_field("text", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    schema.add_field("page", DataType.INT64, nullable=True)
    schema.add_field("start_char", DataType.INT64)
    schema.add_field("end_char", DataType.INT64)
    schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=HASH_BYTES)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("terms", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES, enable_analyzer=lexical == "bm25",
                     analyzer_params=analyzer.MILVUS_ANALYZER if lexical == "bm25" else None)
    schema.add_field("dense", DataType.FLOAT_VECTOR, dim=dimension)
    schema.add_field("sparse", DataType.SPARSE_FLOAT_VECTOR)
    if lexical == "bm25":
        schema.add_function(Function(name="terms_bm25", function_type=FunctionType.BM25,
                                     input_field_names=["terms"], output_field_names=["sparse"]))
    return schema


def chunk_indexes(options: CollectionOptions, lexical: LexicalMode) -> IndexParams:
    indexes = MilvusClient.prepare_index_params()
    if options.index == "hnsw":
        indexes.add_index("dense", index_type="HNSW", metric_type="IP",
                          params={"M": HNSW_NEIGHBOURS, "efConstruction": HNSW_BUILD_CANDIDATES})
    elif options.index == "ivf":
        indexes.add_index("dense", index_type="IVF_FLAT", metric_type="IP", params={"nlist": IVF_LISTS})
    else:
        indexes.add_index("dense", index_type="FLAT", metric_type="IP")
    if lexical == "bm25":
        indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="BM25",
                          params={"bm25_k1": analyzer.BM25_K1, "bm25_b": analyzer.BM25_B})
    else:
        indexes.add_index("sparse", index_type="SPARSE_INVERTED_INDEX", metric_type="IP")
    return indexes


def dense_search_params(options: CollectionOptions, k: int, filtered: bool) -> dict:
    """A filtered IVF search probes every list: the few chunks a filter keeps are spread over all of them, and
    probing IVF_PROBES lists found only 3 in 4 of the true top 10 of two documents among twelve. The filter is
    checked before any distance is computed, so that costs a pass over the ids, not a brute-force search."""
    if options.index == "hnsw":
        return {"metric_type": "IP", "params": {"ef": max(HNSW_SEARCH_CANDIDATES, k)}}
    if options.index == "ivf":
        return {"metric_type": "IP", "params": {"nprobe": IVF_LISTS if filtered else IVF_PROBES}}
    return {"metric_type": "IP"}


def document_schema():
    schema = MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False)
    schema.add_field("source", DataType.VARCHAR, is_primary=True, max_length=SOURCE_BYTES)
    schema.add_field("title", DataType.VARCHAR, max_length=MAX_VARCHAR_BYTES)
    schema.add_field("media_type", DataType.VARCHAR, max_length=SHORT_BYTES)
    schema.add_field("content_hash", DataType.VARCHAR, max_length=HASH_BYTES)
    schema.add_field("chunks", DataType.INT64)
    schema.add_field("bytes", DataType.INT64)
    schema.add_field("ingested_at", DataType.VARCHAR, max_length=64)
    schema.add_field("metadata", DataType.JSON)
    schema.add_field("version", DataType.INT64)  # whose chunks are the document's; 0: none yet
    schema.add_field("pending", DataType.INT64)  # the version of a write in progress (or one that died); 0: none
    schema.add_field("deleting", DataType.BOOL)
    schema.add_field("placeholder", DataType.FLOAT_VECTOR, dim=len(PLACEHOLDER))
    return schema


def document_indexes() -> IndexParams:
    indexes = MilvusClient.prepare_index_params()
    indexes.add_index("placeholder", index_type="FLAT", metric_type="IP")
    return indexes


def check_bytes(what: str, text: str, limit: int) -> None:
    size = len(text.encode())
    if size > limit:
        raise InvalidArgument(f"{what} is {size} bytes in UTF-8; the Milvus store holds at most {limit}")


def is_committed(record: dict | None) -> bool:
    return record is not None and record["version"] > 0 and not record["deleting"]


def stored_chunk(row: dict) -> StoredChunk:
    chunk = Chunk(source=row["source"], index=row["idx"], text=row["text"], page=row["page"],
                  start=row["start_char"], end=row["end_char"], title=row["title"],
                  content_hash=row["content_hash"], metadata=row["metadata"] or {})
    return StoredChunk(id=int(row["id"]), chunk=chunk)


def document_info(record: dict) -> DocumentInfo:
    return DocumentInfo(source=record["source"], title=record["title"], media_type=record["media_type"],
                        content_hash=record["content_hash"], chunks=int(record["chunks"]),
                        bytes=int(record["bytes"]), ingested_at=record["ingested_at"],
                        metadata=record["metadata"] or {})
