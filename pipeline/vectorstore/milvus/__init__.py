"""The Milvus vector-store backend (``NIMRAG_PIPELINE_VECTOR_STORE=milvus``), through pymilvus: Milvus Lite in
this process (``NIMRAG_PIPELINE_MILVUS_URI`` a ``.db`` path), or a server that pipeline replicas share
(``http://host:19530``: Milvus standalone or cluster, or ``milvus-lite server``). Needs the ``milvus`` extra.

names.py Milvus-safe collection names and filter literals; analyzer.py the terms BM25 ranks; schema.py the two
Milvus collections of a pipeline collection; errors.py pymilvus errors as the contract's; connection.py the
client, Milvus Lite embedded, and what the server can do; collection.py one collection and its all-or-nothing
writes; store.py the collections.
"""

from nimrag.pipeline.vectorstore.milvus.collection import MilvusCollection
from nimrag.pipeline.vectorstore.milvus.store import MilvusVectorStore

__all__ = ["MilvusCollection", "MilvusVectorStore"]
