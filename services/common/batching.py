"""Dynamic batching shared by the embedding and reranking services.

Requests from many clients are queued as entries of items with a cost (their token count). A collector task
takes a round of entries, sorts all their items by cost (so padding is small), cuts them into batches bounded by
items and padded tokens, and runs each batch in a worker thread: the event loop never does model work. A full
queue refuses new work with :class:`QueueFullError` (429 + Retry-After) instead of growing without bound.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from services.common.errors import QueueFullError
from services.common.metrics import ServiceMetrics

T = TypeVar("T")
R = TypeVar("R")


@dataclass
class _Entry(Generic[T, R]):
    items: Sequence[T]
    costs: Sequence[int]
    future: asyncio.Future
    results: list[Any] = field(default_factory=list)
    remaining: int = 0

    def __post_init__(self) -> None:
        self.results = [None] * len(self.items)
        self.remaining = len(self.items)


@dataclass(frozen=True)
class BatchLimits:
    max_items: int = 64
    max_tokens: int = 16384  # padded tokens: items x longest item in the batch
    max_wait_s: float = 0.0  # how long to hold a not-full batch for more work
    max_queue_items: int = 8192
    # Cut a batch when padding would make it this many times its real tokens: compute spent on padding is
    # wasted, and a round of one-text requests of mixed length pads to ~2x (measured with bench/embed.py).
    max_padding_ratio: float = 1.25


def plan_batches(costs: Sequence[int], max_items: int, max_tokens: int,
                 max_padding_ratio: float = float("inf")) -> list[list[int]]:
    """Indices sorted by cost, cut so that each batch's padded size (count x longest) stays in bounds."""
    order = sorted(range(len(costs)), key=costs.__getitem__)
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for idx in order:
        cost = costs[idx]
        padded = (len(current) + 1) * cost  # sorted ascending, so this item is the longest so far
        if current and (len(current) >= max_items or padded > max_tokens or
                        padded > max_padding_ratio * (real + cost)):
            batches.append(current)
            current, real = [], 0
        current.append(idx)
        real += cost
    if current:
        batches.append(current)
    return batches


class DynamicBatcher(Generic[T, R]):
    """Merges items from concurrent requests into engine batches; ``run_batch`` is called in one worker thread."""

    def __init__(self, run_batch: Callable[[list[T]], Sequence[R]], limits: BatchLimits,
                 metrics: ServiceMetrics | None = None, name: str = "engine"):
        self._run_batch = run_batch
        self.limits = limits
        self._metrics = metrics
        self._queue: deque[_Entry] = deque()
        self._queued_items = 0
        self._wakeup = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{name}-batch")
        self._task: asyncio.Task | None = None

    @property
    def queued_items(self) -> int:
        return self._queued_items

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._collect_forever(), name="batch-collector")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
            self._task = None
        for entry in self._queue:
            if not entry.future.done():
                entry.future.cancel()
        self._queue.clear()
        self._executor.shutdown(wait=True, cancel_futures=True)

    async def submit(self, items: Sequence[T], costs: Sequence[int]) -> list[R]:
        """Queue items and wait for their results, in order. Raises QueueFullError when the queue is full."""
        if not items:
            return []
        limit = self.limits.max_queue_items
        if self._queued_items + len(items) > limit:
            if self._metrics:
                self._metrics.rejected.labels("queue_full").inc()
            raise QueueFullError(self._queued_items, limit)
        entry: _Entry[T, R] = _Entry(items, costs, asyncio.get_running_loop().create_future())
        self._queue.append(entry)
        self._set_queued(self._queued_items + len(items))
        self._wakeup.set()
        try:
            return await entry.future
        except asyncio.CancelledError:
            # The client went away: its items are skipped if they have not been taken yet.
            entry.future.cancel()
            raise

    def _set_queued(self, n: int) -> None:
        self._queued_items = n
        if self._metrics:
            self._metrics.queue_depth.set(n)

    def _take_round(self) -> list[_Entry]:
        """FIFO entries up to a few batches' worth of items, so sorting has something to work with."""
        taken: list[_Entry] = []
        budget = self.limits.max_items * 4
        while self._queue and (not taken or budget > 0):
            entry = self._queue.popleft()
            self._set_queued(self._queued_items - len(entry.items))
            if entry.future.done():  # cancelled while waiting
                continue
            taken.append(entry)
            budget -= len(entry.items)
        return taken

    async def _collect_forever(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._queue:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self._queued_items < self.limits.max_items and self.limits.max_wait_s > 0:
                await asyncio.sleep(self.limits.max_wait_s)  # let concurrent requests join this batch
            entries = self._take_round()
            if entries:
                await self._run_round(loop, entries)

    async def _run_round(self, loop: asyncio.AbstractEventLoop, entries: list[_Entry]) -> None:
        flat = [(e, i) for e in entries for i in range(len(e.items))]
        costs = [e.costs[i] for e, i in flat]
        limits = self.limits
        for batch in plan_batches(costs, limits.max_items, limits.max_tokens, limits.max_padding_ratio):
            members = [flat[j] for j in batch if not flat[j][0].future.done()]
            if not members:
                continue
            started = time.perf_counter()
            try:
                results = await loop.run_in_executor(self._executor, self._run_batch,
                                                     [e.items[i] for e, i in members])
            except Exception as exc:  # engine failure: fail this batch's requests, keep serving
                for e, _ in members:
                    if not e.future.done():
                        e.future.set_exception(exc)
                continue
            if self._metrics:
                self._metrics.batch_size.observe(len(members))
                self._metrics.batch_latency.observe(time.perf_counter() - started)
            for (e, i), result in zip(members, results):
                e.results[i] = result
                e.remaining -= 1
                if e.remaining == 0 and not e.future.done():
                    e.future.set_result(e.results)
