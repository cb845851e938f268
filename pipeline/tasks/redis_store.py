"""Upload tasks in Redis, shared by pipeline replicas on several hosts (as the NVIDIA RAG Blueprint keeps them).

Keys, under the prefix (``nimrag:tasks:``):

- ``index``: a sorted set of task ids by creation time (the Redis server's clock, so replicas agree); creating a
  task prunes it to the newest ``keep``, with their keys, in the same Lua script.
- ``task:<id>``: a hash (collection, total, state, error, seconds, owner); ``files:<id>``: a list of the file
  reports (JSON), in the order the files finished.
- ``lease:<id>``: held by the process running a PENDING task, refreshed by its heartbeat thread every lease/3 s.
  A PENDING task whose lease expired reads FAILED with ``INTERRUPTED``: its replica died (or lost Redis for a
  whole lease). Should that replica come back, it still records the end it reaches.

Every key of a task expires ``ttl_s`` after its end (or after the last heartbeat of a task nobody finished). One
Redis server (not Redis Cluster: the create script deletes keys it derives from pruned ids). Each call waits at
most ``timeout_s`` on the socket, is not retried, and any Redis error becomes ``TaskStoreUnavailable`` (503).
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import re
import socket
import threading
import uuid
from collections.abc import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from nimrag.pipeline.ingest import FileReport
from nimrag.pipeline.tasks.base import (
    INTERRUPTED,
    MAX_TASKS_KEPT,
    TaskStore,
    TaskStoreUnavailable,
    task_view,
)

DEFAULT_PREFIX = "nimrag:tasks:"
DEFAULT_TTL_S = 7 * 24 * 3600.0
DEFAULT_LEASE_S = 30.0
DEFAULT_TIMEOUT_S = 5.0
REDIS_FAILURES = (redis.RedisError, OSError)

logger = logging.getLogger("nimrag.pipeline.tasks")

# KEYS: index, task, lease. ARGV: id, collection, total, owner, lease ms, ttl ms, keep, prefix.
CREATE = """
local now = redis.call('TIME')
local created = tonumber(now[1]) * 1000000 + tonumber(now[2])
redis.call('HSET', KEYS[2], 'collection', ARGV[2], 'total', ARGV[3], 'state', 'PENDING', 'owner', ARGV[4])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('SET', KEYS[3], ARGV[4], 'PX', ARGV[5])
redis.call('ZADD', KEYS[1], created, ARGV[1])
local old = redis.call('ZRANGE', KEYS[1], 0, -tonumber(ARGV[7]) - 1)
for _, id in ipairs(old) do
  redis.call('DEL', ARGV[8] .. 'task:' .. id, ARGV[8] .. 'files:' .. id, ARGV[8] .. 'lease:' .. id)
end
if #old > 0 then redis.call('ZREMRANGEBYRANK', KEYS[1], 0, #old - 1) end
"""

# KEYS: task, files, lease. ARGV: state, seconds, ttl ms[, error]. A pruned task stays gone.
FINISH = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'seconds', ARGV[2])
if ARGV[4] then redis.call('HSET', KEYS[1], 'error', ARGV[4]) else redis.call('HDEL', KEYS[1], 'error') end
redis.call('DEL', KEYS[3])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
return 1
"""

# KEYS: (task, files, lease) per task. ARGV: owner, lease ms, ttl ms. Returns the 1-based positions of the tasks
# that are no longer this owner's PENDING ones (finished, pruned or expired): the heartbeat drops them.
HEARTBEAT = """
local gone = {}
for i = 1, #KEYS, 3 do
  local task = redis.call('HMGET', KEYS[i], 'state', 'owner')
  if task[1] == 'PENDING' and task[2] == ARGV[1] then
    redis.call('SET', KEYS[i + 2], ARGV[1], 'PX', ARGV[2])
    redis.call('PEXPIRE', KEYS[i], ARGV[3])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[3])
  else
    gone[#gone + 1] = (i + 2) / 3
  end
end
return gone
"""


def redacted(url: str) -> str:
    """The URL without its credentials (user:password@, ?password=), for messages and logs."""
    return re.sub(r"(?i)([?&]password=)[^&]*", r"\1***", re.sub(r"//[^/@]*@", "//", url))


def milliseconds(seconds: float) -> int:
    return max(1, round(seconds * 1000))


class RedisTaskStore(TaskStore):
    """Tasks and their per-file reports in Redis; every replica connected to it reads every task."""

    def __init__(self, url: str, *, prefix: str = DEFAULT_PREFIX, keep: int = MAX_TASKS_KEPT,
                 ttl_s: float = DEFAULT_TTL_S, lease_s: float = DEFAULT_LEASE_S, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.name = f"Redis at {redacted(url)}"
        self._prefix, self._keep = prefix, keep
        self._ttl_ms, self._lease_s = milliseconds(ttl_s), lease_s
        # No retries: a call fails within timeout_s and the client retries on the 503 (a stale pooled connection
        # is replaced when taken from the pool).
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout_s, socket_connect_timeout=timeout_s,
                                           retry=Retry(NoBackoff(), 0), decode_responses=True)
        self._create = self._redis.register_script(CREATE)
        self._finish = self._redis.register_script(FINISH)
        self._heartbeat = self._redis.register_script(HEARTBEAT)
        self._owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._owned: set[str] = set()  # this store's PENDING tasks, whose leases the heartbeat keeps
        self._owned_lock = threading.Lock()
        self._stopping = threading.Event()
        self._beating = threading.Thread(target=self._beat, name="task-lease-heartbeat", daemon=True)
        self._beating.start()

    def _keys(self, task_id: str) -> tuple[str, str, str]:
        return f"{self._prefix}task:{task_id}", f"{self._prefix}files:{task_id}", f"{self._prefix}lease:{task_id}"

    @contextlib.contextmanager
    def _reaching(self, what: str) -> Iterator[None]:
        try:
            yield
        except REDIS_FAILURES as exc:
            raise TaskStoreUnavailable(self.name, f"{what} failed ({type(exc).__name__}: {exc})") from exc

    def create(self, task_id: str, collection: str, total: int) -> None:
        task, _, lease = self._keys(task_id)
        with self._reaching(f"creating task '{task_id}'"):
            self._create(keys=[f"{self._prefix}index", task, lease],
                         args=[task_id, collection, total, self._owner, milliseconds(self._lease_s), self._ttl_ms,
                               self._keep, self._prefix])
        with self._owned_lock:
            self._owned.add(task_id)

    def add_file(self, task_id: str, report: FileReport) -> None:
        _, files, _ = self._keys(task_id)
        with self._reaching(f"recording a file of task '{task_id}'"), self._redis.pipeline() as pipe:
            pipe.rpush(files, json.dumps(dataclasses.asdict(report)))
            pipe.pexpire(files, self._ttl_ms)
            pipe.execute()

    def finish(self, task_id: str, error: str | None, seconds: float) -> None:
        with self._owned_lock:  # even if recording the end fails: its lease then runs out, and it reads interrupted
            self._owned.discard(task_id)
        args = ["FAILED" if error else "FINISHED", seconds, self._ttl_ms, *([] if error is None else [error])]
        with self._reaching(f"finishing task '{task_id}'"):
            self._finish(keys=list(self._keys(task_id)), args=args)

    def get(self, task_id: str) -> dict | None:
        task_key, files_key, lease_key = self._keys(task_id)
        # MULTI (a pipeline's default): one snapshot, in which a finish is seen whole or not at all
        with self._reaching(f"reading task '{task_id}'"), self._redis.pipeline() as pipe:
            task, files, leased = pipe.hgetall(task_key).lrange(files_key, 0, -1).exists(lease_key).execute()
        if not task:
            return None
        state, error = task["state"], task.get("error")
        if state == "PENDING" and not leased:
            state, error = "FAILED", INTERRUPTED
        seconds = float(task["seconds"]) if "seconds" in task else None
        return task_view(task_id, task["collection"], int(task["total"]), state, error, seconds,
                         [FileReport(**json.loads(f)) for f in files])

    def check(self) -> None:
        with self._reaching("ping"):
            self._redis.ping()

    def _beat(self) -> None:
        """Keep the leases of this store's PENDING tasks until close(); a failed beat is logged and retried."""
        while not self._stopping.wait(self._lease_s / 3):
            with self._owned_lock:
                owned = list(self._owned)
            if not owned:
                continue
            try:
                gone = self._heartbeat(keys=[key for task_id in owned for key in self._keys(task_id)],
                                       args=[self._owner, milliseconds(self._lease_s), self._ttl_ms])
            except Exception as exc:  # noqa: BLE001 - the thread must outlive any failure, or every lease lapses
                logger.warning("task lease heartbeat failed (%s): %s: %s", self.name, type(exc).__name__, exc)
                continue
            with self._owned_lock:
                self._owned.difference_update(owned[position - 1] for position in gone)

    def close(self) -> None:
        """Stop the heartbeat (the leases of unfinished tasks then run out) and close the connection pool."""
        self._stopping.set()
        self._beating.join()
        self._redis.close()
