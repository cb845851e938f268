"""The FAISS index on disk, beside the collection's database: a cache that may lag SQLite or be missing.

    <collection>/index.faiss       the vector index as of some generation
    <collection>/index.meta.json   the generation index.faiss reflects, and its sha256

index.faiss is written first, then the metadata naming it: a process killed between the two, or in the middle
of one, leaves a mismatch that reading detects (checksum), and the collection rebuilds from SQLite.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from pathlib import Path

import numpy as np

from nimrag.pipeline.vectorstore.base import StoreError
from nimrag.pipeline.vectorstore.faiss.index import VectorIndex
from nimrag.pipeline.vectorstore.records import utc_now
from nimrag.services.common.files import write_atomically

logger = logging.getLogger(__name__)

INDEX_FILE = "index.faiss"
INDEX_META_FILE = "index.meta.json"
STALE_STAGING_S = 3600  # a staging folder (or temporary file) this old belongs to a write that died


def read_index(folder: Path, collection_uid: str, name: str) -> tuple[VectorIndex, int] | None:
    """The persisted index and the generation it reflects; None when missing, torn or another collection's."""
    try:
        meta = json.loads((folder / INDEX_META_FILE).read_text())
        data = (folder / INDEX_FILE).read_bytes()
    except (OSError, ValueError):
        return None
    # the checksum comes first: faiss may crash rather than raise on a torn file
    if meta.get("collection_uid") != collection_uid or meta.get("sha256") != hashlib.sha256(data).hexdigest():
        logger.warning("collection %s: index.faiss does not match its metadata; rebuilding from SQLite", name)
        return None
    try:
        return VectorIndex.deserialize(data), int(meta["generation"])
    except (RuntimeError, StoreError, KeyError, TypeError, ValueError):
        logger.warning("collection %s: index.faiss is unreadable; rebuilding from SQLite", name)
        return None


def write_index(folder: Path, collection_uid: str, generation: int, data: np.ndarray, structure: str) -> None:
    meta = {"collection_uid": collection_uid, "generation": generation, "sha256": hashlib.sha256(data).hexdigest(),
            "structure": structure, "written_at": utc_now()}
    write_atomically(folder / INDEX_FILE, data)
    write_atomically(folder / INDEX_META_FILE, json.dumps(meta).encode())


def remove_stale_temporaries(folder: Path) -> None:
    """Drop the temporary files of writes that died: their process is gone, or they are an hour old."""
    for temporary in folder.glob(".*.tmp"):
        with contextlib.suppress(OSError):
            if not writer_alive(temporary) or time.time() - temporary.stat().st_mtime > STALE_STAGING_S:
                temporary.unlink()


def writer_alive(temporary: Path) -> bool:
    """Whether the process named in a write_atomically temporary (.NAME.PID.UID.tmp) still runs."""
    try:
        os.kill(int(temporary.name.split(".")[-3]), 0)
    except (ValueError, IndexError, ProcessLookupError):
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def file_identity(path: Path) -> tuple[int, int]:
    status = path.stat()
    return status.st_dev, status.st_ino

