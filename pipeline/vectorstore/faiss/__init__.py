"""The FAISS + SQLite vector-store backend (``NIMRAG_PIPELINE_VECTOR_STORE=faiss``, the default).

schema.py the SQLite database, the source of truth; index.py the FAISS index and its GPU copy; persistence.py
the index on disk; locking.py the in-process reader/writer lock; collection.py one collection (synchronous);
catalog.py the collections' folders; store.py the async contract over them (nimrag.pipeline.vectorstore.base).
"""

from nimrag.pipeline.vectorstore.faiss.catalog import Catalog
from nimrag.pipeline.vectorstore.faiss.collection import Collection, CollectionStats
from nimrag.pipeline.vectorstore.faiss.store import FaissCollection, FaissVectorStore

__all__ = ["Catalog", "Collection", "CollectionStats", "FaissCollection", "FaissVectorStore"]
