"""The FAISS backend's catalog: one folder per collection under a root, created and deleted atomically.

    <root>/<name>/chunks.sqlite     the source of truth (WAL): documents, chunks with vectors, FTS5, meta
    <root>/<name>/index.faiss       the vector index as of some generation (faiss/persistence.py)

A create builds its folder under a staging name and renames it into place; a delete renames the folder to a
tombstone first (gone at once), then removes it. Leftovers of either, after a crash, are swept at start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import threading
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

from nimrag.pipeline.vectorstore.base import (
    COLLECTION_NAME,
    CollectionExists,
    CollectionInfo,
    CollectionNotFound,
    CollectionOptions,
    IndexType,
    validate_dimension,
    validate_name,
    validate_options,
)
from nimrag.pipeline.vectorstore.faiss.collection import Collection
from nimrag.pipeline.vectorstore.faiss.persistence import STALE_STAGING_S
from nimrag.pipeline.vectorstore.faiss.schema import DB_FILE, initialize_database, read_info
from nimrag.services.common.files import fsync_dir

if TYPE_CHECKING:
    from typing_extensions import Self

CREATING_PREFIX = ".creating-"
DELETED_PREFIX = ".deleted-"


class Catalog:
    """The collections under ``root``, one folder each. One Collection object per name; thread-safe."""

    def __init__(self, root: Path | str, *, use_gpu: bool = True, persist_interval_s: float = 30.0) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self._use_gpu = use_gpu
        self._persist_interval_s = persist_interval_s
        self._lock = threading.Lock()
        self._open: dict[str, Collection] = {}
        self._sweep_leftovers()

    def _sweep_leftovers(self) -> None:
        """Finish deletes and drop creates that a crash interrupted."""
        for path in self.root.iterdir():
            if path.name.startswith(DELETED_PREFIX):
                shutil.rmtree(path, ignore_errors=True)
            elif path.name.startswith(CREATING_PREFIX):
                with contextlib.suppress(OSError):
                    if time.time() - path.stat().st_mtime > STALE_STAGING_S:
                        shutil.rmtree(path, ignore_errors=True)

    def _path(self, name: str) -> Path:
        return self.root / validate_name(name)

    def exists(self, name: str) -> bool:
        return (self._path(name) / DB_FILE).is_file()

    def create(self, name: str, dimension: int, index_kind: IndexType = "flat",
               metadata: dict | None = None) -> Collection:
        """Create a collection atomically: built in a staging folder, then renamed into place."""
        path = self._path(name)
        validate_options(CollectionOptions(index=index_kind))
        validate_dimension(dimension)
        with self._lock:
            if path.exists():
                raise CollectionExists(f"collection {name!r} already exists")
            staging = self.root / f"{CREATING_PREFIX}{uuid.uuid4().hex}"
            staging.mkdir()
            try:
                initialize_database(staging / DB_FILE, dimension, index_kind, metadata or {})
                os.rename(staging, path)  # fails if another process created the name meanwhile
            except OSError as error:
                shutil.rmtree(staging, ignore_errors=True)
                if path.exists():
                    raise CollectionExists(f"collection {name!r} already exists") from error
                raise
            except BaseException:
                shutil.rmtree(staging, ignore_errors=True)
                raise
            fsync_dir(self.root)
            return self._open_locked(name)

    def open(self, name: str) -> Collection:
        self._path(name)
        with self._lock:
            return self._open_locked(name)

    def _open_locked(self, name: str) -> Collection:
        cached = self._open.get(name)
        if cached is not None and cached.is_usable():
            return cached
        if cached is not None:  # closed by its user, or deleted by another catalog: let it go
            cached._retire(CollectionNotFound(f"collection {name!r} was deleted"), persist=False)
            del self._open[name]
        if not self.exists(name):
            raise CollectionNotFound(f"collection {name!r} not found")
        collection = Collection(name, self.root / name, use_gpu=self._use_gpu,
                                persist_interval_s=self._persist_interval_s)
        self._open[name] = collection
        return collection

    def list(self) -> list[CollectionInfo]:
        infos = []
        for path in sorted(self.root.iterdir()):
            if not COLLECTION_NAME.fullmatch(path.name) or not (path / DB_FILE).is_file():
                continue
            with contextlib.suppress(sqlite3.Error, CollectionNotFound):  # deleted while we looked
                infos.append(self._info(path.name))
        return infos

    def _info(self, name: str) -> CollectionInfo:
        with self._lock:
            cached = self._open.get(name)
        if cached is not None and cached.is_usable():
            return cached.info()
        return read_info(name, self.root / name / DB_FILE)

    def delete(self, name: str) -> None:
        """Delete atomically: the folder is renamed to a tombstone (gone from the catalog at once), then removed.
        A Collection object still held raises CollectionNotFound from then on."""
        path = self._path(name)
        with self._lock:
            if not self.exists(name):
                raise CollectionNotFound(f"collection {name!r} not found")
            cached = self._open.pop(name, None)
            if cached is not None:
                cached._retire(CollectionNotFound(f"collection {name!r} was deleted"), persist=False)
            tombstone = self.root / f"{DELETED_PREFIX}{name}-{uuid.uuid4().hex}"
            try:
                os.rename(path, tombstone)
            except FileNotFoundError as error:
                raise CollectionNotFound(f"collection {name!r} not found") from error
            fsync_dir(self.root)
        shutil.rmtree(tombstone, ignore_errors=True)

    def close(self) -> None:
        with self._lock:
            collections, self._open = list(self._open.values()), {}
        for collection in collections:
            collection.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
