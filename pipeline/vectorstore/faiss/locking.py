"""The lock that guards a collection's in-memory index within one process."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Many readers or one writer. A waiting writer holds back new readers (writes are not starved); a thread
    may re-enter reading (a snapshot around searches), but cannot upgrade a read to a write (that deadlocks)."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._readers = 0
        self._writer: int | None = None
        self._writers_waiting = 0
        self._local = threading.local()

    def _depth(self) -> int:
        return getattr(self._local, "depth", 0)

    def held_by_current_thread(self) -> bool:
        return self._depth() > 0 or self._writer == threading.get_ident()

    @contextlib.contextmanager
    def reading(self) -> Iterator[None]:
        depth = self._depth()
        counted = depth == 0 and self._writer != threading.get_ident()
        if counted:
            with self._condition:
                while self._writer is not None or self._writers_waiting:
                    self._condition.wait()
                self._readers += 1
        self._local.depth = depth + 1
        try:
            yield
        finally:
            self._local.depth = depth
            if counted:
                with self._condition:
                    self._readers -= 1
                    if not self._readers:
                        self._condition.notify_all()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        if self.held_by_current_thread():
            raise RuntimeError("this thread already holds the collection lock (no writes inside snapshot())")
        with self._condition:
            self._writers_waiting += 1
            while self._writer is not None or self._readers:
                self._condition.wait()
            self._writers_waiting -= 1
            self._writer = threading.get_ident()
        try:
            yield
        finally:
            with self._condition:
                self._writer = None
                self._condition.notify_all()

