"""The upload-task store's contract: what ``POST /v1/documents`` records and ``GET /v1/status`` reads.

A store keeps each task (its collection, file count, state) and the report of each file as it is done. A task
whose pipeline process stopped before it finished reads FAILED with ``INTERRUPTED`` and the files it had finished:
uploading the same files again skips those as unchanged. Backends: SQLite (one host, the default) and Redis
(replicas on several hosts share it). Every call blocks: run it off the event loop.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from nimrag.pipeline.ingest import FileReport, IngestReport
from nimrag.services.common.errors import ServiceNotReadyError

MAX_TASKS_KEPT = 1000  # the newest tasks stay readable; older ones are pruned
TASK_STORE_RETRY_AFTER_S = 2  # a restarting Redis is usually back within seconds
INTERRUPTED = ("Interrupted: the pipeline stopped before this upload finished. Upload the files again; those "
               "already ingested are skipped as unchanged.")


class TaskStoreUnavailable(ServiceNotReadyError):
    """The task store cannot be reached or answered with an error: 503, retrying succeeds later."""

    def __init__(self, store: str, failed: str, retry_after_s: int = TASK_STORE_RETRY_AFTER_S):
        super().__init__(f"The upload-task store ({store}) is unavailable: {failed}. Retry shortly.",
                         retry_after_s=retry_after_s, code="task_store_unavailable")


class TaskStore(ABC):
    """Tasks and their per-file reports."""

    @abstractmethod
    def create(self, task_id: str, collection: str, total: int) -> None:
        """A new PENDING task of ``total`` files, owned by this process; the oldest beyond the kept number go."""

    @abstractmethod
    def add_file(self, task_id: str, report: FileReport) -> None:
        """One file of the task is done (reports keep their order)."""

    @abstractmethod
    def finish(self, task_id: str, error: str | None, seconds: float) -> None:
        """The task ended: FAILED with ``error``, or FINISHED."""

    @abstractmethod
    def get(self, task_id: str) -> dict | None:
        """The task as ``/v1/status`` shows it (:func:`task_view`), or None."""

    @abstractmethod
    def check(self) -> None:
        """Raise TaskStoreUnavailable unless the store answers (health checks)."""

    @abstractmethod
    def close(self) -> None:
        """Release connections (and background work); the store is unusable afterwards."""


def task_view(task_id: str, collection: str, total: int, state: str, error: str | None, seconds: float | None,
              files: list[FileReport]) -> dict:
    """The one shape of a task in ``/v1/status``, whichever store kept it."""
    report = IngestReport(collection, files, seconds or 0.0)
    return {"task_id": task_id, "state": state, "collection_name": collection,
            "progress": {"files_done": len(files), "files_total": total}, "result": report.as_dict(),
            "error": error}
