"""SQLite the way the pipeline's stores use it (collections, upload tasks): explicit transactions on autocommit
connections, full fsync, a busy timeout, WAL for databases that readers share with a writer."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

BUSY_TIMEOUT_S = 30.0


def connect(path: Path, *, create: bool = False, busy_timeout_s: float = BUSY_TIMEOUT_S) -> sqlite3.Connection:
    """A connection in autocommit mode (transactions are explicit); mode=rw never creates a missing file."""
    uri = f"{path.resolve().as_uri()}?mode={'rwc' if create else 'rw'}"
    connection = sqlite3.connect(uri, uri=True, timeout=busy_timeout_s, isolation_level=None,
                                 check_same_thread=False)  # closed from another thread on close()
    connection.execute("PRAGMA synchronous=FULL")
    return connection


def use_wal(connection: sqlite3.Connection) -> None:
    """Persistent for the database file: readers never wait for a writer."""
    connection.execute("PRAGMA journal_mode=WAL")


@contextlib.contextmanager
def read_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """Several SELECTs that see one snapshot (WAL)."""
    connection.execute("BEGIN")
    try:
        yield connection
    finally:
        connection.execute("COMMIT")


@contextlib.contextmanager
def write_transaction(connection: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    """One write transaction, taking the write lock at once (BEGIN IMMEDIATE): all of it commits, or none."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        yield connection
    except BaseException:
        connection.execute("ROLLBACK")
        raise
    connection.execute("COMMIT")


def is_busy(error: sqlite3.OperationalError) -> bool:
    """Whether SQLite gave up waiting for another connection's lock."""
    return "locked" in str(error) or "busy" in str(error)
