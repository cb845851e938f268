"""The pipeline's upload-task store: one contract (base.py), two backends, and the factory that picks one from
``NIMRAG_PIPELINE_TASK_STORE``: sqlite (one host, the default) or redis (replicas on several hosts share it).

The Redis backend imports redis-py (the ``redis`` extra) only when it is chosen or named.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nimrag.pipeline.tasks.base import (
    INTERRUPTED,
    MAX_TASKS_KEPT,
    TaskStore,
    TaskStoreUnavailable,
    task_view,
)
from nimrag.pipeline.tasks.sqlite_store import SQLiteTaskStore
from nimrag.services.common.errors import StartupError

if TYPE_CHECKING:
    from nimrag.pipeline.settings import PipelineSettings
    from nimrag.pipeline.tasks.redis_store import RedisTaskStore


def open_task_store(settings: PipelineSettings) -> TaskStore:
    """The store ``settings.task_store`` names: the one place that picks the backend."""
    if settings.task_store == "sqlite":
        return SQLiteTaskStore(settings.data_path / "tasks.sqlite", keep=settings.max_tasks_kept)
    if settings.task_store == "redis":
        try:
            from nimrag.pipeline.tasks.redis_store import RedisTaskStore
        except ModuleNotFoundError as exc:
            raise StartupError(f"NIMRAG_PIPELINE_TASK_STORE=redis needs redis-py ({exc}): "
                               "pip install 'nimrag[redis]'") from None
        return RedisTaskStore(settings.redis_url, prefix=settings.redis_key_prefix, keep=settings.max_tasks_kept,
                              ttl_s=settings.task_ttl_s, lease_s=settings.task_lease_s,
                              timeout_s=settings.redis_timeout_s)
    raise ValueError(f"unknown task store {settings.task_store!r}: sqlite or redis")


def __getattr__(name: str):
    if name == "RedisTaskStore":  # imported on first use: redis-py is optional
        from nimrag.pipeline.tasks.redis_store import RedisTaskStore

        return RedisTaskStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["INTERRUPTED", "MAX_TASKS_KEPT", "RedisTaskStore", "SQLiteTaskStore", "TaskStore", "TaskStoreUnavailable",
           "open_task_store", "task_view"]
