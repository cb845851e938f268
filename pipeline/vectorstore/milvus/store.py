"""The Milvus backend's collections (``NIMRAG_PIPELINE_VECTOR_STORE=milvus``): create, open, list and delete, as
pairs of Milvus collections (schema.py) whose documents collection is created last and dropped first, so that a
collection exists exactly while that one does.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
import uuid
from pathlib import Path

from nimrag.pipeline.vectorstore.base import (
    CollectionClosed,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionOptions,
    IncompatibleCollection,
    VectorStore,
    validate_dimension,
    validate_name,
    validate_options,
)
from nimrag.pipeline.vectorstore.milvus.collection import MilvusCollection
from nimrag.pipeline.vectorstore.milvus.connection import Connection, check_uri
from nimrag.pipeline.vectorstore.milvus.names import (
    CHUNKS,
    DOCUMENTS,
    logical_name,
    physical_name,
)
from nimrag.pipeline.vectorstore.milvus.schema import (
    META_PROPERTY,
    SCHEMA_VERSION,
    Meta,
    chunk_indexes,
    chunk_schema,
    document_indexes,
    document_schema,
    schema_version,
)
from nimrag.pipeline.vectorstore.records import dumps, utc_now

logger = logging.getLogger(__name__)
CONSISTENCY = "Strong"  # a write is seen by the next search, from any replica


class MilvusVectorStore(VectorStore):
    """Collections on one Milvus (``uri``: a Milvus Lite ``.db`` file or a server URL). Connects at first use,
    in a worker thread; one Collection object per name and incarnation."""

    backend = "milvus"

    def __init__(self, uri: str | Path, *, token: str = "", timeout_s: float = 10.0, lexical: str = "auto") -> None:
        self.uri = check_uri(str(uri))
        self._token = token
        self._timeout_s = timeout_s
        self._lexical = lexical
        self._connecting = threading.Lock()
        self._lock = threading.Lock()  # creates and deletes, and the cache of collections
        self._connection: Connection | None = None
        self._collections: dict[str, MilvusCollection] = {}
        self._closed = False

    def _connected(self) -> Connection:
        with self._connecting:
            if self._closed:
                raise CollectionClosed("the Milvus store is closed")
            if self._connection is None:
                self._connection = Connection(self.uri, self._token, self._timeout_s)
            return self._connection

    def _call(self, what: str, method: str, *args, **kwargs):
        return self._connected().call(what, method, *args, **kwargs)

    def _exists(self, name: str) -> bool:
        return self._call(f"lookup of collection {name!r}", "has_collection", physical_name(validate_name(name),
                                                                                              DOCUMENTS))

    # -- the contract, async ----------------------------------------------------------------------------------

    async def create(self, name: str, dimension: int, *, options: CollectionOptions | None = None,
                     metadata: dict | None = None) -> MilvusCollection:
        validate_name(name)
        validate_dimension(dimension)
        options = validate_options(options)
        stored_metadata = json.loads(dumps(metadata or {}))
        return await asyncio.to_thread(self._create, name, dimension, options, stored_metadata)

    async def open(self, name: str) -> MilvusCollection:
        validate_name(name)
        return await asyncio.to_thread(self._open, name)

    async def exists(self, name: str) -> bool:
        validate_name(name)
        return await asyncio.to_thread(self._exists, name)

    async def list(self) -> list[CollectionInfo]:
        infos = []
        for name in await asyncio.to_thread(self._names):
            try:
                infos.append(await (await self.open(name)).info())
            except CollectionNotFound:  # deleted while we looked
                continue
            except IncompatibleCollection as error:
                logger.warning("Milvus collection %r left out of the list: %s", name, error)
        return infos

    async def delete(self, name: str) -> None:
        validate_name(name)
        await asyncio.to_thread(self._delete, name)

    async def close(self) -> None:
        await asyncio.to_thread(self._close)

    # -- blocking work ------------------------------------------------------------------------------------------

    def _create(self, name: str, dimension: int, options: CollectionOptions, metadata: dict) -> MilvusCollection:
        connection = self._connected()
        meta = Meta(dimension, options, utc_now(), metadata, connection.lexical_mode(self._lexical), uuid.uuid4().hex)
        chunks, documents = physical_name(name, CHUNKS), physical_name(name, DOCUMENTS)
        what = f"creation of collection {name!r}"
        with self._lock:  # one create or delete at a time in this process
            if connection.call(what, "has_collection", documents):
                raise CollectionExists(f"collection {name!r} already exists")
            if connection.call(what, "has_collection", chunks):  # left by a create or delete that died
                connection.call(what, "drop_collection", chunks)
            self._create_one(what, chunks, chunk_schema(dimension, meta.lexical), chunk_indexes(options, meta.lexical))
            self._create_one(what, documents, document_schema(), document_indexes(),
                             properties={META_PROPERTY: meta.to_property()})
            collection = MilvusCollection(self._connected, name, meta)
            self._collections[name] = collection
            return collection

    def _create_one(self, what: str, physical: str, schema, indexes, **options) -> None:
        """A Milvus collection with its indexes, loaded. The indexes are asked for without waiting on them
        (``sync=False``): loading waits for them, and pymilvus's wait polls every 0.5 s with a call Milvus
        Lite lacks (AllocTimestamp)."""
        call = self._connected().call
        call(what, "create_collection", physical, schema=schema, consistency_level=CONSISTENCY, **options)
        call(what, "create_index", physical, indexes, sync=False)
        call(what, "load_collection", physical)

    def _open(self, name: str) -> MilvusCollection:
        """The collection as it is now: its documents collection's properties say which incarnation that is
        (a name another replica deleted and created again is a new collection)."""
        connection = self._connected()
        documents = physical_name(name, DOCUMENTS)
        described = connection.call(f"opening of collection {name!r}", "describe_collection", documents)
        meta = self._meta(name, described.get("properties", {}).get(META_PROPERTY))
        with self._lock:
            cached = self._collections.get(name)
            if cached is not None and cached.meta.incarnation == meta.incarnation:
                return cached
        for physical in (physical_name(name, CHUNKS), documents):
            connection.call(f"loading of collection {name!r}", "load_collection", physical)
        collection = MilvusCollection(self._connected, name, meta)
        collection.sweep()
        with self._lock:
            if cached is not None:
                cached.retire(CollectionNotFound(f"collection {name!r} was deleted"))
            self._collections[name] = collection
        return collection

    @staticmethod
    def _meta(name: str, text: str | None) -> Meta:
        version = schema_version(text)
        if version != SCHEMA_VERSION:
            raise IncompatibleCollection(f"collection {name!r} has Milvus store schema {version}; this pipeline "
                                         f"reads schema {SCHEMA_VERSION}")
        return Meta.from_property(text)

    def _names(self) -> list[str]:
        physical = self._call("listing of collections", "list_collections")
        return sorted(name for name in (logical_name(p, DOCUMENTS) for p in physical) if name is not None)

    def _delete(self, name: str) -> None:
        connection = self._connected()
        what = f"deletion of collection {name!r}"
        with self._lock:
            if not connection.call(what, "has_collection", physical_name(name, DOCUMENTS)):
                raise CollectionNotFound(f"collection {name!r} not found")
            cached = self._collections.pop(name, None)
            if cached is not None:
                cached.retire(CollectionNotFound(f"collection {name!r} was deleted"))
            connection.call(what, "drop_collection", physical_name(name, DOCUMENTS))  # gone from here on
            connection.call(what, "drop_collection", physical_name(name, CHUNKS))

    def _close(self) -> None:
        with self._lock, self._connecting:
            if self._closed:
                return
            self._closed = True
            collections, self._collections = list(self._collections.values()), {}
            connection, self._connection = self._connection, None
        for collection in collections:
            collection.retire(CollectionClosed(f"collection {collection.name!r} is closed"))
        if connection is not None:
            connection.close()
