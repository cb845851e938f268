"""Upload tasks in SQLite beside the collections, so that ``GET /v1/status`` still answers after a restart.

One host: a task left PENDING by a process that is gone (its pid is dead) reads FAILED with ``INTERRUPTED``.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

from nimrag.pipeline.ingest import FileReport
from nimrag.pipeline.sqlite import connect, use_wal, write_transaction
from nimrag.pipeline.tasks.base import INTERRUPTED, MAX_TASKS_KEPT, TaskStore, task_view

SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    id TEXT PRIMARY KEY, collection TEXT NOT NULL, total INTEGER NOT NULL, state TEXT NOT NULL,
    error TEXT, created REAL NOT NULL, seconds REAL, pid INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS task_files (
    task_id TEXT NOT NULL, seq INTEGER NOT NULL, source TEXT NOT NULL, status TEXT NOT NULL,
    chunks INTEGER NOT NULL, reason TEXT, PRIMARY KEY (task_id, seq)
);
"""


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class SQLiteTaskStore(TaskStore):
    """Tasks and their per-file reports in one SQLite file; processes of one host may share it."""

    def __init__(self, path: Path, keep: int = MAX_TASKS_KEPT):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._keep = keep
        self._lock = threading.Lock()
        self._connection = connect(path, create=True)
        use_wal(self._connection)
        self._connection.executescript(SCHEMA)
        self._fail_orphans()

    def check(self) -> None:
        with self._lock:
            self._connection.execute("SELECT 1 FROM tasks LIMIT 1").fetchall()

    def close(self) -> None:
        with self._lock:
            self._connection.close()

    def _fail_orphans(self) -> None:
        """Tasks left PENDING by a process that is gone (this folder may be shared by several processes)."""
        with self._lock, write_transaction(self._connection) as c:
            rows = c.execute("SELECT id, pid FROM tasks WHERE state = 'PENDING'").fetchall()
            orphans = [(INTERRUPTED, task_id) for task_id, pid in rows if not process_alive(pid)]
            c.executemany("UPDATE tasks SET state = 'FAILED', error = ? WHERE id = ?", orphans)

    def create(self, task_id: str, collection: str, total: int) -> None:
        with self._lock, write_transaction(self._connection) as c:
            c.execute("INSERT INTO tasks (id, collection, total, state, created, pid) VALUES (?, ?, ?, ?, ?, ?)",
                      (task_id, collection, total, "PENDING", time.time(), os.getpid()))
            old = [row[0] for row in c.execute("SELECT id FROM tasks ORDER BY created DESC LIMIT -1 OFFSET ?",
                                               (self._keep,))]
            c.executemany("DELETE FROM task_files WHERE task_id = ?", [(t,) for t in old])
            c.executemany("DELETE FROM tasks WHERE id = ?", [(t,) for t in old])

    def add_file(self, task_id: str, report: FileReport) -> None:
        with self._lock, write_transaction(self._connection) as c:
            c.execute("INSERT INTO task_files (task_id, seq, source, status, chunks, reason) VALUES "
                      "(?, (SELECT count(*) FROM task_files WHERE task_id = ?), ?, ?, ?, ?)",
                      (task_id, task_id, report.source, report.status, report.chunks, report.reason))

    def finish(self, task_id: str, error: str | None, seconds: float) -> None:
        with self._lock, write_transaction(self._connection) as c:
            c.execute("UPDATE tasks SET state = ?, error = ?, seconds = ? WHERE id = ?",
                      ("FAILED" if error else "FINISHED", error, seconds, task_id))

    def get(self, task_id: str) -> dict | None:
        with self._lock:
            task = self._connection.execute("SELECT collection, total, state, error, seconds FROM tasks WHERE id = ?",
                                            (task_id,)).fetchone()
            if task is None:
                return None
            rows = self._connection.execute("SELECT source, status, chunks, reason FROM task_files WHERE task_id = ? "
                                            "ORDER BY seq", (task_id,)).fetchall()
        collection, total, state, error, seconds = task
        return task_view(task_id, collection, total, state, error, seconds, [FileReport(*row) for row in rows])
