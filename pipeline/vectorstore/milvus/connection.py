"""Reaching Milvus: a Milvus Lite file run inside this process, or a server (Milvus standalone or cluster, or
``milvus-lite server``) over gRPC; and what that server can do.

A ``.db`` path is Milvus Lite embedded: pymilvus's Milvus Lite starts a gRPC server for the file in a thread of
this process, and only one process may hold the file (a second fails with "open in another process"). Pipeline
replicas therefore share a server, never a file: ``milvus-lite server --data-dir DIR --port P`` and
``NIMRAG_PIPELINE_MILVUS_URI=http://host:P``, or a real Milvus.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from pymilvus import MilvusClient, MilvusException

from nimrag.pipeline.vectorstore.base import StoreUnavailable
from nimrag.pipeline.vectorstore.milvus.errors import is_not_loaded, translated
from nimrag.pipeline.vectorstore.milvus.schema import LexicalMode

# Every failed call is raised as a StoreError; pymilvus would also log each one, with its traceback, at ERROR.
logging.getLogger("pymilvus.decorators").setLevel(logging.CRITICAL)
# Milvus Lite has no MVCC timestamp for query iterators: pymilvus warns on every one and reads without.
logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)

REMOTE_SCHEMES = ("http://", "https://", "tcp://", "unix:")
FIRST_BM25_VERSION = (2, 5)  # Milvus's full-text search (BM25 functions) arrived in 2.5


def is_local_file(uri: str) -> bool:
    return uri.endswith(".db") and not uri.startswith(REMOTE_SCHEMES)


def check_uri(uri: str) -> str:
    """The URI as given, if pymilvus can take it: a ``.db`` path or a server URL (for settings validation)."""
    if not (is_local_file(uri) or uri.startswith(REMOTE_SCHEMES)):
        raise ValueError(f"{uri!r} is neither a Milvus Lite file (a path ending in .db) nor a server URL "
                         "(http://host:19530, https://..., tcp://..., unix:...)")
    return uri


class _EmbeddedServers:
    """Milvus Lite's in-process servers, one per file, shared by the stores of this process that use it and
    stopped when the last one closes (so that the file is free for another process)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._users: dict[str, int] = {}

    def acquire(self, path: Path) -> str:
        from milvus_lite.server_manager import server_manager_instance

        key = str(path.resolve())
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            url = server_manager_instance.start_and_get_uri(key)
            if url is None:
                raise StoreUnavailable(f"Milvus Lite could not open {key}: is it open in another process? A file "
                                       "serves one process; replicas share a server (milvus-lite server)")
            self._users[key] = self._users.get(key, 0) + 1
            return url

    def release(self, path: Path) -> None:
        from milvus_lite.server_manager import server_manager_instance

        key = str(path.resolve())
        with self._lock:
            self._users[key] -= 1
            if self._users[key] == 0:
                del self._users[key]
                server_manager_instance.release_server(key)


EMBEDDED = _EmbeddedServers()


@dataclass(frozen=True)
class Server:
    version: str
    lite: bool  # Milvus Lite: its searches scan unflushed rows slowly, so writes flush (collection.py)
    bm25: bool  # has BM25 functions (full-text search)


def describe_server(version: str) -> Server:
    lite = "lite" in version.lower()
    numbers = re.search(r"(\d+)\.(\d+)", version)
    modern = numbers is not None and (int(numbers[1]), int(numbers[2])) >= FIRST_BM25_VERSION
    return Server(version, lite, lite or modern)  # pymilvus 3 speaks only to Milvus Lite 3 among Lites


T = TypeVar("T")


class Connection:
    """One MilvusClient (thread-safe: one gRPC channel) for a store, and the server it talks to. Every call
    has a deadline (pymilvus waits forever without one) and raises only StoreErrors."""

    def __init__(self, uri: str, token: str, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self._embedded = Path(uri) if is_local_file(uri) else None
        url = EMBEDDED.acquire(self._embedded) if self._embedded else uri
        try:
            with translated(f"connection to {uri}"):
                self.client = MilvusClient(uri=url, token=token, timeout=timeout_s)
                self.server = describe_server(self.client.get_server_version(timeout=timeout_s))
        except BaseException:
            if self._embedded:
                EMBEDDED.release(self._embedded)
            raise

    def call(self, what: str, method: str, *args: Any, **kwargs: Any) -> Any:
        """``client.method(*args, **kwargs)`` with the deadline. A collection Milvus has released (a server
        restarted) is loaded and the call made again, once."""
        function = getattr(self.client, method)
        with translated(what):
            try:
                return function(*args, timeout=self.timeout_s, **kwargs)
            except MilvusException as error:
                if not (is_not_loaded(error) and args):
                    raise
                self.client.load_collection(args[0], timeout=self.timeout_s)
                return function(*args, timeout=self.timeout_s, **kwargs)

    def read(self, what: str, step: Callable[[], T]) -> T:
        """One step of an iterator pymilvus returned (its deadline was given when it was made)."""
        with translated(what):
            return step()

    def lexical_mode(self, wanted: str) -> LexicalMode:
        """The lexical path of a new collection: "bm25" (the server's full-text search) or "sparse" (vectors
        computed here); ``wanted`` is the setting, "auto" choosing BM25 where the server has it."""
        if wanted == "bm25" and not self.server.bm25:
            raise StoreUnavailable(f"Milvus {self.server.version} has no BM25 full-text search (2.5+); set "
                                   "NIMRAG_PIPELINE_MILVUS_LEXICAL=sparse or auto")
        if wanted == "sparse":
            return "sparse"
        return "bm25" if self.server.bm25 else "sparse"

    def close(self) -> None:
        try:
            self.client.close()
        finally:
            if self._embedded:
                EMBEDDED.release(self._embedded)
