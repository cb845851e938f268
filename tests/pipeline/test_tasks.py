"""Upload tasks kept in SQLite: they survive a reopen, orphans read interrupted, old ones are pruned."""

from __future__ import annotations

import subprocess
import sys

from pipeline.ingest import FileReport
from pipeline.tasks import INTERRUPTED, TaskStore


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_task_reads_the_same_after_a_reopen(tmp_path):
    store = TaskStore(tmp_path / "tasks.sqlite")
    store.create("t1", "docs", 3)
    store.add_file("t1", FileReport("a.txt", "added", 4))
    store.add_file("t1", FileReport("b.pdf", "failed", reason="not a PDF"))
    store.add_file("t1", FileReport("c.md", "unchanged"))
    store.finish("t1", None, 1.5)
    before = store.get("t1")
    store.close()

    again = TaskStore(tmp_path / "tasks.sqlite")
    assert again.get("t1") == before
    assert before["state"] == "FINISHED" and before["progress"] == {"files_done": 3, "files_total": 3}
    assert before["result"]["counts"] == {"added": 1, "failed": 1, "unchanged": 1}
    assert before["result"]["chunks"] == 4
    assert [f["source"] for f in before["result"]["files"]] == ["a.txt", "b.pdf", "c.md"]
    assert again.get("nope") is None


def test_pending_tasks_of_a_dead_process_read_interrupted(tmp_path):
    store = TaskStore(tmp_path / "tasks.sqlite")
    store.create("mine", "docs", 2)
    store.create("orphan", "docs", 2)
    store.add_file("orphan", FileReport("a.txt", "added", 1))
    store._connection.execute("UPDATE tasks SET pid = ? WHERE id = 'orphan'", (dead_pid(),))
    store.close()

    again = TaskStore(tmp_path / "tasks.sqlite")
    orphan = again.get("orphan")
    assert (orphan["state"], orphan["error"]) == ("FAILED", INTERRUPTED)
    assert orphan["progress"]["files_done"] == 1
    assert again.get("mine")["state"] == "PENDING"  # its process (this one) is alive: another pipeline's work


def test_failed_and_pruned(tmp_path):
    store = TaskStore(tmp_path / "tasks.sqlite", keep=3)
    for i in range(5):
        store.create(f"t{i}", "docs", 1)
        store.add_file(f"t{i}", FileReport("a.txt", "added", 1))
    store.finish("t4", "DependencyError: embed down", 0.1)
    assert [store.get(f"t{i}") is None for i in range(5)] == [True, True, False, False, False]
    assert store._connection.execute("SELECT count(*) FROM task_files").fetchone()[0] == 3
    assert store.get("t4")["state"] == "FAILED" and "embed down" in store.get("t4")["error"]
